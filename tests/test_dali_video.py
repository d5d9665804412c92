"""The DALI decode path (core/dali_video.py, profile cpu_dali): frame rule, fallbacks, leases, parity, Triton."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from fusion_emotion.client.timeline_cli import timeline_grpc
from fusion_emotion.client.triton import infer_grpc
from helpers import start_triton
from test_frontend import run_frontend

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core import dali_video as dv
from fusion_emotion.core.dali_pipeline import crop_position
from fusion_emotion.core.model_inputs import crop_box
from fusion_emotion.core.nal import h264_is_reference, nal_length_size
from fusion_emotion.core.pipeline import ReferencePipeline
from fusion_emotion.core.probe import DEFAULT_LIMITS, MediaError, MediaLimits
from fusion_emotion.core.rows import decode_row
from fusion_emotion.core.timeline import timeline_local
from fusion_emotion.core.video import FrameScan, VideoDecoder, decode_video
from fusion_emotion.core.windows import select_frames, serves
from fusion_emotion.errors import ErrorKind
from fusion_emotion.frontend.settings import Settings

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
def backend() -> dv.DaliBackend:
    return dv.DaliBackend("cpu", 1)


@pytest.fixture(scope="module")
def small() -> dict[str, bytes]:
    """320x240, 1 s: H.264 in MP4, AVI and MKV (served by DALI); FLV, MPEG-4 Part 2 AVI, VP8 WebM (PyAV)."""
    tone = testmedia.tone(300, 1.0, 48_000)
    base = testmedia.mp4(width=320, height=240, seconds=1.0, audio=tone, audio_rate=48_000, video_bitrate=500_000)
    return {
        "mp4": base,
        "avi": testmedia.remux(base, "avi"),
        "mkv": testmedia.remux(base, "matroska"),
        "flv": testmedia.flv(width=320, height=240, seconds=1.0),
        "avi_mpeg4": testmedia.avi(width=320, height=240, seconds=1.0),
        "webm": testmedia.webm(width=320, height=240, seconds=1.0),
    }


DALI_SERVED = ("mp4", "avi", "mkv")
PYAV_SERVED = ("flv", "avi_mpeg4", "webm")


# --------------------------------------------------------------------------- the shared frame rule


def test_select_frames_is_the_streaming_rule():
    times = np.array([0.0, 0.1, 0.2, 0.3])
    assert select_frames(times, [0.0, 0.05, 0.1 - 1e-7, 0.25, 0.3, 9.0]).tolist() == [0, 1, 1, 3, 3, 3]
    for t, target in [(0.1, 0.1), (0.1 - 1e-7, 0.1), (0.1, 0.2)]:
        assert serves(t, target) == (select_frames([t], [target])[0] == 0 and t + 1e-6 >= target)
    with pytest.raises(ValueError):
        select_frames([], [0.0])


def _picked(data: bytes) -> tuple[list[int], list[int]]:
    """(frames the scan selects, frames VideoDecoder.sample returned), as indices into every decoded frame."""
    dec = VideoDecoder(data, want_audio=False)
    picks = dec.scan_frames().select(dec.clip_times())
    sampled = decode_video(data, want_audio=False).frames.astype(np.int16)
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
    scan = VideoDecoder(small[name], want_audio=False).scan_frames()
    picks, matched = _picked(small[name])
    assert picks == matched
    if scan.codec == "h264":
        assert (~scan.reference).any()  # the clip has non-reference frames: the flags mattered
        assert all(scan.reference[p] for p in picks)


def test_h264_nal_parsing():
    idr, nonref_b, ref_b = b"\x65", b"\x01", b"\x41"  # nal_ref_idc 3/0/2, types 5/1/1
    sei = b"\x06"
    avcc = lambda *nals: b"".join(len(n).to_bytes(4, "big") + n for n in nals)  # noqa: E731
    assert h264_is_reference(avcc(sei + b"x", idr + b"y" * 9), 4)
    assert not h264_is_reference(avcc(nonref_b + b"y" * 9, nonref_b + b"z"), 4)
    assert h264_is_reference(avcc(nonref_b + b"y", ref_b + b"z"), 4)
    # a NAL of 256..511 bytes: its length prefix starts 00 00 01, like an Annex B start code
    assert not h264_is_reference(avcc(nonref_b + b"y" * 300), 4)
    assert h264_is_reference(b"\x00\x00\x00\x01" + idr + b"abc", 0)
    assert not h264_is_reference(b"\x00\x00\x01" + nonref_b + b"abc\x00\x00\x01" + nonref_b + b"d", 4)
    assert nal_length_size(bytes([1, 0x64, 0, 0x1F, 0xFF]), "h264") == 4
    assert nal_length_size(b"", "h264") == 0


def test_eligibility_and_crop():
    def why(codec: str, container: str, device: str, frames: int = 30) -> str | None:
        scan = FrameScan(np.zeros(frames), np.ones(frames, bool), codec, container, 320, 240, np.arange(frames),
                         np.zeros(frames, bool))  # fmt: skip
        return dv.dali_ineligible(scan, device, DEFAULT_LIMITS)

    assert why("h264", "MP4", "cpu") is None and why("h264", "AVI", "cpu") is None
    assert why("h264", "MKV/WebM", "cpu") is None and why("hevc", "MP4", "cpu") is None
    assert why("h264", "FLV", "cpu") == "container" and why("mpeg4", "AVI", "cpu") == "codec"
    assert why("vp8", "MKV/WebM", "gpu") == "codec" and why("mpeg4", "AVI", "gpu") is None
    assert why("h264", "MP4", "cpu", DEFAULT_LIMITS.max_frames + 1) == "frame_limit"
    pos_y, pos_x = crop_position()
    top, left = crop_box()
    assert round(pos_y * 16) == top and round(pos_x * 59) == left


# --------------------------------------------------------------------------- the path, without Triton


@pytest.mark.parametrize("name", DALI_SERVED)
def test_dali_serves_h264(name, small, backend):
    got = decode_row(small[name], None, backend)
    want = decode_row(small[name], None)
    try:
        assert got.decoder == "dali_cpu" and got.fallback is None and not got.frames_on_host
        assert tuple(got.frames.shape()) == (1, 3, 16, 112, 112)  # DALI's batch of one: the encoder's batch axis
        clip = got.host_frames()
        assert clip.shape == (3, 16, 112, 112) and clip.dtype == np.float32
        d = np.abs(clip - want.frames)
        mean_tol, max_tol = (PARITY_AVI_MEAN, PARITY_AVI_MAX) if name == "avi" else (PARITY_MEAN, PARITY_MAX)
        assert 0 < d.mean() <= mean_tol and d.max() <= max_tol
    finally:
        got.release()
    # audio from the file's own track (PyAV) and QA flags as on the PyAV path
    np.testing.assert_array_equal(got.waveform, want.waveform)
    np.testing.assert_allclose(got.media_qa, want.media_qa, atol=QA_ATOL)


@pytest.mark.parametrize(("name", "reason"), [("flv", "container"), ("avi_mpeg4", "codec"), ("webm", "codec")])
def test_what_dali_cannot_take_is_decoded_by_pyav(name, reason, small, backend):
    got = decode_row(small[name], None, backend)
    want = decode_row(small[name], None)
    assert (got.decoder, got.fallback) == ("pyav", reason) and got.frames_on_host
    np.testing.assert_array_equal(got.frames, want.frames)
    np.testing.assert_array_equal(got.media_qa, want.media_qa)


def test_a_file_dali_refuses_falls_back(small, backend, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Could not find a valid video stream")

    monkeypatch.setattr(backend.pool, "run", refuse)
    got = decode_row(small["mp4"], None, backend)
    assert (got.decoder, got.fallback) == ("pyav", "dali_error")
    np.testing.assert_array_equal(got.frames, decode_row(small["mp4"], None).frames)


def test_limits_and_bad_media_fail_as_on_the_pyav_path(small, backend):
    tight = MediaLimits(max_duration_s=0.5)
    for data, limits in [(small["mp4"], tight), (b"not a video at all" * 100, DEFAULT_LIMITS)]:
        with pytest.raises(MediaError) as pyav_err:
            decode_row(data, None, limits=limits)
        with pytest.raises(MediaError) as dali_err:
            decode_row(data, None, backend, limits)
        assert (dali_err.value.kind, str(dali_err.value)) == (pyav_err.value.kind, str(pyav_err.value))
    assert pyav_err.value.kind == ErrorKind.INVALID_MEDIA


def test_more_frames_than_the_frame_limit_go_to_pyav(small, backend):
    """PyAV counts only the frames it decodes (non-reference ones skipped); DALI would decode them all."""
    limits = MediaLimits(max_frame_rate=15.0, max_duration_s=1.5)  # 22 frames; the clip has 30, 16 ref
    got = decode_row(small["mp4"], None, backend, limits)
    assert (got.decoder, got.fallback) == ("pyav", "frame_limit")
    np.testing.assert_array_equal(got.frames, decode_row(small["mp4"], None, limits=limits).frames)


def test_a_frame_past_dalis_count_is_an_error_not_a_black_frame(small, backend):
    """A container that holds fewer frames than asked for (its count misstated, a truncated tail) fails the
    run, so the request falls back to PyAV; DALI's default pad mode would hand back constant black frames."""
    count = VideoDecoder(small["mkv"], want_audio=False).scan_frames().times.size
    assert count == 30
    lease = backend.pool.run(small["mkv"], np.array([0, count - 1]), (240, 320), qa_order=[0])
    assert lease.small[1].mean() > 20  # a real frame
    lease.release()
    with pytest.raises(RuntimeError, match="out-of-bounds"):
        backend.pool.run(small["mkv"], np.array([0, count - 1, count + 4]), (240, 320), qa_order=[0])


