"""Video decode with NVIDIA DALI (the pipeline: ``core.dali_pipeline``) on NVDEC or the CPU, PyAV for the rest.

:class:`DaliBackend` is the ``dali_cpu`` / ``dali_gpu`` video decoder of ``core.rows``: its sources
(:class:`DaliVideo`) give the same frames, by the same rule, as the PyAV source, for file requests and
timelines alike.

* **Which frames**: everything besides decoding stays PyAV's (``core.video.VideoDecoder``): probing under the
  limits, the frame scan that picks, by the PyAV sampler's own rule, the frames DALI is asked for
  (``FrameScan.select``), and the audio track.
* **A clip** (a file request) is one pipeline run over the whole file for its 16 frames; resizing, cropping
  and normalising run inside the pipeline and the encoder input stays where DALI put it (device memory on
  NVDEC), handed on by DLPack, leased with its pipeline until the encoder has consumed it.
* **A timeline** asks for frames all over a long file. DALI's in-memory decoder seeks by decoding from the
  start (measured: the 16 frames at 60 s cost 9.4 s against 0.6 s at 0 s, 640x360 CPU), and holds every
  requested frame at full resolution, so one run per window or one run for all would cost the square of the
  length or its whole size in memory. Instead the demuxed packets are cut at IDR pictures into segments of
  whole groups of pictures (remuxed, not re-encoded), each holding at most ``DALI_RUN_BYTES`` of requested
  frames, and each segment is one run: one decode pass in all, bounded memory.
* **What DALI cannot take** (FLV, MPEG-4 Part 2 and VP8 on CPU, more frames than the frame limit, groups of
  pictures that cannot be cut small enough, any file DALI refuses) is decoded by PyAV, with the reason kept
  (:attr:`DaliVideo.fallback`), so this path never fails a request the CPU path serves. A frame index past
  DALI's own frame count is an error (``pad_mode="none"``), never a black frame.
* **A DALI that cannot decode at all** (NVDEC missing) is found at load by the pool's probe, and again
  after ``PROBE_AFTER_FAILURES`` consecutive failed runs; then every video goes to PyAV
  (``fallback="dali_unavailable"``) with no pipeline run or rebuilt per request, and the log says so once.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.dali_pipeline import DALI_CODECS, DALI_CONTAINERS, DaliLease, DaliPool, PoolBusy
from fusion_emotion.core.probe import Cancel, MediaLimits
from fusion_emotion.core.video import QA_FRAME_SLOTS, ClipFrames, FrameScan, VideoDecoder, qa_size

log = logging.getLogger(__name__)

# Requested full-resolution frames one pipeline run may hold (a timeline segment): ~97 frames at 720p, 43 at
# 1080p. A run always takes at least one clip's worth; a group of pictures needing more than
# DALI_MAX_RUN_FACTOR times the budget cannot be cut small enough, and PyAV (which streams) decodes it.
DALI_RUN_BYTES = 256 << 20
DALI_MAX_RUN_FACTOR = 4

# Why a DALI backend left a video to PyAV (a fixed set: these label metrics).
FALLBACK_REASONS = ("container", "codec", "frame_limit", "gop", "dali_busy", "dali_error", "dali_unavailable")
PROBE_AFTER_FAILURES = 3
"""Consecutive failed runs after which the backend probes DALI again (a bad file fails one run; a lost
decoder fails every run)."""


def dali_ineligible(scan: FrameScan, device: str, limits: MediaLimits) -> str | None:
    """Why DALI on ``device`` should not try this stream (a FALLBACK_REASONS entry), or None."""
    if scan.container not in DALI_CONTAINERS:
        return "container"
    if scan.codec not in DALI_CODECS[device]:
        return "codec"
    if scan.times.size > limits.max_frames:  # DALI would decode them all: PyAV applies its own frame rule
        return "frame_limit"
    return None


class DaliBackend:
    """The ``dali_cpu`` / ``dali_gpu`` video decoder (``core.rows.video_backend``), with its health."""

    def __init__(self, device: str, pipelines: int = 2, device_id: int | None = None) -> None:
        self.name = "dali_gpu" if device == "gpu" else "dali_cpu"
        # Building the pipeline fails the model load when DALI or the GPU is missing altogether.
        self.pool = DaliPool(device, pipelines, device_id=device_id)
        self._lock = threading.Lock()
        self._failures = 0
        self.unavailable: str | None = None
        self.check()

    def check(self) -> str | None:
        """Probe DALI on the built-in clip: None when it decodes; else the reason, and DALI is not used."""
        reason = self.pool.probe()
        with self._lock:
            self.unavailable, self._failures = reason, 0
        if reason is None:
            log.info("%s: decoded the built-in H.264 probe clip; videos DALI takes are decoded with it", self.name)
        else:
            log.error("%s: cannot decode the built-in H.264 probe clip (%s); every video is decoded with PyAV",
                      self.name, reason)  # fmt: skip
        return reason

    def ran(self, ok: bool) -> None:
        """Count a run's outcome; a run of failures probes DALI again."""
        with self._lock:
            self._failures = 0 if ok else self._failures + 1
            probe = self._failures >= PROBE_AFTER_FAILURES
        if probe:
            self.check()

    def run(
        self, data: bytes, frames: np.ndarray, qa_hw: tuple[int, int], qa_order: Sequence[int], *, wait: bool = True
    ) -> DaliLease:
        try:
            lease = self.pool.run(data, frames, qa_hw, qa_order, wait=wait)
        except PoolBusy:
            raise  # not DALI's failure
        except Exception:
            self.ran(False)
            raise
        self.ran(True)
        return lease

    def open(
        self, data: bytes, *, want_audio: bool, limits: MediaLimits, cancel: Cancel | None, input_name: str = "video"
    ) -> DaliVideo:
        return DaliVideo(self, data, want_audio=want_audio, limits=limits, cancel=cancel, input_name=input_name)


