"""Emotion timelines: window planning and single-pass sampling (pure), Triton vs the in-process reference,
the front end's ``?timeline=true`` and the ``timeline`` CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core.fusion import FusionHead, score
from fusion_emotion.core.probe import MediaError
from fusion_emotion.core.result import timeline_result
from fusion_emotion.core.rows import decode_row
from fusion_emotion.core.timeline import WindowFrames, compute_timeline, timeline_limits, window_params
from fusion_emotion.core.video import VideoDecoder, decode_video
from fusion_emotion.core.windows import (
    TIMELINE_DEFAULTS,
    WindowParams,
    plan_file_windows,
    sample_times,
    window_frame_times,
)
from fusion_emotion.errors import ErrorKind, ServingError


# --------------------------------------------------------------------------- pure
def test_params_defaults_and_bounds() -> None:
    assert window_params() == TIMELINE_DEFAULTS == WindowParams(4.0, 4.0)
    assert window_params(3.0) == WindowParams(3.0, 3.0)
    assert window_params(1.0) == WindowParams(1.0, 1.0)  # default hop never exceeds the window
    assert window_params(10.0, 0.5) == WindowParams(10.0, 0.5)
    for window, hop, name in (
        (0.5, None, "window_s"),
        (10.5, None, "window_s"),
        (3.0, 0.4, "hop_s"),
        (3.0, 3.5, "hop_s"),
        (float("nan"), None, "window_s"),
        (3.0, float("inf"), "hop_s"),
        ("ten", None, "window_s"),
    ):
        with pytest.raises(ServingError) as err:
            window_params(window, hop)
        assert err.value.subject == name and err.value.kind is ErrorKind.BAD_REQUEST


@pytest.mark.parametrize(
    ("duration", "window", "hop", "expected"),
    [
        (7.0, 3.0, 1.5, [[0, 3], [1.5, 4.5], [3, 6], [4, 7]]),  # tail window ends at the end
        (6.0, 3.0, 1.5, [[0, 3], [1.5, 4.5], [3, 6]]),
        (2.0, 3.0, 1.5, [[0, 2]]),  # shorter than a window: one window, all of it
        (3.0, 3.0, 1.5, [[0, 3]]),
        (5.0, 2.0, 2.0, [[0, 2], [2, 4], [3, 5]]),
    ],
)
def test_plan_windows(duration: float, window: float, hop: float, expected: list[list[float]]) -> None:
    got = plan_file_windows(duration, WindowParams(window, hop))
    np.testing.assert_allclose(got, expected)


def test_plan_windows_cover_long_media() -> None:
    w = plan_file_windows(600.0, WindowParams(3.0, 1.5))
    assert w[0, 0] == 0 and w[-1, 1] == 600.0
    assert np.all(np.diff(w[:, 0]) > 0) and np.allclose(w[:, 1] - w[:, 0], 3.0)
    assert np.all(w[1:, 0] <= w[:-1, 1])  # no gaps


def test_window_frame_times() -> None:
    windows = np.array([[0.0, 2.0], [1.0, 3.0]])
    t = window_frame_times(windows, offset_s=0.5)
    assert t.shape == (2, C.NUM_FRAMES)
    np.testing.assert_allclose(t[1], sample_times(2.0, C.NUM_FRAMES, 1.5))
    assert np.all((t >= windows[:, :1] + 0.5) & (t <= windows[:, 1:] + 0.5))


def _reference_pick(data: bytes, targets: np.ndarray) -> list[int]:
    """Indices (in decode order, non-reference frames skipped) of the first frame at or after each target."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
    out = []
    for target in targets:
        hits = [i for i, t in enumerate(times) if t + 1e-6 >= target]
        out.append(hits[0] if hits else len(times) - 1)
    return out


@pytest.fixture(scope="module")
def index_clip() -> bytes:
    """5 s at 10 fps, grey level encodes the frame index; 48 kHz tone track."""
    return testmedia.mp4(width=96, height=64, fps=10, seconds=5.0, kind="index", audio=testmedia.tone(330, 5.0, 48_000))