def test_a_lease_keeps_its_pipeline_and_a_busy_pool_never_blocks(small):
    """DALI reuses its buffers on a pipeline's next run, so a clip's pipeline stays leased until its encoder
    has answered. preprocess releases the leases of one Triton batch only after their common encoder calls,
    so a clip decode never waits for a pipeline: with every one leased it goes to PyAV (``dali_busy``), which
    is what keeps a batch larger than the pool from deadlocking. A timeline's runs may wait (each lease is
    released as soon as its frames are copied)."""
    one = dv.DaliBackend("cpu", 1)
    first = decode_row(small["mp4"], None, one)
    before = first.host_frames().copy()
    done = threading.Event()
    second: list = []
    worker = threading.Thread(target=lambda: (second.append(decode_row(small["mkv"], None, one)), done.set()))
    worker.start()
    assert done.wait(60.0)  # answered while the only pipeline is leased
    worker.join()
    assert (second[0].decoder, second[0].fallback) == ("pyav", "dali_busy")
    np.testing.assert_array_equal(first.host_frames(), before)  # the held output was not overwritten
    first.release()
    first.release()  # idempotent
    third = decode_row(small["mkv"], None, one)
    assert (third.decoder, third.fallback) == ("dali_cpu", None)  # the pipeline is free again
    third.release()


