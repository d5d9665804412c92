"""The decoder's bounds against crafted media (fusion_emotion.testmedia.hostile), without Triton.

Each hostile class is refused with the right kind and a reason that names it, in bounded CPU and memory;
the two that are legitimate audio (huge float samples, a coprime rate) are served with finite model inputs.
The same generators go through the real front end and tritonserver in tests/test_hostile_corpus.py.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core.audio import decode_audio
from fusion_emotion.core.model_inputs import fit_window, resample, resample_range, resampled_length, waveform_for_model
from fusion_emotion.core.probe import MediaError, MediaLimits
from fusion_emotion.core.rows import decode_row
from fusion_emotion.core.video import decode_video
from fusion_emotion.errors import ErrorKind
from fusion_emotion.testmedia import hostile


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    return {case.name: case.make() for case in hostile.CASES}


@pytest.mark.parametrize("case", hostile.CASES, ids=lambda c: c.name)
def test_hostile_media_is_refused_fast(case: hostile.HostileCase, corpus: dict[str, bytes]) -> None:
    data = corpus[case.name]
    cpu = time.process_time()
    with pytest.raises(MediaError) as err:
        decode_row(data if case.input_name == "video" else None, data if case.input_name == "audio" else None)
    cpu = time.process_time() - cpu
    assert err.value.kind is ErrorKind(case.kind), err.value
    assert err.value.input_name == case.input_name
    assert case.reason in err.value.reason
    assert cpu < 2.0, f"{case.name} took {cpu:.2f} s of CPU"


def test_many_streams_are_refused_before_probing_them() -> None:
    data = hostile.many_streams(streams=12, width=1920, height=1080)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MediaError, match="more than 8 streams"):
        decode_video(data)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 50, grown_mib
    # the same file is accepted when the limit allows its streams (so the refusal is the limit's doing)
    dec = decode_video(data, limits=MediaLimits(max_streams=16))
    assert dec.frames.shape == (C.NUM_FRAMES, *C.RESIZE_HW, 3)


def test_ffconcat_never_opens_the_path(tmp_path) -> None:
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(testmedia.mp4(width=64, height=48, seconds=0.5))
    with pytest.raises(MediaError, match="not a decodable media file"):
        decode_video(hostile.ffconcat(str(secret)))


def test_frame_size_is_checked_on_every_frame() -> None:
    with pytest.raises(MediaError) as err:
        decode_video(hostile.frame_size_switch())
    assert err.value.kind is ErrorKind.INVALID_MEDIA  # the decoder's pixel limit refuses the 4000x4000 frame
    # a frame within the pixel budget but wider than allowed is named as over the frame-size limit
    with pytest.raises(MediaError) as err:
        decode_video(hostile.frame_size_switch(small=32, large=400), limits=MediaLimits(max_width=300))
    assert err.value.kind is ErrorKind.TOO_LARGE and "400x400 is over the 300x2160 limit" in err.value.reason


@pytest.mark.parametrize("make", [hostile.channel_switch, hostile.rate_switch])
def test_one_audio_format_per_track(make) -> None:
    with pytest.raises(MediaError, match="audio format changes mid-stream") as err:
        decode_video(make())
    assert err.value.kind is ErrorKind.INVALID_MEDIA


def test_huge_float_samples_are_clipped_to_full_scale() -> None:
    dec = decode_audio(hostile.huge_float_wav())
    assert np.isfinite(dec.samples).all() and np.abs(dec.samples).max() == 1.0
    feats = decode_row(None, hostile.huge_float_wav())
    assert feats.waveform is not None and np.isfinite(feats.waveform).all()
    assert feats.media_qa[0] == 1.0  # every sample at full scale reads as clipped


def test_coprime_rate_costs_the_window_not_the_track() -> None:
    data = hostile.coprime_rate_wav(seconds=30.0)
    dec = decode_audio(data)
    cpu = time.process_time()
    wave = waveform_for_model(dec.samples, dec.sample_rate)
    cpu = time.process_time() - cpu
    assert wave.shape == (C.AUDIO_SAMPLES,) and np.isfinite(wave).all()
    assert _dominant_hz(wave, C.SAMPLE_RATE) == pytest.approx(440.0, abs=2.0)
    assert cpu < 0.2, cpu


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 48_000, 96_000])
def test_resample_range_equals_the_full_resample(rate: int) -> None:
    x = np.random.default_rng(rate).standard_normal(rate * 7 + 13).astype(np.float32)
    full = resample(x, rate)
    assert full.shape[0] == resampled_length(x.shape[0], rate)
    for start, stop in ((0, 1000), (12_345, 76_345), (full.shape[0] - 500, full.shape[0] + 100)):
        np.testing.assert_allclose(resample_range(x, rate, start, stop), full[start:stop], atol=1e-6)
    n = full.shape[0]
    np.testing.assert_allclose(
        waveform_for_model(x[None], rate), fit_window(full), atol=1e-6, err_msg=f"{rate} Hz, {n}"
    )


def test_rates_below_telephony_are_refused() -> None:
    with pytest.raises(MediaError, match="under the 8000 Hz minimum"):
        decode_audio(testmedia.wav(testmedia.tone(100, 1.0, 4_000), 4_000))


def test_wav_declaring_more_than_it_has_is_served() -> None:
    dec = decode_audio(hostile.wav_declaring_huge_size())
    assert dec.samples.shape[1] == 16_000


def test_cancellation_stops_decoding() -> None:
    data = testmedia.mp4(width=160, height=120, seconds=3.0)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(MediaError) as err:
        decode_video(data, cancel=cancel)
    assert err.value.kind is ErrorKind.CANCELLED and len(calls) == 2


def test_webm_without_duration_is_measured() -> None:
    """Browser MediaRecorder WebM declares no duration: the decoder measures it from the packets."""
    data = testmedia.webm(width=320, height=240, seconds=1.5, kind="index", live=True)
    dec = decode_video(data)
    assert dec.duration_s == pytest.approx(1.5, abs=0.05)
    levels = dec.frames.reshape(C.NUM_FRAMES, -1).mean(axis=1)
    assert np.all(np.diff(levels) > 0)  # uniform over the whole clip, in order


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * rate / x.size)
