"""The numpy fusion head and the result contract, without Triton."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_emotion import contract as C
from fusion_emotion.core.fusion import FusionHead, score, softmax
from fusion_emotion.core.result import result_dict


def _head(seed: int = 0, temperature: float = 1.0) -> FusionHead:
    rng = np.random.default_rng(seed)
    d = C.VIDEO_EMBED_DIM + C.AUDIO_EMBED_DIM
    return FusionHead(
        [rng.standard_normal((16, d), dtype=np.float32) * 0.05, rng.standard_normal((6, 16), dtype=np.float32)],
        [rng.standard_normal(16, dtype=np.float32), rng.standard_normal(6, dtype=np.float32)],
        temperature,
    )


def _embeddings(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, C.VIDEO_EMBED_DIM), dtype=np.float32),
        rng.standard_normal((n, C.AUDIO_EMBED_DIM), dtype=np.float32),
    )


def test_softmax_is_stable_and_normalised():
    p = softmax(np.array([[1000.0, 0.0, -1000.0, 1.0, 2.0, 3.0]]))
    assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-6 and p[0, 0] > 0.99


def test_mlp_matches_explicit_math():
    head = _head()
    v, a = _embeddings(3)
    mask = np.ones((3, 2), np.float32)
    x = np.concatenate([v, a], axis=1)
    h = np.maximum(x @ head.weights[0].T + head.biases[0], 0)
    expected = softmax(h @ head.weights[1].T + head.biases[1])
    np.testing.assert_allclose(head.probabilities(v, a, mask), expected, atol=1e-6)


def test_missing_modality_is_a_zero_embedding():
    head = _head()
    v, a = _embeddings(2)
    only_video = np.array([[1, 0], [1, 0]], np.float32)
    np.testing.assert_allclose(
        head.probabilities(v, a, only_video), head.probabilities(v, np.zeros_like(a), np.ones((2, 2), np.float32))
    )


def test_temperature_flattens_without_changing_the_ranking():
    v, a = _embeddings(4)
    mask = np.ones((4, 2), np.float32)
    sharp = _head(temperature=1.0).probabilities(v, a, mask)
    flat = _head(temperature=3.0).probabilities(v, a, mask)
    assert (flat.max(axis=1) < sharp.max(axis=1)).all()
    assert (flat.argmax(axis=1) == sharp.argmax(axis=1)).all()


def test_save_load_roundtrip_and_validation(tmp_path):
    head = _head(temperature=1.5)
    head.save(tmp_path / "h.npz")
    loaded = FusionHead.load(tmp_path / "h.npz")
    assert loaded.temperature == pytest.approx(1.5)
    v, a = _embeddings(2)
    m = np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(loaded.probabilities(v, a, m), head.probabilities(v, a, m))
    bad = FusionHead([np.zeros((6, 10), np.float32)], [np.zeros(6, np.float32)])
    with pytest.raises(ValueError, match="input is 10"):
        bad.validate()


def test_score_flags_follow_modalities():
    head = _head()
    v, a = _embeddings(3)
    mask = np.array([[1, 1], [1, 0], [0, 1]], np.float32)
    media_qa = np.array([[0.0, 0.2, 0.9, 0.1], [np.nan, np.nan, 0.9, 0.1], [0.0, 0.2, np.nan, np.nan]], np.float32)
    probs, flags = score(head, v, a, mask, media_qa)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    consistency = flags[:, C.QA_FLAG_NAMES.index("modality_consistency_score")]
    assert 0 <= consistency[0] <= 1 and np.isnan(consistency[1:]).all()
    overall = flags[:, C.QA_FLAG_NAMES.index("overall_confidence")]
    assert np.all((overall >= 0) & (overall <= 1))
    np.testing.assert_array_equal(flags[:, :4], media_qa)


def test_result_dict_has_exactly_the_contract_keys():
    probs = np.array([0.1, 0.1, 0.1, 0.5, 0.1, 0.1], np.float32)
    flags = np.array([0.0, 0.5, np.nan, 0.2, np.nan, 0.4], np.float32)
    out = result_dict(probs, flags)
    assert list(out) == [*C.LABELS, "qa_flags", "dominant_emotion"]
    assert out["dominant_emotion"] == "happy"
    assert list(out["qa_flags"]) == list(C.QA_FLAG_NAMES)
    assert out["qa_flags"]["video_face_detection_confidence"] is None
    assert out["qa_flags"]["audio_silence_ratio"] == pytest.approx(0.5)
    assert result_dict(probs)["qa_flags"] == {k: None for k in C.QA_FLAG_NAMES}
    with pytest.raises(ValueError):
        result_dict(np.ones(5))