def test_the_probe_decodes_on_a_working_dali(backend):
    assert backend.unavailable is None and backend.pool.probe() is None


def test_a_dali_that_cannot_decode_is_found_at_load_and_never_run(small, monkeypatch, caplog):
    """No NVDEC (no libnvcuvid): pipelines build, every run fails. The probe at load finds it, says so in
    the log, and every video goes to PyAV without a pipeline run (or rebuilt) per request."""
    monkeypatch.setattr(dv.DaliPool, "probe", lambda self: "RuntimeError: cuvidCreateDecoder failed")
    with caplog.at_level(logging.INFO, logger="fusion_emotion"):
        broken = dv.DaliBackend("cpu", 1)
    assert broken.unavailable == "RuntimeError: cuvidCreateDecoder failed"
    assert "cannot decode the built-in H.264 probe clip" in caplog.text and "decoded with PyAV" in caplog.text

    def never(*args, **kwargs):
        raise AssertionError("a pipeline ran although DALI is unavailable")

    monkeypatch.setattr(broken.pool, "run", never)
    got = decode_row(small["mp4"], None, broken)
    assert (got.decoder, got.fallback) == ("pyav", "dali_unavailable")
    np.testing.assert_array_equal(got.frames, decode_row(small["mp4"], None).frames)


