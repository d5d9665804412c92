"""Unit tests of the quality flags (fusion_emotion.core.qa), through the real decoders.

Media go testmedia -> encoded bytes -> fusion_emotion.core.video.decode_video / core.audio.decode_audio -> qa, exactly
the path a served request takes.
"""

from __future__ import annotations

import math
import shutil
import time

import numpy as np
import pytest

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core import qa
from fusion_emotion.core.audio import decode_audio
from fusion_emotion.core.model_inputs import resample, to_mono
from fusion_emotion.core.video import decode_video

NAN = float("nan")


@pytest.fixture(scope="module")
def speech16() -> np.ndarray:
    assert shutil.which("espeak-ng"), "espeak-ng is required: run `make setup`"
    return testmedia.speech(rate=16_000)


@pytest.fixture(scope="module")
def face_frames() -> np.ndarray:
    return decode_video(testmedia.mp4(width=640, height=360, seconds=1.0, kind="face")).frames


@pytest.fixture(scope="module")
def blurred_face_frames() -> np.ndarray:
    return decode_video(testmedia.mp4(width=640, height=360, seconds=1.0, kind="face", blur_sigma=6.0)).frames


@pytest.fixture(scope="module")
def noise_frames() -> np.ndarray:
    return decode_video(testmedia.mp4(width=640, height=360, seconds=1.0, kind="noise")).frames


def _decode_wav(x: np.ndarray, rate: int, fmt: str = "s16") -> np.ndarray:
    dec = decode_audio(testmedia.wav(x, rate, fmt))
    assert dec.sample_rate == rate
    return dec.samples


# --------------------------------------------------------------------------- audio


def test_clipping_ratio_clipped_speech(speech16: np.ndarray) -> None:
    clean = qa.clipping_ratio(_decode_wav(speech16, 16_000))
    clipped = qa.clipping_ratio(_decode_wav(np.clip(speech16 * 8.0, -1.0, 1.0), 16_000))
    assert clean == 0.0
    assert clipped > 0.05
    assert clipped > clean + 0.05


