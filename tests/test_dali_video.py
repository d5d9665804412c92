"""The DALI decode path (core/dali_video.py, profile cpu_dali): frame rule, fallbacks, leases, parity, Triton."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from fusion_emotion.client.triton import infer_grpc
from helpers import start_triton
from test_frontend import run_frontend

from fusion_emotion.core import dali_video as dv
from fusion_emotion.core import media
from fusion_emotion.core.features import prepare_request
from fusion_emotion.core.pipeline import ReferencePipeline
from fusion_emotion.errors import ErrorKind
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.ops import synth

# Parity tolerances, in Kinetics-normalised units (one uint8 step is 1/255/0.22 ~ 0.018 units). Same frames
# (MP4, MKV): DALI's YUV->RGB conversion and cubic resize vs swscale's area filter differ by under one step
# on average and by up to ~19 steps on the synthetic face's sharp edges (measured 0.014 / 0.34 at 720p).
PARITY_MEAN, PARITY_MAX = 0.03, 0.6
# H.264 in AVI: AVI stores no presentation times, so the PyAV path's frame times come out in decode order
# and with B-frames it picks neighbouring frames (one frame period apart) where DALI picks by presentation.
PARITY_AVI_MEAN, PARITY_AVI_MAX = 0.12, 3.0
# Ensemble probabilities: the encoders damp input differences (measured max |dp| 1.2e-4 .. 2.4e-4).
PARITY_DP = 1e-3
# QA flags: the blur flag is calibrated on PyAV's frames; DALI's resize moves it by 2e-5 at 720p and by
# ~0.01 at 320x240 (of ~0.09); the face flag by < 1e-4.
QA_ATOL = 0.02


@pytest.fixture(scope="module")
def pool() -> dv.DaliPool:
    return dv.DaliPool("cpu", 1)


@pytest.fixture(scope="module")
def small() -> dict[str, bytes]:
    """320x240, 1 s: H.264 in MP4, AVI and MKV (served by DALI); FLV, MPEG-4 Part 2 AVI, VP8 WebM (PyAV)."""
    tone = synth.tone(300, 1.0, 48_000)
    base = synth.mp4(width=320, height=240, seconds=1.0, audio=tone, audio_rate=48_000, video_bitrate=500_000)
    return {
        "mp4": base,
        "avi": synth.remux(base, "avi"),
        "mkv": synth.remux(base, "matroska"),
        "flv": synth.flv(width=320, height=240, seconds=1.0),
        "avi_mpeg4": synth.avi(width=320, height=240, seconds=1.0),
        "webm": synth.webm(width=320, height=240, seconds=1.0),
    }


DALI_SERVED = ("mp4", "avi", "mkv")
PYAV_SERVED = ("flv", "avi_mpeg4", "webm")


# --------------------------------------------------------------------------- the shared frame rule


def test_select_frames_is_the_streaming_rule():
    times = np.array([0.0, 0.1, 0.2, 0.3])
    assert media.select_frames(times, [0.0, 0.05, 0.1 - 1e-7, 0.25, 0.3, 9.0]).tolist() == [0, 1, 1, 3, 3, 3]
    for t, target in [(0.1, 0.1), (0.1 - 1e-7, 0.1), (0.1, 0.2)]:
        assert media.serves(t, target) == (media.select_frames([t], [target])[0] == 0 and t + 1e-6 >= target)
    with pytest.raises(ValueError):
        media.select_frames([], [0.0])


def _picked(data: bytes) -> tuple[list[int], list[int]]:
    """(frames the scan selects, frames VideoDecoder.sample returned), as indices into every decoded frame."""
    dec = media.VideoDecoder(data, want_audio=False)
    picks = dec.scan_frames().select(dec.clip_times())
    sampled = media.decode_video(data, want_audio=False).frames.astype(np.int16)
    with av.open(io.BytesIO(data)) as c:
        every = [
            f.reformat(width=171, height=128, format="rgb24", interpolation="AREA").to_ndarray().astype(np.int16)
            for f in c.decode(video=0)
        ]
    matched = [int(np.argmin([np.abs(s - e).mean() for e in every])) for s in sampled]
    return picks.tolist(), matched


@pytest.mark.parametrize("name", ["mp4", "mkv", "avi_mpeg4", "flv"])
def test_scan_selects_the_frames_pyav_samples(name, small):
    """With presentation times in the container, DALI is handed exactly the frames PyAV's sampler takes
    (non-reference H.264 frames, which PyAV skips, included in the count but never picked)."""
    scan = media.VideoDecoder(small[name], want_audio=False).scan_frames()
    picks, matched = _picked(small[name])
    assert picks == matched
    if scan.codec == "h264":
        assert (~scan.reference).any()  # the clip has non-reference frames: the flags mattered
        assert all(scan.reference[p] for p in picks)


def test_h264_nal_parsing():
    idr, nonref_b, ref_b = b"\x65", b"\x01", b"\x41"  # nal_ref_idc 3/0/2, types 5/1/1
    sei = b"\x06"
    avcc = lambda *nals: b"".join(len(n).to_bytes(4, "big") + n for n in nals)  # noqa: E731
    assert media.h264_is_reference(avcc(sei + b"x", idr + b"y" * 9), 4)
    assert not media.h264_is_reference(avcc(nonref_b + b"y" * 9, nonref_b + b"z"), 4)
    assert media.h264_is_reference(avcc(nonref_b + b"y", ref_b + b"z"), 4)
    # a NAL of 256..511 bytes: its length prefix starts 00 00 01, like an Annex B start code
    assert not media.h264_is_reference(avcc(nonref_b + b"y" * 300), 4)
    assert media.h264_is_reference(b"\x00\x00\x00\x01" + idr + b"abc", 0)
    assert not media.h264_is_reference(b"\x00\x00\x01" + nonref_b + b"abc\x00\x00\x01" + nonref_b + b"d", 4)
    assert media.h264_nal_length_size(bytes([1, 0x64, 0, 0x1F, 0xFF])) == 4
    assert media.h264_nal_length_size(b"") == 0


def test_eligibility_and_crop():
    assert dv.dali_eligible("h264", "MP4", "cpu") and dv.dali_eligible("h264", "AVI", "cpu")
    assert dv.dali_eligible("h264", "MKV/WebM", "cpu")
    assert not dv.dali_eligible("h264", "FLV", "cpu") and not dv.dali_eligible("mpeg4", "AVI", "cpu")
    assert not dv.dali_eligible("vp8", "MKV/WebM", "gpu") and dv.dali_eligible("mpeg4", "AVI", "gpu")
    pos_y, pos_x = dv.crop_position()
    top, left = media.crop_box()
    assert round(pos_y * 16) == top and round(pos_x * 59) == left


# --------------------------------------------------------------------------- the path, without Triton


@pytest.mark.parametrize("name", DALI_SERVED)
def test_dali_serves_h264(name, small, pool):
    got = dv.prepare_request_dali(small[name], None, pool)
    want = prepare_request(small[name], None)
    try:
        assert got.decoder == "dali" and got.features.frames is None
        clip = got.lease.host_clip()
        assert clip.shape == (1, 3, 16, 112, 112) and clip.dtype == np.float32  # DALI's batch of one
        assert got.lease.small.shape == (16, 128, 171, 3) and got.lease.qa_frames.shape == (4, 240, 320, 3)
        d = np.abs(clip[0] - want.frames)
        mean_tol, max_tol = (PARITY_AVI_MEAN, PARITY_AVI_MAX) if name == "avi" else (PARITY_MEAN, PARITY_MAX)
        assert 0 < d.mean() <= mean_tol and d.max() <= max_tol
    finally:
        got.lease.release()
    # audio from the file's own track (PyAV) and QA flags as on the PyAV path
    np.testing.assert_array_equal(got.features.waveform, want.waveform)
    np.testing.assert_allclose(got.features.media_qa, want.media_qa, atol=QA_ATOL)


@pytest.mark.parametrize("name", PYAV_SERVED)
def test_what_dali_cannot_take_is_decoded_by_pyav(name, small, pool):
    got = dv.prepare_request_dali(small[name], None, pool)
    want = prepare_request(small[name], None)
    assert got.decoder == "pyav" and got.lease is None
    np.testing.assert_array_equal(got.features.frames, want.frames)
    np.testing.assert_array_equal(got.features.media_qa, want.media_qa)


def test_a_file_dali_refuses_falls_back(small, pool, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Could not find a valid video stream")

    monkeypatch.setattr(pool, "run", refuse)
    got = dv.prepare_request_dali(small["mp4"], None, pool)
    assert got.decoder == "pyav"
    np.testing.assert_array_equal(got.features.frames, prepare_request(small["mp4"], None).frames)


def test_limits_and_bad_media_fail_as_on_the_pyav_path(small, pool):
    tight = media.MediaLimits(max_duration_s=0.5)
    for data, limits in [(small["mp4"], tight), (b"not a video at all" * 100, media.DEFAULT_LIMITS)]:
        with pytest.raises(media.MediaError) as pyav_err:
            prepare_request(data, None, limits)
        with pytest.raises(media.MediaError) as dali_err:
            dv.prepare_request_dali(data, None, pool, limits)
        assert (dali_err.value.kind, str(dali_err.value)) == (pyav_err.value.kind, str(pyav_err.value))
    assert pyav_err.value.kind == ErrorKind.INVALID_MEDIA


def test_more_frames_than_the_frame_limit_go_to_pyav(small, pool):
    """PyAV counts only the frames it decodes (non-reference ones skipped); DALI would decode them all."""
    limits = media.MediaLimits(max_frame_rate=15.0, max_duration_s=1.5)  # 22 frames; the clip has 30, 16 ref
    got = dv.prepare_request_dali(small["mp4"], None, pool, limits)
    assert got.decoder == "pyav"
    np.testing.assert_array_equal(got.features.frames, prepare_request(small["mp4"], None, limits).frames)


def test_a_lease_keeps_its_pipeline_until_released(small):
    """DALI reuses its buffers on the next run: a held lease's output stays intact while another waits."""
    pool = dv.DaliPool("cpu", 1)
    first = dv.prepare_request_dali(small["mp4"], None, pool).lease
    before = first.host_clip().copy()
    done = threading.Event()
    second: list = []
    worker = threading.Thread(
        target=lambda: (second.append(dv.prepare_request_dali(small["mkv"], None, pool)), done.set())
    )
    worker.start()
    assert not done.wait(1.0)  # blocked: the only pipeline is leased
    np.testing.assert_array_equal(first.host_clip(), before)
    first.release()
    first.release()  # idempotent
    assert done.wait(60.0)
    worker.join()
    second[0].lease.release()