def test_failures_in_a_row_probe_again(small, monkeypatch):
    flaky = dv.DaliBackend("cpu", 1)
    probes: list[int] = []
    monkeypatch.setattr(flaky.pool, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("decoder lost")))
    monkeypatch.setattr(flaky.pool, "probe", lambda: probes.append(1) or "RuntimeError: decoder lost")
    for _ in range(dv.PROBE_AFTER_FAILURES - 1):
        assert decode_row(small["mp4"], None, flaky).fallback == "dali_error"
    assert probes == [] and flaky.unavailable is None  # one bad file is one failure, not a verdict
    assert decode_row(small["mp4"], None, flaky).fallback == "dali_error"
    assert probes == [1] and flaky.unavailable == "RuntimeError: decoder lost"
    assert decode_row(small["mp4"], None, flaky).fallback == "dali_unavailable"


# --------------------------------------------------------------------------- timelines: runs of whole groups


def _scan(idr: list[bool], order: list[int] | None = None) -> FrameScan:
    n = len(idr)
    decode = np.asarray(order if order is not None else range(n), np.int64)
    times = np.arange(n, dtype=np.float64)
    return FrameScan(times, np.ones(n, bool), "h264", "MP4", 320, 240, decode, np.asarray(idr, bool)[decode])


def test_runs_cut_at_idr_pictures_within_the_budget():
    idr = [i % 10 == 0 for i in range(40)]  # four groups of ten
    runs = dv.plan_runs(_scan(idr), np.array([1, 3, 12, 14, 25, 26, 27, 39]), max_frames=4)
    assert [(r.first, r.stop, r.frames.tolist(), r.base) for r in runs] == [
        (0, 20, [1, 3, 12, 14], 0),
        (20, 40, [25, 26, 27, 39], 20),
    ]
    # one group may ask for more than the budget (up to DALI_MAX_RUN_FACTOR times), never more
    assert len(dv.plan_runs(_scan(idr), np.arange(0, 10), max_frames=4)) == 1
    assert dv.plan_runs(_scan(idr), np.arange(0, 40), max_frames=2) is None
    # a stream without IDR pictures after the first is one group, from the start
    assert [(r.first, r.stop) for r in dv.plan_runs(_scan([True] + [False] * 39), np.array([5, 30]), 64)] == [(0, 40)]


def test_runs_refuse_a_stream_shown_out_of_group_order():
    # frame 3 (shown before the IDR at 4) is decoded after it: a segment would not hold it
    assert dv.plan_runs(_scan([True, False, False, False, True, False], [0, 1, 2, 4, 3, 5]), np.array([3]), 8) is None


@pytest.fixture(scope="module")
def long_clip() -> bytes:
    """12 s at 10 fps, 320x240, an IDR every 25 frames, a 48 kHz tone: several groups of pictures."""
    return testmedia.mp4(
        width=320, height=240, fps=10, seconds=12.0, audio=testmedia.tone(330, 12.0, 48_000), audio_rate=48_000,
        video_bitrate=300_000, gop=25,
    )  # fmt: skip