@dataclass(frozen=True)
class Run:
    """One pipeline run of a timeline: decode-order packets ``[first, stop)``, the frames asked of it."""

    first: int
    stop: int
    frames: np.ndarray  # presentation-order indices into the whole stream, ascending, unique
    base: int  # presentation index of the segment's first frame: a frame's index in the segment is p - base


def plan_runs(scan: FrameScan, wanted: np.ndarray, max_frames: int) -> list[Run] | None:
    """Cut the stream at IDR pictures into runs of whole groups of pictures, each asked for at most
    ``max_frames`` of the ``wanted`` frames (a single group may ask up to DALI_MAX_RUN_FACTOR times that).

    None when the stream cannot be cut so: a group asks for more, or its pictures are not shown in group
    order (then a segment's frames would not be contiguous in presentation order).
    """
    idr_by_decode = np.zeros(scan.times.size, bool)
    idr_by_decode[scan.decode_index] = scan.idr
    group_of_decode = np.cumsum(idr_by_decode)  # packets before the first IDR: group 0 (from the start)
    group = group_of_decode[scan.decode_index]  # per presentation frame
    if np.any(np.diff(group) < 0):
        return None
    wanted = np.unique(np.asarray(wanted, dtype=np.int64))
    runs: list[Run] = []
    pending: list[np.ndarray] = []
    for g in np.unique(group[wanted]):
        frames = wanted[group[wanted] == g]
        if frames.size > DALI_MAX_RUN_FACTOR * max_frames:
            return None
        if pending and sum(p.size for p in pending) + frames.size > max_frames:
            runs.append(_run(group_of_decode, group, pending, end_group=int(g)))
            pending = []
        pending.append(frames)
    if pending:
        runs.append(_run(group_of_decode, group, pending, end_group=int(group[pending[-1][-1]]) + 1))
    return runs