# --------------------------------------------------------------------------- parity (README "DALI parity")


@pytest.fixture(scope="module")
def parity_clips() -> dict[str, bytes]:
    """The generated RAVDESS-like 1280x720 H.264 clip (1 s, ~8 Mbit/s) and its AVI/MKV remuxes."""
    base = synth.mp4(seconds=1.0, audio=synth.speech(rate=48_000)[:48_000], audio_rate=48_000)
    return {"mp4": base, "avi": synth.remux(base, "avi"), "mkv": synth.remux(base, "matroska")}


def test_parity_720p_encoder_input_and_probabilities(parity_clips, demo_repository: Path):
    pyav = ReferencePipeline(demo_repository)
    dali = ReferencePipeline(demo_repository, video_decoder="dali_cpu")
    for name, data in parity_clips.items():
        fp, fd = pyav.features(data, None), dali.features(data, None)
        d = np.abs(fp.frames - fd.frames)
        mean_tol, max_tol = (PARITY_AVI_MEAN, PARITY_AVI_MAX) if name == "avi" else (PARITY_MEAN, PARITY_MAX)
        assert d.mean() <= mean_tol and d.max() <= max_tol, (name, d.mean(), d.max())
        pp, pd = pyav.run_features(fp)[0], dali.run_features(fd)[0]
        assert np.abs(pp - pd).max() <= PARITY_DP and pp.argmax() == pd.argmax(), (name, pp, pd)