def test_a_timeline_decodes_in_runs_with_the_frames_of_one_pass(long_clip, backend, monkeypatch):
    """Many runs (a small budget) give every slot the very frame one whole-file run gives, and the audio."""
    times = np.sort(np.random.default_rng(0).uniform(0, 12, 200))
    whole = dict(
        (slot, rgb)
        for slot, rgb, _ in backend.open(long_clip, want_audio=True, limits=DEFAULT_LIMITS, cancel=None).sample(times)
    )
    monkeypatch.setattr(dv, "DALI_RUN_BYTES", 16 * 320 * 240 * 3)  # 16 frames a run
    source = backend.open(long_clip, want_audio=True, limits=DEFAULT_LIMITS, cancel=None)
    runs = dv.plan_runs(source.pyav.scan_frames(), source.pyav.scan_frames().select(times), 16)
    assert len(runs) > 3
    got = list(source.sample(times, qa_slots=[5, 150]))
    assert source.fallback is None and sorted(s for s, _, _ in got) == list(range(times.size))
    for slot, rgb, qa_rgb in got:
        np.testing.assert_array_equal(rgb, whole[slot])
        assert (qa_rgb is not None) == (slot in (5, 150))
    np.testing.assert_array_equal(source.audio, decode_video(long_clip).audio)


def test_a_run_that_fails_midway_goes_on_with_pyav(long_clip, backend, monkeypatch):
    monkeypatch.setattr(dv, "DALI_RUN_BYTES", 16 * 320 * 240 * 3)
    real_run, calls = backend.pool.run, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("NVDEC lost")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(backend.pool, "run", second_fails)
    times = np.linspace(0.05, 11.95, 60)
    source = backend.open(long_clip, want_audio=True, limits=DEFAULT_LIMITS, cancel=None)
    got = dict((s, rgb) for s, rgb, _ in source.sample(times))
    pyav = dict((s, rgb) for s, rgb, _ in VideoDecoder(long_clip).sample(times))
    assert source.fallback == "dali_error" and sorted(got) == list(range(60))
    late = [s for s in got if times[s] > 8]  # served by PyAV after the failure: PyAV's own frames
    assert late and all(np.array_equal(got[s], pyav[s]) for s in late)
    assert source.audio is not None


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def parity_clips() -> dict[str, bytes]:
    """The generated RAVDESS-like 1280x720 H.264 clip (1 s, ~8 Mbit/s) and its AVI/MKV remuxes."""
    base = testmedia.mp4(seconds=1.0, audio=testmedia.speech(rate=48_000)[:48_000], audio_rate=48_000)
    return {"mp4": base, "avi": testmedia.remux(base, "avi"), "mkv": testmedia.remux(base, "matroska")}


@pytest.fixture(scope="module")
def references(reference, demo_repository: Path) -> tuple[ReferencePipeline, ReferencePipeline]:
    """The session's PyAV reference, and the same repository with the cpu_dali profile's decoder."""
    return reference, ReferencePipeline(demo_repository, video_decoder="dali_cpu")


def test_parity_720p_encoder_input_and_probabilities(parity_clips, references):
    pyav, dali = references
    for name, data in parity_clips.items():
        fp, fd = pyav.row(data, None), dali.row(data, None)
        d = np.abs(fp.frames - fd.host_frames())
        mean_tol, max_tol = (PARITY_AVI_MEAN, PARITY_AVI_MAX) if name == "avi" else (PARITY_MEAN, PARITY_MAX)
        assert d.mean() <= mean_tol and d.max() <= max_tol, (name, d.mean(), d.max())
        pp, pd = pyav.score_rows([fp])[0][0], dali.score_rows([fd])[0][0]
        fd.release()
        assert np.abs(pp - pd).max() <= PARITY_DP and pp.argmax() == pd.argmax(), (name, pp, pd)


@pytest.fixture(scope="module")
def timeline_clip() -> bytes:
    """3 s of the 720p clip with an IDR every second: a timeline of several windows and groups."""
    return testmedia.mp4(seconds=3.0, audio=testmedia.speech(rate=48_000)[: 3 * 48_000], audio_rate=48_000, gop=30)