def test_clipping_ratio_threshold() -> None:
    x = np.array([[0.5, 0.98, 0.99, -1.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    assert qa.clipping_ratio(x) == pytest.approx(3 / 8)
    assert qa.clipping_ratio(np.zeros((1, 0), np.float32)) == 0.0


def test_silence_ratio_speech_then_silence(speech16: np.ndarray) -> None:
    rate = 16_000
    x = np.concatenate([speech16, testmedia.silence(speech16.size / rate, rate)])
    wave = to_mono(_decode_wav(x, rate))
    ratio = qa.silence_ratio(wave, rate)
    # espeak's own pauses (between words, sentence end) are silent too, so the
    # expected value is 0.5 + half the speech's own silent share.
    own = qa.silence_ratio(speech16, rate)
    assert own < 0.3
    assert 0.4 <= ratio <= 0.65
    assert ratio == pytest.approx(0.5 + own / 2, abs=0.02)


def test_silence_ratio_rate_independent(speech16: np.ndarray) -> None:
    x = np.concatenate([speech16, np.zeros_like(speech16)])
    at16 = qa.silence_ratio(x, 16_000)
    at48 = qa.silence_ratio(resample(x, 16_000, 48_000), 48_000)
    assert at48 == pytest.approx(at16, abs=0.03)


def test_silence_ratio_levels() -> None:
    rate = 16_000
    assert qa.silence_ratio(np.zeros(rate, np.float32), rate) == 1.0
    assert qa.silence_ratio(testmedia.tone(440, 1.0, rate, amplitude=0.5), rate) == 0.0
    # -40 dBFS threshold: a sine at RMS 0.02 (-34 dBFS) is sound, at RMS 0.005 (-46 dBFS) silence.
    assert qa.silence_ratio(testmedia.tone(440, 1.0, rate, amplitude=0.02 * math.sqrt(2)), rate) == 0.0
    assert qa.silence_ratio(testmedia.tone(440, 1.0, rate, amplitude=0.005 * math.sqrt(2)), rate) == 1.0
    assert qa.silence_ratio(np.zeros(0, np.float32), rate) == 1.0
    assert qa.silence_ratio(np.full(10, 0.5, np.float32), rate) == 0.0  # shorter than one frame


def test_audio_flags_from_video_track(speech16: np.ndarray) -> None:
    """Clipping survives AAC at 48 kHz well enough to be told apart from clean speech.

    AAC rings around the flat tops, so fewer samples stay at full scale than in
    a PCM WAV of the same signal (~0.02 here against ~0.12): still far above 0.
    """
    speech48 = resample(speech16, 16_000, 48_000)[: 48_000 * 2]
    loud = np.clip(speech48 * 8.0, -1.0, 1.0)
    clean_dec = decode_video(testmedia.mp4(width=160, height=120, seconds=2.0, audio=speech48, audio_rate=48_000))
    loud_dec = decode_video(testmedia.mp4(width=160, height=120, seconds=2.0, audio=loud, audio_rate=48_000))
    assert clean_dec.audio is not None and loud_dec.audio is not None
    clean = qa.media_qa(None, clean_dec.audio, clean_dec.sample_rate)
    loud_qa = qa.media_qa(None, loud_dec.audio, loud_dec.sample_rate)
    assert clean[0] < 0.001
    assert loud_qa[0] > 0.01


# --------------------------------------------------------------------------- video


def test_blur_level_blurred_copy_is_higher(face_frames: np.ndarray, blurred_face_frames: np.ndarray) -> None:
    sharp = qa.blur_level(face_frames)
    soft = qa.blur_level(blurred_face_frames)
    assert sharp < 0.3
    assert soft > 0.6
    assert soft > sharp + 0.3


def test_blur_level_mapping() -> None:
    flat = np.full((4, 128, 171, 3), 128, dtype=np.uint8)
    assert qa.blur_level(flat) == 1.0
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(4, 128, 171, 3), dtype=np.uint8)
    assert qa.blur_level(noise) < 0.01
    frame = noise[0]
    assert qa.blur_level(frame) == pytest.approx(qa.blur_level(frame[None]))


def test_laplacian_variance_matches_opencv(face_frames: np.ndarray) -> None:
    import cv2

    gray = cv2.cvtColor(face_frames[0], cv2.COLOR_RGB2GRAY).astype(np.float64)
    lap = cv2.Laplacian(gray, cv2.CV_64F, ksize=1)[1:-1, 1:-1]
    assert qa.laplacian_variance(face_frames[:1])[0] == pytest.approx(lap.var(), rel=0.02)


def test_face_confidence_face_vs_noise(face_frames: np.ndarray, noise_frames: np.ndarray) -> None:
    assert qa.face_confidence(face_frames) >= 0.5
    assert qa.face_confidence(noise_frames) < 0.1


@pytest.mark.parametrize("maker", [testmedia.mp4, testmedia.flv, testmedia.avi])
def test_face_confidence_default_sizes(maker) -> None:
    """RAVDESS-like 1280x720 MP4, CREMA-D-like 480x360 FLV, 640x480 AVI."""
    frames = decode_video(maker(seconds=0.7, kind="face")).frames
    assert qa.face_confidence(frames) >= 0.5


def test_face_confidence_gradient_no_face() -> None:
    frames = decode_video(testmedia.mp4(width=320, height=240, seconds=0.5, kind="gradient")).frames
    assert qa.face_confidence(frames) < 0.1


# Frames as the decoder hands them to the face detector (qa_frames: height <= 360 px), from
# 1280x720 and 480x360 scenes with a face of a known share of the frame height, passed
# through JPEG at quality 50 so the detector sees compression artefacts as in real footage.
QA_SIZES = [(1280, 720), (480, 360)]
FACE_CENTERS = [(0.5, 0.45), (0.3, 0.4), (0.7, 0.5), (0.45, 0.55)]


def _jpeg(frame: np.ndarray, quality: int = 50) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _scene_qa_frames(width: int, height: int, **kwargs) -> np.ndarray:
    """4 frames (the detector examines FACE_FRAMES of them): the face moves between them, as in a clip."""
    if kwargs.get("kind", "face") == "face" and "centers" not in kwargs:
        frames = [
            testmedia.face_scene(width, height, centers=[c], seed=i, **kwargs) for i, c in enumerate(FACE_CENTERS)
        ]
    else:
        frames = [testmedia.face_scene(width, height, seed=i, **kwargs) for i in range(4)]
    out = testmedia.qa_frames(np.stack([_jpeg(f) for f in frames]))
    assert out.shape[1] == min(height, 360) and out.shape[0] == 4
    return out


@pytest.mark.parametrize("size", QA_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("face_frac", [0.10, 0.15, 0.20, 0.30, 0.50])
def test_face_flag_sees_faces_of_a_tenth_of_the_frame_height(size: tuple[int, int], face_frac: float) -> None:
    frames = _scene_qa_frames(*size, face_frac=face_frac)
    found = qa.detect_faces(frames)
    assert [f.count for f in found] == [1] * qa.FACE_FRAMES
    assert [f.count for f in qa.detect_faces(frames, 4)] == [1, 1, 1, 1]  # at every position of the scene
    assert qa.face_confidence_of(found) >= 0.8
    assert qa.face_confidence(frames) == qa.face_confidence_of(found)
    assert qa.face_count(frames) == 1


@pytest.mark.parametrize("size", QA_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["no_face", "noise", "wall", "texture"])
def test_face_flag_stays_near_zero_without_a_face(size: tuple[int, int], kind: str) -> None:
    frames = _scene_qa_frames(*size, kind=kind)
    assert qa.face_confidence(frames) <= 0.05
    assert qa.face_count(frames) == 0


@pytest.mark.parametrize("size", QA_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_face_count_two_people(size: tuple[int, int]) -> None:
    frames = _scene_qa_frames(*size, face_frac=0.2, centers=[(0.3, 0.45), (0.72, 0.5)])
    assert qa.face_count(frames) == 2
    assert qa.face_confidence(frames) >= 0.8


def test_faces_under_the_minimum_size_are_not_found() -> None:
    """Documented limit: under FACE_MIN_FRACTION (6.7 %) of the height the face is below the cascade's window."""
    frames = _scene_qa_frames(1280, 720, face_frac=0.05)
    assert qa.face_confidence(frames) == 0.0 and qa.face_count(frames) == 0


def test_media_qa_uses_qa_frames_for_the_face_flag() -> None:
    """A 15 % face is ~19 px in the 128x171 model frames (too small); the qa_frames find it."""
    import cv2

    full = np.stack([testmedia.face_scene(1280, 720, 0.15, centers=[c], seed=i) for i, c in enumerate(FACE_CENTERS)])
    model_frames = np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_AREA) for f in full])
    without = qa.media_qa(model_frames, None, None)
    with_qa = qa.media_qa(model_frames, None, None, qa_frames=testmedia.qa_frames(full))
    assert without[2] < 0.1 <= 0.8 <= with_qa[2]
    assert with_qa[3] == without[3]  # blur stays measured on the model frames
    assert np.isnan(with_qa[:2]).all()
    assert qa.media_qa(model_frames, None, None, qa_frames=np.zeros((0, 360, 640, 3), np.uint8))[2] == without[2]


# --------------------------------------------------------------------------- fusion flags


def test_consistency() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.1, 0.2, 0.1], np.float32)
    assert qa.consistency(p, p) == pytest.approx(1.0, abs=1e-6)
    a, b = np.eye(6, dtype=np.float32)[0], np.eye(6, dtype=np.float32)[3]
    assert qa.consistency(a, b) == pytest.approx(0.0, abs=1e-9)
    u = np.full(6, 1 / 6, np.float32)
    mid = qa.consistency(a, u)
    assert 0.0 < mid < 1.0
    assert qa.consistency(u, a) == pytest.approx(mid)  # symmetric
    assert qa.consistency(p * 3, p) == pytest.approx(1.0, abs=1e-6)  # renormalised


