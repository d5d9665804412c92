"""Video decode with NVIDIA DALI: one pipeline definition for the GPU (NVDEC, ``device="gpu"``) and the CPU.

:class:`DaliBackend` is the ``dali_cpu`` / ``dali_gpu`` video decoder of ``core.rows``: its sources
(:class:`DaliVideo`) give the same frames, by the same rule, as the PyAV source, for file requests and
timelines alike.

* **Which frames**: everything besides decoding stays PyAV's (``core.video.VideoDecoder``): probing under the
  limits, the frame scan that picks, by the PyAV sampler's own rule, the frames DALI is asked for
  (``FrameScan.select``), and the audio track.
* **A clip** (a file request) is one pipeline run over the whole file for its 16 frames; resizing, cropping
  and normalising run inside the pipeline and the encoder input stays where DALI put it (device memory on
  NVDEC), handed on by DLPack. DALI owns its output buffers and overwrites them on the pipeline's next run,
  so the pipeline is leased with its outputs (:class:`DaliLease`) until the encoder has consumed them.
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
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.model_inputs import crop_box
from fusion_emotion.core.probe import Cancel, MediaLimits
from fusion_emotion.core.video import QA_FRAME_SLOTS, ClipFrames, FrameScan, VideoDecoder, qa_size

log = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu")
# Codecs each DALI video decoder takes (FFmpeg codec names). DALI 1.53's CPU variant decodes H.264 and
# HEVC and refuses MPEG-4 Part 2 ("not supported by the CPU variant"); NVDEC (mixed) adds MPEG-4 Part 2
# and VP9 per DALI's docs (not run here: no GPU). VP8 (browser WebM) and FLV's Sorenson H.263 go to PyAV.
DALI_CODECS = {"cpu": frozenset({"h264", "hevc"}), "gpu": frozenset({"h264", "hevc", "mpeg4", "vp9"})}
# Containers DALI's demuxer reads from memory (FLV: "Could not find a valid video stream"), and the muxer
# a timeline's segments are remuxed with (the same container: no bitstream conversion).
DALI_CONTAINERS = {"MP4": "mp4", "AVI": "avi", "MKV/WebM": "matroska"}
# Requested full-resolution frames one pipeline run may hold (a timeline segment): ~97 frames at 720p, 43 at
# 1080p. A run always takes at least one clip's worth; a group of pictures needing more than
# DALI_MAX_RUN_FACTOR times the budget cannot be cut small enough, and PyAV (which streams) decodes it.
DALI_RUN_BYTES = 256 << 20
DALI_MAX_RUN_FACTOR = 4

# Cubic (antialiased) resize: of DALI's filters it lands closest to swscale's area filter on the 720p clip
# (mean |diff| 0.014 normalised units vs 0.022 linear, 0.023 Lanczos) and keeps the blur flag, which is
# calibrated on the PyAV path's frames, within 0.1 % (linear: +43 %, Gaussian: +16 %).
RESIZE_INTERP = "INTERP_CUBIC"
_NORM_MEAN = [255.0 * m for m in C.KINETICS_MEAN]
_NORM_STD = [255.0 * s for s in C.KINETICS_STD]

# Why a DALI backend left a video to PyAV (a fixed set: these label metrics).
FALLBACK_REASONS = ("container", "codec", "frame_limit", "gop", "dali_error")


def dali_ineligible(scan: FrameScan, device: str, limits: MediaLimits) -> str | None:
    """Why DALI on ``device`` should not try this stream (a FALLBACK_REASONS entry), or None."""
    if scan.container not in DALI_CONTAINERS:
        return "container"
    if scan.codec not in DALI_CODECS[device]:
        return "codec"
    if scan.times.size > limits.max_frames:  # DALI would decode them all: PyAV applies its own frame rule
        return "frame_limit"
    return None


def crop_position(size_hw: tuple[int, int] = C.RESIZE_HW, crop_hw: tuple[int, int] = C.CROP_HW) -> tuple[float, float]:
    """DALI's relative crop anchor (y, x) for torchvision's centre crop (``model_inputs.crop_box``)."""
    top, left = crop_box(size_hw, crop_hw)
    span_y, span_x = size_hw[0] - crop_hw[0], size_hw[1] - crop_hw[1]
    return (top / span_y if span_y else 0.5), (left / span_x if span_x else 0.5)


def build_pipeline(device: str, num_threads: int = 1, device_id: int | None = None) -> Any:
    """The pipeline (built). Inputs: ``encoded`` uint8 bytes, ``frames`` int32 [F] (presentation-order
    indices), ``qa_order`` int32 [Q >= 1] (which of the F frames get a face-detector copy), ``qa_hw``.
    Outputs: the encoder input CFHW float32 [3, F, 112, 112], the 128x171 uint8 frames, the QA copies."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    from nvidia.dali import fn, pipeline_def, types  # optional: [dali]

    pos_y, pos_x = crop_position()
    interp = getattr(types, RESIZE_INTERP)

    # Synchronous, not pipelined: one request in, its outputs out; nothing is prefetched or run ahead.
    @pipeline_def(
        batch_size=1,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,
        exec_async=False,
        exec_pipelined=False,
    )
    def clip_pipeline():  # noqa: ANN202 - DALI graph
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, device="cpu")
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1, device="cpu")
        qa_order = fn.external_source(name="qa_order", dtype=types.INT32, ndim=1, device="cpu")
        qa_hw = fn.external_source(name="qa_hw", dtype=types.FLOAT, ndim=1, device="cpu")
        decoder_device = "mixed" if device == "gpu" else "cpu"
        # pad_mode "none": an index past DALI's own frame count fails the run (the caller falls back to PyAV)
        # instead of becoming a constant black frame.
        video = fn.experimental.decoders.video(encoded, device=decoder_device, frames=frames, pad_mode="none")
        small = fn.resize(video, size=list(C.RESIZE_HW), antialias=True, interp_type=interp, dtype=types.UINT8)
        clip = fn.crop_mirror_normalize(
            small,
            crop=list(C.CROP_HW),
            crop_pos_x=pos_x,
            crop_pos_y=pos_y,
            mean=_NORM_MEAN,
            std=_NORM_STD,
            dtype=types.FLOAT,
            output_layout="CFHW",
        )
        qa_video = fn.sequence_rearrange(video, new_order=qa_order)
        qa_frames = fn.resize(qa_video, size=qa_hw, antialias=True, interp_type=interp, dtype=types.UINT8)
        return clip, small, qa_frames

    pipe = clip_pipeline()
    pipe.build()
    return pipe