def test_parity_720p_timeline(timeline_clip, references, monkeypatch):
    """A timeline decoded by DALI (in several runs): every window's probabilities, and the clip-level
    result, within the clip path's tolerance of PyAV's."""
    pyav, dali = references
    monkeypatch.setattr(dv, "DALI_RUN_BYTES", 32 * 1280 * 720 * 3)  # 32 frames a run: several runs
    a = timeline_local(pyav, timeline_clip, None, 1.0, 0.5)
    b = timeline_local(dali, timeline_clip, None, 1.0, 0.5)
    assert len(a["segments"]) == len(b["segments"]) >= 5
    for sa, sb in zip(a["segments"] + [a], b["segments"] + [b], strict=True):
        pa, pb = np.array([sa[k] for k in C.LABELS]), np.array([sb[k] for k in C.LABELS])
        assert np.abs(pa - pb).max() <= PARITY_DP and pa.argmax() == pb.argmax(), (sa, sb)


# --------------------------------------------------------------------------- the real tritonserver


def _triton_counters(port: int, family: str) -> dict[tuple[str, ...], int]:
    """One family's samples on Triton's metrics port: (model, then decoder and fallback, or stage) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[tuple[str, ...], int] = {}
    for line in text.splitlines():
        if line.startswith(family + "{"):
            labels, value = line[len(family) + 1 :].rsplit("} ", 1)
            pairs = {k: v.strip('"') for k, v in (item.split("=", 1) for item in labels.split(","))}
            names = ("model", "stage") if "stage" in pairs else ("model", "decoder", "fallback")
            out[tuple(pairs[n] for n in names)] = int(float(value))
    return out


@pytest.mark.integration
def test_cpu_dali_profile_serves_and_falls_back(
    demo_repository: Path, tmp_path: Path, small, references, timeline_clip
):
    """cpu_dali answers as the DALI reference for H.264 in MP4/AVI/MKV (and so not as PyAV would), and
    as the PyAV reference for FLV and MPEG-4 Part 2 AVI: every request gets its 200. Its timelines are
    decoded by DALI too, and match the cpu profile within the clip path's tolerance."""
    pyav, dali = references
    handle = start_triton(demo_repository, tmp_path / "tritonserver.log", profile="cpu_dali")
    try:
        got = timeline_grpc(handle.grpc_url, timeline_clip, None, 1.0, 0.5)
        want_dali = timeline_local(dali, timeline_clip, None, 1.0, 0.5)
        want_pyav = timeline_local(pyav, timeline_clip, None, 1.0, 0.5)
        assert len(got["segments"]) == len(want_dali["segments"]) >= 5
        for g, d, p in zip(
            got["segments"] + [got],
            want_dali["segments"] + [want_dali],
            want_pyav["segments"] + [want_pyav],
            strict=True,
        ):
            pg, pd, pp = (np.array([x[k] for k in C.LABELS]) for x in (g, d, p))
            np.testing.assert_allclose(pg, pd, atol=1e-4, rtol=0)  # DALI decoded it ...
            assert np.abs(pg - pp).max() <= PARITY_DP  # ... within the clip path's tolerance of the cpu profile
        assert (
            max(abs(d[k] - p[k]) for d, p in zip(want_dali["segments"], want_pyav["segments"]) for k in C.LABELS) > 1e-5
        )
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
        # Triton's metrics port counts every decode by decoder and fallback reason, per model
        decodes = _triton_counters(handle.metrics_port, "fusion_emotion_decodes_total")
        assert decodes == {
            ("preprocess", "dali_cpu", "none"): 4,  # MP4, AVI, MKV over gRPC, MKV over HTTP
            ("preprocess", "pyav", "container"): 2,  # FLV: DALI cannot demux it
            ("preprocess", "pyav", "codec"): 2,  # MPEG-4 Part 2 AVI: not on DALI's CPU variant
            ("fusion_emotion_timeline", "dali_cpu", "none"): 1,
        }, decodes
        stages = _triton_counters(handle.metrics_port, "fusion_emotion_stage_seconds_count")
        assert stages[("preprocess", "decode")] == stages[("preprocess", "qa")] == 8
        assert stages[("fusion_emotion_timeline", "timeline")] == 1
    finally:
        handle.stop()