# --------------------------------------------------------------------------- the real tritonserver


@pytest.mark.integration
def test_cpu_dali_profile_serves_and_falls_back(demo_repository: Path, tmp_path: Path, small):
    """cpu_dali answers as the DALI reference for H.264 in MP4/AVI/MKV (and so not as PyAV would), and
    as the PyAV reference for FLV and MPEG-4 Part 2 AVI: every request gets its 200."""
    pyav = ReferencePipeline(demo_repository)
    dali = ReferencePipeline(demo_repository, video_decoder="dali_cpu")
    handle = start_triton(demo_repository, tmp_path / "tritonserver.log", profile="cpu_dali")
    try:
        for name in (*DALI_SERVED, "flv", "avi_mpeg4"):
            probs, flags = infer_grpc(handle.grpc_url, small[name], None)
            want_dali, want_pyav = dali.predict(small[name], None), pyav.predict(small[name], None)
            served_by = want_dali if name in DALI_SERVED else want_pyav
            np.testing.assert_allclose(probs, served_by[0], atol=1e-5, rtol=0, err_msg=name)
            np.testing.assert_allclose(np.nan_to_num(flags), np.nan_to_num(served_by[1]), atol=1e-5, err_msg=name)
            if name in DALI_SERVED:  # the two decoders really differ here, so the check above is DALI's
                assert np.abs(want_dali[0] - want_pyav[0]).max() > 1e-5, name
        # and through the HTTP front end, as SageMaker sends raw bodies: a 200 for DALI and fallback files
        with run_frontend(Settings(triton_url=handle.grpc_url, request_timeout_s=120)) as url:
            for name, mime in [("mkv", "video/x-matroska"), ("flv", "video/x-flv"), ("avi_mpeg4", "video/x-msvideo")]:
                resp = httpx.post(
                    f"{url}/invocations", content=small[name], headers={"Content-Type": mime}, timeout=120
                )
                assert resp.status_code == 200, (name, resp.text)
    finally:
        handle.stop()
