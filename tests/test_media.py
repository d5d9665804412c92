"""Unit tests of media decoding (core.probe, core.audio, core.video, core.model_inputs, core.rows) on synthetic media (no Triton)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core.audio import decode_audio
from fusion_emotion.core.model_inputs import (
    crop_box,
    fit_window,
    frames_for_model,
    resample,
    to_mono,
    waveform_for_model,
)
from fusion_emotion.core.probe import MediaError, MediaLimits
from fusion_emotion.core.rows import decode_row
from fusion_emotion.core.video import decode_video
from fusion_emotion.ops.baseline import uniform_indices


@pytest.fixture(scope="module")
def speech48() -> np.ndarray:
    assert shutil.which("espeak-ng"), "espeak-ng is required: run `make setup`"
    return testmedia.speech(rate=48_000)


@pytest.fixture(scope="module")
def ravdess_like(speech48: np.ndarray) -> bytes:
    """1280x720 30 fps H.264 + 48 kHz AAC, as RAVDESS ships (shortened to keep tests fast)."""
    return testmedia.mp4(seconds=1.5, audio=speech48[: 48_000 * 3 // 2], audio_rate=48_000)


# --------------------------------------------------------------------------- containers


def test_mp4_ravdess_like(ravdess_like: bytes, speech48: np.ndarray) -> None:
    dec = decode_video(ravdess_like)
    assert dec.frames.shape == (C.NUM_FRAMES, *C.RESIZE_HW, 3)
    assert dec.frames.dtype == np.uint8
    assert dec.sample_rate == 48_000
    assert dec.audio is not None and dec.audio.dtype == np.float32 and dec.audio.shape[0] == 1
    # AAC adds at most a couple of 1024-sample frames of padding.
    assert abs(dec.audio.shape[1] - 72_000) <= 3 * 1024
    assert dec.duration_s == pytest.approx(1.5, abs=0.05)
    ref_rms = float(np.sqrt(np.mean(speech48[:72_000] ** 2)))
    got_rms = float(np.sqrt(np.mean(dec.audio**2)))
    assert got_rms == pytest.approx(ref_rms, rel=0.15)


@pytest.mark.parametrize(
    ("maker", "rate", "seconds", "fps"),
    [
        (testmedia.flv, 44_100, 1.0, 30),
        (testmedia.flv, 22_050, 1.0, 30),
        (testmedia.avi, 44_100, 1.0, 25),
        (testmedia.avi, 16_000, 1.0, 25),
    ],
)
def test_flv_avi_decode(maker, rate: int, seconds: float, fps: int) -> None:
    tone = testmedia.tone(440.0, seconds, rate, amplitude=0.3)
    dec = decode_video(maker(width=320, height=240, fps=fps, seconds=seconds, audio=tone, audio_rate=rate))
    assert dec.frames.shape == (16, 128, 171, 3)
    assert dec.frames.dtype == np.uint8
    assert dec.sample_rate == rate
    assert dec.audio is not None and dec.audio.shape[0] == 1
    assert abs(dec.audio.shape[1] - tone.size) <= 2 * 1152 + 1024  # MP3 frame padding; PCM exact
    peak = float(np.percentile(np.abs(dec.audio), 99.9))
    assert peak == pytest.approx(0.3, abs=0.03)


def test_avi_pcm_audio_is_exact() -> None:
    tone = testmedia.tone(1000.0, 1.0, 16_000, amplitude=0.25)
    dec = decode_video(testmedia.avi(width=160, height=120, seconds=1.0, audio=tone, audio_rate=16_000))
    assert dec.audio is not None
    np.testing.assert_allclose(dec.audio[0], tone, atol=1.0 / 32768 + 1e-6)


@pytest.mark.parametrize("maker", [testmedia.mp4, testmedia.flv, testmedia.avi])
def test_video_without_audio_track(maker) -> None:
    dec = decode_video(maker(width=320, height=240, seconds=1.0))
    assert dec.frames.shape == (16, 128, 171, 3)
    assert dec.audio is None and dec.sample_rate is None


def test_want_audio_false_skips_track() -> None:
    data = testmedia.avi(width=160, height=120, seconds=1.0, audio=testmedia.tone(440, 1.0, 16_000), audio_rate=16_000)
    dec = decode_video(data, want_audio=False)
    assert dec.audio is None and dec.sample_rate is None


@pytest.mark.parametrize(
    ("maker", "fps", "seconds", "tol"),
    [(testmedia.mp4, 30, 3.5, 2), (testmedia.flv, 30, 2.5, 1), (testmedia.avi, 25, 2.0, 1)],
)
def test_uniform_sampling_over_time(maker, fps: int, seconds: float, tol: int) -> None:
    """Frame i is flat grey 16 + 2i, so each sampled frame's brightness tells its index."""
    dec = decode_video(maker(width=160, height=120, fps=fps, seconds=seconds, kind="index"))
    got = np.round((dec.frames.reshape(16, -1).mean(axis=1) - 16.0) / 2.0)
    total = int(round(fps * seconds))
    # First frame at or after the centre of each of 16 equal time slices.
    expected = np.ceil((np.arange(16) + 0.5) * total / 16 - 1e-9)
    assert np.all(np.diff(got) > 0), got
    # H.264's non-reference B frames are skipped, so a pick may land a frame or two later.
    assert np.all(got >= expected - 1) and np.all(got <= expected + tol), (got, expected)
    assert got[0] <= total / 16 + tol and got[-1] >= total * 15 / 16 - 1