def test_consistency_nan() -> None:
    p = np.full(6, 1 / 6, np.float32)
    assert math.isnan(qa.consistency(p, np.full(6, np.nan, np.float32)))
    assert math.isnan(qa.consistency(np.zeros(6, np.float32), p))
    assert math.isnan(qa.consistency(None, p))  # type: ignore[arg-type]
    assert math.isnan(qa.consistency(p, p[:5]))


def test_overall_confidence() -> None:
    p = np.array([0.7, 0.1, 0.05, 0.05, 0.05, 0.05], np.float32)
    perfect = np.array([0.0, 0.2, 0.95, 0.1], np.float32)
    top = qa.overall_confidence(p, perfect, 1.0)
    assert top == pytest.approx(0.7 * (1.0 + 0.95) / 2)
    # Every kind of damage lowers it.
    for i, bad in enumerate([0.05, 0.9, 0.1, 0.9]):
        worse = perfect.copy()
        worse[i] = bad
        assert qa.overall_confidence(p, worse, 1.0) < top
    assert qa.overall_confidence(p, perfect, 0.5) == pytest.approx(top * 0.5)
    # A less peaked prediction is less confident.
    flat = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1], np.float32)
    assert qa.overall_confidence(flat, perfect, 1.0) < top


def test_overall_confidence_nan_means_not_available() -> None:
    p = np.array([0.6, 0.2, 0.1, 0.05, 0.03, 0.02], np.float32)
    audio_only = np.array([0.0, 0.1, NAN, NAN], np.float32)
    assert qa.overall_confidence(p, audio_only, NAN) == pytest.approx(0.6)
    video_only = np.array([NAN, NAN, 1.0, 0.2], np.float32)
    assert qa.overall_confidence(p, video_only, NAN) == pytest.approx(0.6)
    assert qa.overall_confidence(p, np.full(4, NAN, np.float32), NAN) == pytest.approx(0.6)
    assert math.isnan(qa.overall_confidence(np.full(6, NAN, np.float32), audio_only, NAN))