@dataclass
class DaliLease:
    """A pipeline and its last outputs, held until the encoder has consumed ``clip``; then :meth:`release`."""

    clip: Any  # DALI TensorCPU/TensorGPU [1, 3, F, 112, 112] float32, exposes __dlpack__
    small: np.ndarray  # uint8 [F, 128, 171, 3] host copy
    qa_frames: np.ndarray  # uint8 [Q, h, w, 3] host copy (face flag)
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def host_clip(self) -> np.ndarray:
        """A host copy of ``clip`` (tests, parity; the serving path hands ``clip`` on by DLPack)."""
        return np.array(self.clip.as_cpu() if hasattr(self.clip, "as_cpu") else self.clip, dtype=np.float32)

    def release(self) -> None:
        """Give the pipeline back (its buffers may be overwritten from now on). Idempotent."""
        release, self._release = self._release, None
        if release is not None:
            release()


class DaliPool:
    """A few built pipelines shared by a model's decode threads; one lease per request in flight."""

    def __init__(self, device: str, size: int = 2, device_id: int | None = None) -> None:
        self.device = device
        self._free: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self.size = max(1, int(size))
        self.device_id = device_id
        # One pipeline now: a missing DALI, a missing GPU or NVDEC library fails the model load loudly,
        # instead of every request quietly falling back to PyAV.
        self._free.put(build_pipeline(device, device_id=device_id))
        self._built = 1

    def _acquire(self) -> Any:
        with self._lock:
            if self._free.empty() and self._built < self.size:
                self._built += 1
                return build_pipeline(self.device, device_id=self.device_id)
        return self._free.get()

    def run(
        self, data: bytes, frame_indices: np.ndarray, qa_hw: tuple[int, int], qa_order: Sequence[int] = QA_FRAME_SLOTS
    ) -> DaliLease:
        """Decode ``frame_indices`` of ``data``; the caller must release the lease (even on error later)."""
        pipe = self._acquire()
        try:
            pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
            pipe.feed_input("frames", [np.ascontiguousarray(frame_indices, dtype=np.int32)])
            pipe.feed_input("qa_order", [np.ascontiguousarray(qa_order, dtype=np.int32)])
            pipe.feed_input("qa_hw", [np.asarray(qa_hw, dtype=np.float32)])
            clip, small, qa_frames = pipe.run()
            lease = DaliLease(clip.as_tensor(), _host(small)[0], _host(qa_frames)[0], lambda: self._free.put(pipe))
        except BaseException:
            self._discard(pipe)
            raise
        if lease.small.shape[0] != len(frame_indices):
            lease.release()
            raise RuntimeError(f"DALI returned {lease.small.shape[0]} frames, expected {len(frame_indices)}")
        return lease

    def _discard(self, pipe: Any) -> None:
        """A pipeline that failed may hold a half-fed state: drop it and let the pool build another."""
        del pipe
        with self._lock:
            self._built -= 1


def _host(tensor_list: Any) -> np.ndarray:
    cpu = tensor_list.as_cpu() if hasattr(tensor_list, "as_cpu") else tensor_list
    return np.array(cpu.as_tensor())


class DaliBackend:
    """The ``dali_cpu`` / ``dali_gpu`` video decoder (``core.rows.video_backend``)."""

    def __init__(self, device: str, pipelines: int = 2, device_id: int | None = None) -> None:
        self.name = "dali_gpu" if device == "gpu" else "dali_cpu"
        self.pool = DaliPool(device, pipelines, device_id=device_id)

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
            lease = self.backend.pool.run(self.data, scan.select(self.clip_times()), self._qa_hw(scan))
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
            lease = self.backend.pool.run(segment, run.frames - run.base, self._qa_hw(scan), qa_order)
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