def test_uniform_indices_repeats_short_clips() -> None:
    np.testing.assert_array_equal(uniform_indices(4, 8), [0, 0, 1, 1, 2, 2, 3, 3])
    idx = uniform_indices(105, 16)
    assert idx[0] == 3 and idx[-1] == 101 and np.all(np.diff(idx) > 0)


# --------------------------------------------------------------------------- WAV

_STEP = {"u8": 1 / 128, "s16": 1 / 32768, "s24": 1 / 8388608, "s32": 1 / 2147483648, "f32": 1e-7}


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 44_100, 48_000])
@pytest.mark.parametrize("fmt", ["s16", "s24", "s32", "f32", "u8"])
@pytest.mark.parametrize("channels", [1, 2])
def test_wav_formats(rate: int, fmt: str, channels: int) -> None:
    n = rate // 4 + 7  # odd length: no lucky alignment with block sizes
    t = np.arange(n) / rate
    left = (0.6 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    x = left if channels == 1 else np.stack([left, -0.5 * left], axis=1)
    dec = decode_audio(testmedia.wav(x, rate, fmt))
    assert dec.sample_rate == rate
    assert dec.samples.dtype == np.float32
    assert dec.samples.shape == (channels, n)
    ref = x[None, :] if channels == 1 else x.T
    np.testing.assert_allclose(dec.samples, ref, atol=_STEP[fmt] * 1.01)
    assert float(np.abs(dec.samples[0]).max()) == pytest.approx(0.6, abs=max(_STEP[fmt], 1e-3))


def test_wav_full_scale_maps_to_one() -> None:
    x = np.array([1.0, -1.0, 0.0, 0.5], dtype=np.float32)
    dec = decode_audio(testmedia.wav(x, 16_000, "s16"))
    np.testing.assert_allclose(dec.samples[0], [32767 / 32768, -1.0, 0.0, 0.5])


# --------------------------------------------------------------------------- audio helpers


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1.0 / rate)[np.argmax(spec)])


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_resample_keeps_frequency_and_amplitude(rate: int) -> None:
    x = testmedia.tone(440.0, 1.0, rate, amplitude=0.5)
    y = resample(x, rate)
    assert y.dtype == np.float32
    assert y.size == pytest.approx(16_000, abs=1)
    assert _dominant_hz(y, 16_000) == pytest.approx(440.0, abs=1.5)
    core = y[800:-800]  # away from the filter's edge transients
    assert float(np.abs(core).max()) == pytest.approx(0.5, abs=0.01)
    assert float(np.sqrt(np.mean(core**2))) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resample_identity() -> None:
    x = testmedia.tone(440.0, 0.1, 16_000)
    assert resample(x, 16_000) is x


def test_to_mono_averages_channels() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(to_mono(x), [0.5, 0.5])
    np.testing.assert_allclose(to_mono(x[:1]), [1.0, 0.0])


def test_fit_window_crops_centre() -> None:
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_window(x, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_window(x, 10), x)
    long = np.arange(C.AUDIO_SAMPLES + 1000, dtype=np.float32)
    out = fit_window(long)
    assert out.shape == (C.AUDIO_SAMPLES,) and out[0] == 500


def test_fit_window_pads_at_end() -> None:
    out = fit_window(np.ones(3, dtype=np.float32), 6)
    np.testing.assert_array_equal(out, [1, 1, 1, 0, 0, 0])
    assert out.dtype == np.float32


def test_waveform_for_model_shape() -> None:
    stereo = np.stack([testmedia.tone(440, 2.0, 44_100)] * 2)
    w = waveform_for_model(stereo, 44_100)
    assert w.shape == (C.AUDIO_SAMPLES,) and w.dtype == np.float32
    assert np.all(w[32_000:] == 0) and np.abs(w[:31_000]).max() > 0.4


# --------------------------------------------------------------------------- frames for the model


def test_crop_box_matches_torchvision_rounding() -> None:
    assert crop_box((128, 171), (112, 112)) == (8, 30)  # 29.5 rounds half to even
    assert crop_box((128, 173), (112, 112)) == (8, 30)  # 30.5 -> 30
    assert crop_box((112, 112), (112, 112)) == (0, 0)


