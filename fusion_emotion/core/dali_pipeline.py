"""The DALI video pipeline: one definition for NVDEC (``device="gpu"``) and the CPU, its pool, and its health.

The pipeline takes one container's bytes from memory, the presentation-order indices of the frames to keep,
and which of them get a face-detector copy; it decodes (``fn.experimental.decoders.video``, ``mixed`` =
NVDEC), resizes, crops and normalises inside the pipeline. DALI owns its output buffers and overwrites them
on the pipeline's next run, so a pipeline is leased with its outputs (:class:`DaliLease`) and goes back to
the pool only when the caller releases the lease.

**Health.** A DALI without a GPU decoder (no libnvcuvid: no ``video`` driver capability, an old driver)
builds its pipelines fine and fails inside every run. :meth:`DaliPool.probe` decodes a tiny built-in H.264
clip, once at load and again after a run of consecutive failures, so such a machine is found once and
said plainly in the log, and its requests go to PyAV without a pipeline rebuilt per request.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.model_inputs import crop_box
from fusion_emotion.core.video import QA_FRAME_SLOTS

log = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu")
# Codecs each DALI video decoder takes (FFmpeg codec names). DALI 1.53's CPU variant decodes H.264 and
# HEVC and refuses MPEG-4 Part 2 ("not supported by the CPU variant"); NVDEC (mixed) adds MPEG-4 Part 2
# and VP9 per DALI's docs (not run here: no GPU). VP8 (browser WebM) and FLV's Sorenson H.263 go to PyAV.
DALI_CODECS = {"cpu": frozenset({"h264", "hevc"}), "gpu": frozenset({"h264", "hevc", "mpeg4", "vp9"})}
# Containers DALI's demuxer reads from memory (FLV: "Could not find a valid video stream"), and the muxer
# a timeline's segments are remuxed with (the same container: no bitstream conversion).
DALI_CONTAINERS = {"MP4": "mp4", "AVI": "avi", "MKV/WebM": "matroska"}
# Cubic (antialiased) resize: of DALI's filters it lands closest to swscale's area filter on the 720p clip
# (mean |diff| 0.014 normalised units vs 0.022 linear, 0.023 Lanczos) and keeps the blur flag, which is
# calibrated on the PyAV path's frames, within 0.1 % (linear: +43 %, Gaussian: +16 %).
RESIZE_INTERP = "INTERP_CUBIC"
_NORM_MEAN = [255.0 * m for m in C.KINETICS_MEAN]
_NORM_STD = [255.0 * s for s in C.KINETICS_STD]


_PROBE_CLIP_B64 = (
    "AAAAIGZ0eXBpc29tAAACAGlzb21pc28yYXZjMW1wNDEAAAAIZnJlZQAABV5tZGF0AAACmwYF//+X3EXpvebZSLeWLNgg2SPu73gyNjQgLSBjb3Jl"
    "IDE2NSAtIEguMjY0L01QRUctNCBBVkMgY29kZWMgLSBDb3B5bGVmdCAyMDAzLTIwMjUgLSBodHRwOi8vd3d3LnZpZGVvbGFuLm9yZy94MjY0Lmh0"
    "bWwgLSBvcHRpb25zOiBjYWJhYz0xIHJlZj0xIGRlYmxvY2s9MTowOjAgYW5hbHlzZT0weDM6MHgxMTMgbWU9aGV4IHN1Ym1lPTIgcHN5PTEgcHN5"
    "X3JkPTEuMDA6MC4wMCBtaXhlZF9yZWY9MCBtZV9yYW5nZT0xNiBjaHJvbWFfbWU9MSB0cmVsbGlzPTAgOHg4ZGN0PTEgY3FtPTAgZGVhZHpvbmU9"
    "MjEsMTEgZmFzdF9wc2tpcD0xIGNocm9tYV9xcF9vZmZzZXQ9MCB0aHJlYWRzPTEgbG9va2FoZWFkX3RocmVhZHM9MSBzbGljZWRfdGhyZWFkcz0w"
    "IG5yPTAgZGVjaW1hdGU9MSBpbnRlcmxhY2VkPTAgYmx1cmF5X2NvbXBhdD0wIGNvbnN0cmFpbmVkX2ludHJhPTAgYmZyYW1lcz0zIGJfcHlyYW1p"
    "ZD0yIGJfYWRhcHQ9MSBiX2JpYXM9MCBkaXJlY3Q9MSB3ZWlnaHRiPTEgb3Blbl9nb3A9MCB3ZWlnaHRwPTEga2V5aW50PTgga2V5aW50X21pbj0x"
    "IHNjZW5lY3V0PTQwIGludHJhX3JlZnJlc2g9MCByY19sb29rYWhlYWQ9OCByYz1jcmYgbWJ0cmVlPTEgY3JmPTIzLjAgcWNvbXA9MC42MCBxcG1p"
    "bj0wIHFwbWF4PTY5IHFwc3RlcD00IGlwX3JhdGlvPTEuNDAgYXE9MToxLjAwAIAAAADGZYiEADf/1nge//Q3nddz/+9wJ1PTEWeY8V9CzKu7i45R"
    "AEgj+4Y5H2548nCvMnBXkSJ2IoWUuoeemMaQNZngomkuQJQCtsnmhgfYufDtMUKSTu5AUyvFCxhCOohhGF2MupW3kiXoxC464VAuhcu79StC4Mv1"
    "He9BM2a+8HF3te6FFBwp79tDrRdoqPTRzfTQsLag0KO4mNnmqzF5qQBp4b6icd83xilWhGxrkuN9zUz0UMtk9xGm+r8rDfHrkrCOXw8uXnehAAAA"
    "MkGaIhPQegIAJgfgcId//qmVJQhuo52BFmYRonVF+PyoebCbZmw1Z6f6+paGS1wGOG3GAAAATAGeQUQr//79huvZWsGhxjkwLIvo4kGHqbAUR4C0"
    "7yXJxcw20WIxxfnl+eoQZsrqUuuRnS3TLsOucDu2M7WzQQiMW3xIxNLVXhlNlbEAAAAyQZpDE9BCB+OB+DyGf/6gzNSCnWH9xsaVNrYr2/eyYC5i"
    "dKklNQRK1SjHxN/1TVCOEvgAAAAyQZplAg8B/AggIIKgIIGFPDv//qqEgUD1anhs+unhL+1BQOTfrz8ZnlBsUF54JlGHYIEAAABDAZ6ERDf/Ebf8"
    "MsmeV6wAkY7l6I4cKC3kOvuzMoH13VRdnIAwqRYvFygZx4Nxy1AkCsX/mQLpV66+bwRFvTyuqH800QAAAF9BmoYT0OgIAWAggoh3//6p++rWqADQ"
    "oaR5HfD1hjlUTgnnkYqqbxoJxxRpaKPS5fzmRcQHjFcsdzFP2RpCnnRLeWdS9psGvhvfm7s8WSmECQmXbnuFDXWdiSLZjoOOnQAAAE1BmqcT0EIH"
    "4oH4ECG//qhQkXBvLgA/fiZ73Ke5q7uwofm0A1KhZWyfDbToa3PyPyjzbHiEEZngQDE7l+BtnUFWD0G020lkUmdJFU7icQAAA39tb292AAAAbG12"
    "aGQAAAAAAAAAAAAAAAAAAAPoAAADIAABAAABAAAAAAAAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAACAAACqXRyYWsAAABcdGtoZAAAAAMAAAAAAAAAAAAAAAEAAAAAAAADIAAAAAAAAAAAAAAAAAAAAAAAAQAAAAAAAAAA"
    "AAAAAAAAAAEAAAAAAAAAAAAAAAAAAEAAAAAAgAAAAGAAAAAAACRlZHRzAAAAHGVsc3QAAAAAAAAAAQAAAyAAAAgAAAEAAAAAAiFtZGlhAAAAIG1k"
    "aGQAAAAAAAAAAAAAAAAAACgAAAAkAFXEAAAAAAAtaGRscgAAAAAAAAAAdmlkZQAAAAAAAAAAAAAAAFZpZGVvSGFuZGxlcgAAAAHMbWluZgAAABR2"
    "bWhkAAAAAQAAAAAAAAAAAAAAJGRpbmYAAAAcZHJlZgAAAAAAAAABAAAADHVybCAAAAABAAABjHN0YmwAAACsc3RzZAAAAAAAAAABAAAAnGF2YzEA"
    "AAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAgABgAEgAAABIAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAY//8AAAAyYXZj"
    "QwFkAAr/4QAXZ2QACqzZQg2hAAADAAEAAAMAFA8SJZYBAARo74/L/fj4AAAAABRidHJ0AAAAAAAANVwAAAAAAAAAGHN0dHMAAAAAAAAAAQAAAAgA"
    "AAQAAAAAFHN0c3MAAAAAAAAAAQAAAAEAAABIY3R0cwAAAAAAAAAHAAAAAQAACAAAAAABAAAMAAAAAAEAAAQAAAAAAQAACAAAAAABAAAMAAAAAAEA"
    "AAQAAAAAAgAACAAAAAAcc3RzYwAAAAAAAAABAAAAAQAAAAgAAAABAAAANHN0c3oAAAAAAAAAAAAAAAgAAANpAAAANgAAAFAAAAA2AAAANgAAAEcA"
    "AABjAAAAUQAAABRzdGNvAAAAAAAAAAEAAAAwAAAAYnVkdGEAAABabWV0YQAAAAAAAAAhaGRscgAAAAAAAAAAbWRpcmFwcGwAAAAAAAAAAAAAAAAt"
    "aWxzdAAAACWpdG9vAAAAHWRhdGEAAAABAAAAAExhdmY2Mi4xMi4xMDI="
)
"""A 128x96, 8-frame H.264 MP4 (libx264, an IDR first): what :meth:`DaliPool.probe` decodes."""
PROBE_FRAMES = 8
PROBE_HW = (96, 128)


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


class PoolBusy(RuntimeError):
    """Every pipeline of the pool is leased (a non-waiting run)."""


class DaliPool:
    """A few built pipelines shared by a model's decode threads; one lease per request in flight."""

    def __init__(self, device: str, size: int = 2, device_id: int | None = None) -> None:
        self.device = device
        self._free: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self.size = max(1, int(size))
        self.device_id = device_id
        # One pipeline now: a missing DALI or GPU fails the model load loudly (a missing NVDEC only shows in
        # a run: see probe).
        self._free.put(build_pipeline(device, device_id=device_id))
        self._built = 1

    def _acquire(self, wait: bool) -> Any:
        with self._lock:
            if self._free.empty() and self._built < self.size:
                self._built += 1
                return build_pipeline(self.device, device_id=self.device_id)
        try:
            return self._free.get(block=wait)
        except queue.Empty:
            raise PoolBusy(f"all {self.size} DALI pipelines are leased") from None

    def run(
        self,
        data: bytes,
        frame_indices: np.ndarray,
        qa_hw: tuple[int, int],
        qa_order: Sequence[int] = QA_FRAME_SLOTS,
        *,
        wait: bool = True,
    ) -> DaliLease:
        """Decode ``frame_indices`` of ``data``; the caller must release the lease (even on error later).

        ``wait=False`` raises :class:`PoolBusy` at once when every pipeline is leased: a caller whose lease is
        released only after work that waits for this call (the decodes of one Triton batch, released after
        their common encoder calls) must not block on it.
        """
        pipe = self._acquire(wait)
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

    def probe(self) -> str | None:
        """Decode the built-in clip; None when DALI (on NVDEC, for ``gpu``) decoded it, else why not."""
        data = base64.b64decode(_PROBE_CLIP_B64)
        try:
            lease = self.run(data, np.arange(PROBE_FRAMES), PROBE_HW, qa_order=[0])
        except Exception as exc:  # what DALI says is the reason
            return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        try:
            if float(lease.small.mean()) < 1.0:  # decoded to black: no picture came out
                return "the probe clip decoded to black frames"
        finally:
            lease.release()
        return None

    def _discard(self, pipe: Any) -> None:
        """A pipeline that failed may hold a half-fed state: drop it and let the pool build another."""
        del pipe
        with self._lock:
            self._built -= 1


def _host(tensor_list: Any) -> np.ndarray:
    cpu = tensor_list.as_cpu() if hasattr(tensor_list, "as_cpu") else tensor_list
    return np.array(cpu.as_tensor())