# --------------------------------------------------------------------------- media_qa


def test_media_qa_modalities(face_frames: np.ndarray, speech16: np.ndarray) -> None:
    audio = _decode_wav(np.stack([speech16, speech16], axis=1), 16_000)
    both = qa.media_qa(face_frames, audio, 16_000)
    assert both.shape == (len(C.MEDIA_QA_NAMES),) and both.dtype == np.float32
    assert not np.any(np.isnan(both))
    v = qa.media_qa(face_frames, None, None)
    assert np.isnan(v[:2]).all() and not np.isnan(v[2:]).any()
    np.testing.assert_allclose(v[2:], both[2:])
    a = qa.media_qa(None, audio, 16_000)
    assert np.isnan(a[2:]).all() and not np.isnan(a[:2]).any()
    np.testing.assert_allclose(a[:2], both[:2])
    assert np.isnan(qa.media_qa(None, None, None)).all()


def test_all_values_in_unit_interval(
    face_frames: np.ndarray, blurred_face_frames: np.ndarray, noise_frames: np.ndarray, speech16: np.ndarray
) -> None:
    rng = np.random.default_rng(3)
    audios = [
        _decode_wav(speech16, 16_000),
        _decode_wav(np.clip(speech16 * 8, -1, 1), 16_000),
        _decode_wav(rng.uniform(-1, 1, 16_000).astype(np.float32), 16_000, "f32"),
        np.zeros((1, 16_000), np.float32),
    ]
    values = []
    for frames in (face_frames, blurred_face_frames, noise_frames):
        for audio in audios:
            flags = qa.media_qa(frames, audio, 16_000)
            values.extend(flags.tolist())
            for _ in range(5):
                pv, pa = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
                c = qa.consistency(pv, pa)
                values.extend([c, qa.overall_confidence(rng.dirichlet(np.ones(6)), flags, c)])
    arr = np.asarray(values)
    assert np.all((arr >= 0.0) & (arr <= 1.0)), arr


def test_media_qa_is_cheap(face_frames: np.ndarray, speech16: np.ndarray) -> None:
    audio = np.zeros((1, 4 * 48_000), np.float32)
    s48 = resample(speech16, 16_000, 48_000)[: audio.shape[1]]
    audio[0, : s48.size] = s48
    qa.media_qa(face_frames, audio, 48_000)  # loads the cascade
    best = min(_timed(lambda: qa.media_qa(face_frames, audio, 48_000)) for _ in range(3))
    assert best < 0.25  # ~15-20 ms on 2 cores; generous for loaded CI machines


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_face_detector_is_safe_across_threads() -> None:
    """Threads detecting at once (the in-process pipeline, preprocess's decode pool) each get their own
    classifier: a shared one failed OpenCV's scaleIdx assertion with different minimum sizes in flight."""
    from concurrent.futures import ThreadPoolExecutor

    scenes = [_scene_qa_frames(1280, 720, face_frac=frac) for frac in (0.1, 0.3, 0.5)]
    scenes.append(_scene_qa_frames(480, 360, kind="no_face"))
    want = [qa.face_confidence(f) for f in scenes]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(qa.face_confidence, scenes)) == want