def test_frames_for_model_normalisation() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(16, 128, 171, 3), dtype=np.uint8)
    x = frames_for_model(frames)
    assert x.shape == (3, 16, 112, 112) and x.dtype == np.float32 and x.flags.c_contiguous
    crop = frames[:, 8:120, 30:142, :].astype(np.float64) / 255.0
    mean = np.asarray(C.KINETICS_MEAN)
    std = np.asarray(C.KINETICS_STD)
    expected = np.transpose((crop - mean) / std, (3, 0, 1, 2))
    np.testing.assert_allclose(x, expected, atol=1e-5)


def test_frames_for_model_matches_torchvision() -> None:
    import torch
    import torchvision.transforms.functional as tvf

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(16, 128, 171, 3), dtype=np.uint8)
    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # T, C, H, W
    t = tvf.center_crop(t, [112, 112])
    t = tvf.normalize(t, list(C.KINETICS_MEAN), list(C.KINETICS_STD))
    ref = t.permute(1, 0, 2, 3).numpy()
    np.testing.assert_allclose(frames_for_model(frames), ref, atol=1e-5)


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def small_mp4() -> bytes:
    return testmedia.mp4(width=320, height=240, seconds=1.0)


def _bad_cases(small_mp4: bytes) -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(7)
    return {
        "empty video": ("video", b""),
        "empty audio": ("audio", b""),
        "random video": ("video", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "random audio": ("audio", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "truncated mp4": ("video", small_mp4[: len(small_mp4) // 2]),
        "header-only wav": ("audio", testmedia.header_only_wav()),
        "wav as video": ("video", testmedia.wav(testmedia.tone(440, 0.5, 16_000), 16_000)),
        "mp4 as audio": ("audio", small_mp4),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty video",
        "empty audio",
        "random video",
        "random audio",
        "truncated mp4",
        "header-only wav",
        "wav as video",
        "mp4 as audio",
    ],
)
def test_bad_inputs_raise_media_error(case: str, small_mp4: bytes) -> None:
    kind, data = _bad_cases(small_mp4)[case]
    name = f"my_{kind}_input"
    with pytest.raises(MediaError) as err:
        if kind == "video":
            decode_video(data, input_name=name)
        else:
            decode_audio(data, input_name=name)
    assert name in str(err.value)
    assert err.value.input_name == name
    assert not err.value.too_large


def test_unsupported_container_messages(small_mp4: bytes) -> None:
    with pytest.raises(MediaError, match=r"^video: unsupported container 'wav'"):
        decode_video(testmedia.wav(testmedia.tone(440, 0.5, 16_000), 16_000))
    with pytest.raises(MediaError, match=r"^audio: unsupported container"):
        decode_audio(small_mp4)
    with pytest.raises(MediaError, match="header only"):
        decode_audio(testmedia.header_only_wav())


def test_header_only_wav_is_44_bytes() -> None:
    assert len(testmedia.header_only_wav()) == 44


def test_limits_flag_too_large(small_mp4: bytes) -> None:
    with pytest.raises(MediaError) as err:
        decode_video(small_mp4, limits=MediaLimits(max_bytes=100))
    assert err.value.too_large
    with pytest.raises(MediaError) as err:
        decode_video(small_mp4, limits=MediaLimits(max_width=160))
    assert err.value.too_large
    with pytest.raises(MediaError) as err:
        decode_audio(testmedia.wav(testmedia.tone(440, 1.0, 16_000), 16_000), limits=MediaLimits(max_duration_s=0.5))
    assert err.value.too_large


# --------------------------------------------------------------------------- decode_row (which audio counts)


def test_decode_row_needs_one_input() -> None:
    with pytest.raises(MediaError, match="request"):
        decode_row(None, None)


def test_decode_row_uses_video_audio_track() -> None:
    data = testmedia.avi(width=160, height=120, seconds=1.0, audio=testmedia.tone(440, 1.0, 44_100), audio_rate=44_100)
    inp = decode_row(data, None)
    assert inp.frames is not None and inp.frames.shape == (3, 16, 112, 112)
    assert inp.waveform is not None and inp.waveform.shape == (C.AUDIO_SAMPLES,)
    assert np.abs(inp.waveform[:15_000]).max() > 0.4


def test_decode_row_wav_overrides_track() -> None:
    video = testmedia.avi(width=160, height=120, seconds=1.0, audio=testmedia.tone(440, 1.0, 44_100), audio_rate=44_100)
    wav = testmedia.wav(testmedia.tone(1000, 0.5, 22_050, amplitude=0.2), 22_050)
    inp = decode_row(video, wav)
    assert inp.waveform is not None
    assert _dominant_hz(inp.waveform[:8000], 16_000) == pytest.approx(1000, abs=5)
    assert np.all(inp.waveform[8_100:] == 0)


def test_decode_row_audio_only() -> None:
    inp = decode_row(None, testmedia.wav(testmedia.tone(440, 0.5, 16_000), 16_000))
    assert inp.frames is None and inp.waveform is not None