def test_single_pass_decoder_samples_each_window(index_clip: bytes) -> None:
    source = VideoDecoder(index_clip)
    dec = WindowFrames(source, WindowParams(2.0, 1.0), max_windows=None)
    np.testing.assert_allclose(dec.windows_s, [[0, 2], [1, 3], [2, 4], [3, 5]])
    got = list(dec.windows())
    assert [i for i, _ in got] == [0, 1, 2, 3]
    with av.open(io.BytesIO(index_clip)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        levels = [float(f.to_ndarray(format="gray").mean()) for f in container.decode(stream)]
    for (i, frames), targets in zip(got, window_frame_times(dec.windows_s), strict=True):
        assert frames.shape == (C.NUM_FRAMES, *C.RESIZE_HW, 3) and frames.dtype == np.uint8
        want = [levels[j] for j in _reference_pick(index_clip, targets)]
        np.testing.assert_allclose(frames.reshape(C.NUM_FRAMES, -1).mean(axis=1), want, atol=2.0, err_msg=f"window {i}")
    # the clip-level sample and the audio track are exactly what the main model decodes
    ref = decode_video(index_clip)
    np.testing.assert_array_equal(dec.clip_frames, ref.frames)
    np.testing.assert_array_equal(source.audio, ref.audio)
    assert source.sample_rate == ref.sample_rate


def test_duration_bound_is_a_clear_too_large_error(index_clip: bytes) -> None:
    with pytest.raises(MediaError) as err:
        WindowFrames(VideoDecoder(index_clip, limits=timeline_limits(4.0)), TIMELINE_DEFAULTS, max_windows=None)
    assert err.value.too_large and "limit" in str(err.value)


class _FakeEncoder:
    """Deterministic stand-in for an encoder that records its batch sizes."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim = dim
        self.seed = seed
        self.batches: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape[0])
        flat = batch.reshape(batch.shape[0], -1).astype(np.float64)
        k = np.random.default_rng(self.seed).standard_normal((8, self.dim))
        stats = np.stack([flat.mean(1), flat.std(1), flat[:, ::7].mean(1), flat[:, 1::5].std(1)] * 2, axis=1)
        return np.tanh(stats @ k).astype(np.float32)


def _head() -> FusionHead:
    rng = np.random.default_rng(3)
    d = C.VIDEO_EMBED_DIM + C.AUDIO_EMBED_DIM
    return FusionHead([rng.standard_normal((16, d)).astype(np.float32) * 0.1, rng.standard_normal((6, 16)).astype(np.float32)],
                      [np.zeros(16, np.float32), np.zeros(6, np.float32)])  # fmt: skip


def _run(video, audio, params, chunk):
    ve, ae = _FakeEncoder(C.VIDEO_EMBED_DIM, 1), _FakeEncoder(C.AUDIO_EMBED_DIM, 2)
    tl = compute_timeline(video, audio, params, encode_video=ve, encode_audio=ae, head=_head(), chunk=chunk)
    return tl, ve, ae


def test_compute_timeline_chunks_and_clip_level(index_clip: bytes) -> None:
    params = WindowParams(1.0, 0.5)
    tl1, ve1, ae1 = _run(index_clip, None, params, chunk=1)
    tl3, ve3, ae3 = _run(index_clip, None, params, chunk=3)
    n = len(tl3.windows)
    assert n == 9 and tl3.segments().shape == (n, 2 + C.NUM_CLASSES)
    np.testing.assert_allclose(tl1.probabilities, tl3.probabilities, atol=1e-6)  # chunking changes nothing
    assert max(ve3.batches[:-1]) <= 3 and sum(ve3.batches) == n + 1 and sum(ae3.batches) == n + 1  # windows + clip
    np.testing.assert_allclose(tl3.probabilities.sum(axis=1), 1.0, atol=1e-5)
    # clip level == the fusion_emotion model's computation on the request's row
    feats = decode_row(index_clip, None)
    ve, ae = _FakeEncoder(C.VIDEO_EMBED_DIM, 1), _FakeEncoder(C.AUDIO_EMBED_DIM, 2)
    probs, flags = score(
        _head(), ve(feats.frames[None]), ae(feats.waveform[None]), np.ones((1, 2), np.float32), feats.media_qa[None]
    )
    np.testing.assert_allclose(tl3.clip_probabilities, probs[0], atol=1e-6)
    np.testing.assert_allclose(tl3.clip_qa_flags, flags[0], atol=1e-6)


def test_one_window_is_the_clip_and_audio_only(index_clip: bytes) -> None:
    tl, ve, ae = _run(index_clip, None, WindowParams(10.0, 1.0), chunk=8)
    assert len(tl.windows) == 1 and sum(ve.batches) == 1 and sum(ae.batches) == 1  # encoded once
    np.testing.assert_allclose(tl.probabilities[0], tl.clip_probabilities)
    wav = testmedia.wav(testmedia.tone(440, 4.0, 16_000), 16_000)
    tl, ve, ae = _run(None, wav, WindowParams(2.0, 2.0), chunk=8)
    np.testing.assert_allclose(tl.windows, [[0, 2], [2, 4]])
    assert ve.batches == [] and np.isnan(tl.clip_qa_flags[2])  # no video work, video flags absent


def test_prefetch_keeps_order_bounds_and_errors() -> None:
    from fusion_emotion.core.timeline import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))
    produced: list[int] = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    it = prefetch(counting(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the consumer stops early: so does the worker, having run at most a few items ahead
    assert len(produced) <= 3 + 2 + 2

    def failing():
        yield 1
        raise MediaError("video", "boom")

    with pytest.raises(MediaError, match="boom"):
        list(prefetch(failing(), depth=2))


def test_timeline_result_orders_segments() -> None:
    seg = np.array([[1.5, 4.5, 0, 0, 0, 1, 0, 0], [0, 3, 1, 0, 0, 0, 0, 0]], np.float32)
    out = timeline_result(seg, np.full(6, 1 / 6, np.float32), None)
    assert [s["start"] for s in out["segments"]] == [0.0, 1.5]
    assert out["segments"][0]["dominant_emotion"] == "angry" and out["segments"][1]["dominant_emotion"] == "happy"
    assert set(C.LABELS) <= set(out) and "qa_flags" in out and "dominant_emotion" in out


# --------------------------------------------------------------------------- integration
def _assert_same_timeline(got: dict, want: dict) -> None:
    assert len(got["segments"]) == len(want["segments"])
    for a, b in zip(got["segments"], want["segments"], strict=True):
        assert abs(a["start"] - b["start"]) < 1e-4 and abs(a["end"] - b["end"]) < 1e-4
        np.testing.assert_allclose([a[k] for k in C.LABELS], [b[k] for k in C.LABELS], atol=1e-4, rtol=0)
    np.testing.assert_allclose([got[k] for k in C.LABELS], [want[k] for k in C.LABELS], atol=1e-4, rtol=0)
    for k, v in want["qa_flags"].items():
        assert (got["qa_flags"][k] is None) == (v is None)
        if v is not None:
            assert abs(got["qa_flags"][k] - v) < 1e-4


@pytest.mark.integration
def test_triton_timeline_matches_reference(triton, reference, media) -> None:
    from fusion_emotion.client.timeline_cli import timeline_grpc
    from fusion_emotion.client.triton import infer_grpc
    from tritonclient.utils import InferenceServerException

    from fusion_emotion.core.timeline import timeline_local

    got = timeline_grpc(triton.grpc_url, media["mp4"], None, 2.0, 1.0)
    want = timeline_local(reference, media["mp4"], None, 2.0, 1.0)
    np.testing.assert_allclose(
        [[s["start"], s["end"]] for s in got["segments"]], [[0, 2], [1, 3], [1.5, 3.5]], atol=1e-4
    )
    _assert_same_timeline(got, want)
    # the clip-level answer is the fusion_emotion ensemble's answer
    probs, _ = infer_grpc(triton.grpc_url, media["mp4"], None)
    np.testing.assert_allclose([got[k] for k in C.LABELS], probs, atol=1e-4)
    with pytest.raises(InferenceServerException, match="window_s"):
        timeline_grpc(triton.grpc_url, media["mp4"], None, 20.0, None)


@pytest.mark.integration
def test_frontend_timeline_opt_in(triton, media) -> None:
    import httpx
    from fusion_emotion.client.timeline_cli import timeline_grpc
    from test_frontend import run_frontend

    from fusion_emotion.frontend.settings import Settings

    wav = media["wav16k"]
    with run_frontend(Settings(triton_url=triton.grpc_url, request_timeout_s=120)) as base:
        files = {"audio_file": ("a.wav", wav, "audio/wav")}
        plain = httpx.post(f"{base}/invocations", files=files, timeout=120)
        assert plain.status_code == 200 and "segments" not in plain.json()
        resp = httpx.post(
            f"{base}/predict", params={"timeline": "true", "window_s": "2", "hop_s": "1"}, files=files, timeout=120
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(plain.json()) <= set(body)
        starts = [s["start"] for s in body["segments"]]
        assert starts == sorted(starts) and len(starts) >= 1
        _assert_same_timeline(body, timeline_grpc(triton.grpc_url, None, wav, 2.0, 1.0))
        bad = httpx.post(f"{base}/invocations", params={"timeline": "true", "window_s": "30"}, files=files, timeout=30)
        assert bad.status_code == 400 and "window_s" in bad.json()["error"]


@pytest.mark.integration
def test_cli_outputs(triton, demo_repository: Path, media, tmp_path: Path, capsys) -> None:
    from fusion_emotion.cli import main

    exported = demo_repository / C.TIMELINE_MODEL  # `fusion-emotion export` ships the model and its labels
    assert (exported / "1" / "model.py").is_file()
    assert (exported / C.LABELS_FILENAME).read_text().split() == list(C.LABELS)
    wav = tmp_path / "speech.wav"
    wav.write_bytes(media["wav16k"])
    png, table = tmp_path / "t.png", tmp_path / "t.csv"
    argv = ["timeline", str(wav), "--window", "2", "--hop", "1.5"]
    assert main([*argv, "--local", str(demo_repository), "--plot", str(png), "--csv", str(table)]) == 0
    local = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    rows = list(csv.DictReader(table.open()))
    assert [r["start"] for r in rows] == [str(s["start"]) for s in local["segments"]]
    assert list(rows[0]) == ["start", "end", *C.LABELS, "dominant_emotion"]
    assert main([*argv, "--triton", triton.grpc_url]) == 0
    _assert_same_timeline(json.loads(capsys.readouterr().out), local)
    assert main(["timeline", str(wav), "--local", str(demo_repository), "--window", "0.2"]) == 2