def _run(group_of_decode: np.ndarray, group: np.ndarray, frames: list[np.ndarray], end_group: int) -> Run:
    """The run over the groups from the first frame's up to (not including) ``end_group``."""
    g0 = int(group[frames[0][0]])
    first = int(np.searchsorted(group_of_decode, g0, side="left"))
    stop = int(np.searchsorted(group_of_decode, end_group, side="left"))
    base = int(np.searchsorted(group, g0, side="left"))
    return Run(first, stop, np.concatenate(frames), base)


def remux(packets: Sequence[av.Packet], template: av.stream.Stream, muxer: str) -> bytes:
    """Demuxed video packets into a container of their own (stream copy: no decode, no re-encode)."""
    out = io.BytesIO()
    with av.open(out, "w", format=muxer) as container:
        stream = container.add_stream_from_template(template)
        for packet in packets:
            packet.stream = stream
            container.mux(packet)
    return out.getvalue()


class DaliVideo:
    """One video through DALI where it can be, PyAV otherwise (the ``core.rows.VideoSource`` protocol).

    ``fallback`` says why PyAV decoded it (a FALLBACK_REASONS entry), None while DALI serves it.
    """

    def __init__(
        self,
        backend: DaliBackend,
        data: bytes,
        *,
        want_audio: bool,
        limits: MediaLimits,
        cancel: Cancel | None,
        input_name: str = "video",
    ) -> None:
        self.backend = backend
        self.data = data
        self.limits = limits
        self.want_audio = want_audio
        self._args = {"want_audio": want_audio, "limits": limits, "cancel": cancel, "input_name": input_name}
        self.pyav = VideoDecoder(data, **self._args)  # probing and limits exactly as on the CPU path
        self.duration_s = float(self.pyav.duration_s)
        self.start_s = self.pyav.start_s
        self.fallback: str | None = None
        self._scan: FrameScan | None = None

    @property
    def name(self) -> str:
        return "pyav" if self.fallback else self.backend.name

    @property
    def audio(self) -> np.ndarray | None:
        return self.pyav.audio

    @property
    def sample_rate(self) -> int | None:
        return self.pyav.sample_rate

    def clip_times(self, num: int = C.NUM_FRAMES) -> np.ndarray:
        return self.pyav.clip_times(num)

    def _eligible_scan(self) -> FrameScan | None:
        """The frame scan when DALI should try this video; else None, with ``fallback`` set."""
        if self.fallback is None and self._scan is None:
            if self.backend.unavailable is not None:
                self.fallback = "dali_unavailable"  # no scan, no run: nothing DALI could use
                return None
            scan = self.pyav.scan_frames()
            self.fallback = dali_ineligible(scan, self.backend.pool.device, self.limits)
            self._scan = scan
        return None if self.fallback else self._scan

    def _decline(self, reason: str, exc: BaseException | None = None) -> None:
        self.fallback = reason
        scan = self._scan
        log.info(
            "%s declined a %s/%s stream (%s%s); decoding with PyAV",
            self.backend.name,
            scan.container if scan else "?",
            scan.codec if scan else "?",
            reason,
            f": {type(exc).__name__}" if exc is not None else "",
        )

    def _qa_hw(self, scan: FrameScan) -> tuple[int, int]:
        width, height = qa_size(scan.width, scan.height)
        return height, width

    def clip(self) -> ClipFrames:
        """The clip-level sample: one pipeline run over the file; the encoder input stays DALI's."""
        scan = self._eligible_scan()
        if scan is None:
            return self._pyav_clip()
        try:
            # The clip's lease is held until the encoder has answered, after the other decodes of its Triton
            # batch: never wait for a pipeline here (a second request in the same batch would deadlock).
            lease = self.backend.run(
                self.data, scan.select(self.clip_times()), self._qa_hw(scan), QA_FRAME_SLOTS, wait=False
            )
        except PoolBusy:
            self._decline("dali_busy")
            return self._pyav_clip()
        except Exception as exc:  # DALI refused the file: PyAV serves it
            self._decline("dali_error", exc)
            return self._pyav_clip()
        try:
            if self.want_audio:
                for _ in self.pyav.sample(np.empty(0)):  # no video target: demux the audio track only
                    pass
        except BaseException:
            lease.release()
            raise
        return ClipFrames(lease.small, lease.qa_frames, lease.clip, self.backend.name, lease.release)

    def _pyav_clip(self) -> ClipFrames:
        clip = self.pyav.clip()
        clip.fallback = self.fallback
        return clip

    def sample(
        self, times: np.ndarray, qa_slots: Sequence[int] = ()
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """``VideoDecoder.sample``'s contract (every slot, in time order), decoded in runs of whole groups."""
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        scan = self._eligible_scan()
        runs = picks = None
        if scan is not None:
            picks = scan.select(times)
            frame_bytes = max(1, scan.width * scan.height * 3)
            runs = plan_runs(scan, picks, max(C.NUM_FRAMES, DALI_RUN_BYTES // frame_bytes))
            if runs is None:
                self._decline("gop")
        if scan is None or runs is None or picks is None:
            yield from self.pyav.sample(times, qa_slots)
            return
        served = np.zeros(times.size, bool)
        try:
            for slot, rgb, qa_rgb in self._runs(scan, runs, picks, set(int(s) for s in qa_slots)):
                served[slot] = True
                yield slot, rgb, qa_rgb
        except _RunFailed as failed:
            self._decline("dali_error", failed.__cause__)
            rest = np.flatnonzero(~served)
            # A fresh PyAV pass over what is left (it decodes from the start: correct, and only on failure).
            self.pyav = VideoDecoder(self.data, **self._args)
            for j, rgb, qa_rgb in self.pyav.sample(times[rest], [k for k, s in enumerate(rest) if s in qa_slots]):
                yield int(rest[j]), rgb, qa_rgb

    def _runs(
        self, scan: FrameScan, runs: list[Run], picks: np.ndarray, qa_slots: set[int]
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """One demux pass (PyAV; the audio track on the way): each run's packets remuxed and decoded by DALI."""
        muxer = DALI_CONTAINERS[scan.container]
        order = np.argsort(picks, kind="stable")  # slots in presentation order
        k = d = 0  # next run; decode-order index of the next packet
        held: list[av.Packet] = []
        for packet in self.pyav.packets():
            if packet.pts is None or packet.size == 0:
                continue  # not a frame of the scan
            if k < len(runs) and runs[k].first <= d < runs[k].stop:
                held.append(packet)
            d += 1
            if k < len(runs) and d == runs[k].stop:
                try:
                    segment = remux(held, packet.stream, muxer)
                except av.error.FFmpegError as exc:
                    raise _RunFailed from exc
                yield from self._decode_run(runs[k], segment, picks, order, qa_slots, scan)
                held, k = [], k + 1
        if k < len(runs):
            raise _RunFailed from RuntimeError(f"stream ended before run {k} of {len(runs)}")

    def _decode_run(
        self, run: Run, segment: bytes, picks: np.ndarray, order: np.ndarray, qa_slots: set[int], scan: FrameScan
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        mine = order[np.isin(picks[order], run.frames)]  # this run's slots, in presentation order
        qa_mine = [s for s in mine if int(s) in qa_slots]
        position = {int(p): i for i, p in enumerate(run.frames)}
        qa_order = [position[int(picks[s])] for s in qa_mine] or [0]
        try:
            lease = self.backend.run(segment, run.frames - run.base, self._qa_hw(scan), qa_order)
        except Exception as exc:
            raise _RunFailed from exc
        try:
            small, qa_frames = lease.small.copy(), lease.qa_frames.copy()
        finally:
            lease.release()
        qa_of = {int(s): qa_frames[i] for i, s in enumerate(qa_mine)}
        for s in mine:
            yield int(s), small[position[int(picks[s])]], qa_of.get(int(s))


class _RunFailed(Exception):
    """A DALI run failed mid-way: the slots not yet served go to PyAV."""
