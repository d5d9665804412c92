"""Video decode with NVIDIA DALI: one pipeline definition for the GPU (NVDEC, ``device="gpu"``) and CPU.

The pipeline takes one request's container bytes from memory and the indices of the 16 frames to keep,
chosen by the very rule the PyAV path uses (:meth:`media.FrameScan.select`, :func:`media.select_frames`),
decodes only up to them (``fn.experimental.decoders.video(frames=...)``), and resizes, crops and
normalises inside the pipeline. Its outputs: the video encoder's input ``[1, 3, 16, 112, 112]`` (the
leading axis is DALI's batch of one, which is also the encoder's batch axis), the 16 frames at 128x171
uint8 (blur flag) and the face detector's four frames (``media.QA_FRAME_SLOTS``, ``media.qa_size``).

Everything PyAV does besides the frames stays PyAV's: probing under the limits, the frame scan, the audio
track, and every file DALI cannot take (FLV, MPEG-4 Part 2 and VP8 on CPU, any file DALI refuses): those
fall back to :func:`media.decode_video` per request, so this path never fails a request the CPU path serves.

DALI owns its output buffers and overwrites them on the pipeline's next run, so a pipeline is leased with
its outputs (:class:`DaliLease`) and goes back to the pool only when the caller releases the lease, after
the encoder has consumed the tensor.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core import qa
from fusion_emotion.core.features import RequestFeatures, clip_features
from fusion_emotion.core.media import (
    DEFAULT_LIMITS,
    QA_FRAME_SLOTS,
    Cancel,
    MediaLimits,
    VideoDecoder,
    crop_box,
    decode_video,
    qa_size,
)

log = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu")
# Codecs each DALI video decoder takes (FFmpeg codec names). DALI 1.53's CPU variant decodes H.264 and
# HEVC and refuses MPEG-4 Part 2 ("not supported by the CPU variant"); NVDEC (mixed) adds MPEG-4 Part 2
# and VP9 per DALI's docs (not run here: no GPU). VP8 (browser WebM) and FLV's Sorenson H.263 go to PyAV.
DALI_CODECS = {"cpu": frozenset({"h264", "hevc"}), "gpu": frozenset({"h264", "hevc", "mpeg4", "vp9"})}
# Containers DALI's demuxer reads from memory (FLV: "Could not find a valid video stream").
DALI_CONTAINERS = frozenset({"MP4", "AVI", "MKV/WebM"})

# Cubic (antialiased) resize: of DALI's filters it lands closest to swscale's area filter on the 720p clip
# (mean |diff| 0.014 normalised units vs 0.022 linear, 0.023 Lanczos) and keeps the blur flag, which is
# calibrated on the PyAV path's frames, within 0.1 % (linear: +43 %, Gaussian: +16 %). README "DALI parity".
RESIZE_INTERP = "INTERP_CUBIC"
_NORM_MEAN = [255.0 * m for m in C.KINETICS_MEAN]
_NORM_STD = [255.0 * s for s in C.KINETICS_STD]


def dali_eligible(codec: str, container: str, device: str) -> bool:
    """Whether DALI on ``device`` should try this stream (anything else goes straight to PyAV)."""
    return container in DALI_CONTAINERS and codec in DALI_CODECS[device]


def crop_position(size_hw: tuple[int, int] = C.RESIZE_HW, crop_hw: tuple[int, int] = C.CROP_HW) -> tuple[float, float]:
    """DALI's relative crop anchor (y, x) for torchvision's centre crop (:func:`media.crop_box`)."""
    top, left = crop_box(size_hw, crop_hw)
    span_y, span_x = size_hw[0] - crop_hw[0], size_hw[1] - crop_hw[1]
    return (top / span_y if span_y else 0.5), (left / span_x if span_x else 0.5)


def build_pipeline(device: str, num_threads: int = 1, device_id: int | None = None) -> Any:
    """The pipeline (built): inputs ``encoded`` uint8 bytes, ``frames`` int32 [16], ``qa_hw`` int32 [2]."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    from nvidia.dali import fn, pipeline_def, types

    pos_y, pos_x = crop_position()
    interp = getattr(types, RESIZE_INTERP)
    qa_slots = list(QA_FRAME_SLOTS)

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
        qa_hw = fn.external_source(name="qa_hw", dtype=types.FLOAT, ndim=1, device="cpu")
        decoder_device = "mixed" if device == "gpu" else "cpu"
        video = fn.experimental.decoders.video(encoded, device=decoder_device, frames=frames)  # FHWC uint8
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
        qa_video = fn.sequence_rearrange(video, new_order=qa_slots)
        qa_frames = fn.resize(qa_video, size=qa_hw, antialias=True, interp_type=interp, dtype=types.UINT8)
        return clip, small, qa_frames

    pipe = clip_pipeline()
    pipe.build()
    return pipe


@dataclass
class DaliLease:
    """A pipeline and its last outputs, held until the encoder has consumed ``clip``; then :meth:`release`."""

    clip: Any  # DALI TensorCPU/TensorGPU [1, 3, 16, 112, 112] float32, exposes __dlpack__
    small: np.ndarray  # uint8 [16, 128, 171, 3] host copy (blur flag)
    qa_frames: np.ndarray  # uint8 [4, h, w, 3] host copy (face flag)
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
        self._built = 0
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

    def run(self, data: bytes, frame_indices: np.ndarray, qa_hw: tuple[int, int]) -> DaliLease:
        """Decode ``frame_indices`` of ``data``; the caller must release the lease (even on error later)."""
        pipe = self._acquire()
        try:
            pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
            pipe.feed_input("frames", [np.ascontiguousarray(frame_indices, dtype=np.int32)])
            pipe.feed_input("qa_hw", [np.asarray(qa_hw, dtype=np.float32)])
            clip, small, qa_frames = pipe.run()
            lease = DaliLease(
                clip.as_tensor(),
                _host(small)[0],
                _host(qa_frames)[0],
                lambda: self._free.put(pipe),
            )
        except BaseException:
            self._discard(pipe)
            raise
        if tuple(lease.small.shape[:1]) != (C.NUM_FRAMES,):
            lease.release()
            raise RuntimeError(f"DALI returned {lease.small.shape[0]} frames, expected {C.NUM_FRAMES}")
        return lease

    def _discard(self, pipe: Any) -> None:
        """A pipeline that failed may hold a half-fed state: drop it and let the pool build another."""
        del pipe
        with self._lock:
            self._built -= 1


def _host(tensor_list: Any) -> np.ndarray:
    cpu = tensor_list.as_cpu() if hasattr(tensor_list, "as_cpu") else tensor_list
    return np.array(cpu.as_tensor())


@dataclass
class DaliFeatures:
    """One request's features from the DALI path; ``lease`` is None when PyAV decoded the video."""

    features: RequestFeatures
    lease: DaliLease | None
    decoder: str  # "dali" or "pyav" (which decoder served the video; "none" without video)


def decode_frames(
    data: bytes,
    pool: DaliPool,
    *,
    want_audio: bool,
    limits: MediaLimits = DEFAULT_LIMITS,
    cancel: Cancel | None = None,
) -> tuple[DaliLease, np.ndarray | None, int | None] | None:
    """DALI frames plus (PyAV) the audio track; None when DALI should not or could not take the file.

    Probing and limits are PyAV's (:class:`VideoDecoder`), so a file over a limit fails exactly as on the
    CPU path; only DALI's own refusal returns None (the caller then decodes with PyAV).
    """
    decoder = VideoDecoder(data, want_audio=want_audio, limits=limits, cancel=cancel)
    scan = decoder.scan_frames()
    if not dali_eligible(scan.codec, scan.container, pool.device):
        return None
    if scan.times.size > limits.max_frames:  # DALI would decode them all: PyAV applies its own frame rule
        return None
    indices = scan.select(decoder.clip_times())
    width, height = qa_size(scan.width, scan.height)
    try:
        lease = pool.run(data, indices, (height, width))
    except Exception as exc:  # DALI refused the file: PyAV serves it
        log.info(
            "DALI declined a %s/%s stream (%s); decoding with PyAV", scan.container, scan.codec, type(exc).__name__
        )
        return None
    try:
        audio = rate = None
        if want_audio:
            for _ in decoder.sample(np.empty(0)):  # no video target: demux the audio track only
                pass
            audio, rate = decoder.audio, decoder.sample_rate
    except BaseException:
        lease.release()
        raise
    return lease, audio, rate


def prepare_request_dali(
    video: bytes | None,
    audio: bytes | None,
    pool: DaliPool,
    limits: MediaLimits = DEFAULT_LIMITS,
    cancel: Cancel | None = None,
) -> DaliFeatures:
    """:func:`features.prepare_request` with the video decoded by DALI where it can be, PyAV otherwise.

    The returned features carry ``frames=None`` when DALI served the video: the encoder input is then
    ``lease.clip`` (release the lease once the encoder has answered). QA flags are computed from the
    lease's small host copies, as the PyAV path computes them from its own.
    """
    from fusion_emotion.core.features import prepare_request
    from fusion_emotion.core.media import decode_audio

    if video is None:
        return DaliFeatures(prepare_request(None, audio, limits, cancel=cancel), None, "none")
    native = rate = None
    if audio is not None:
        dec = decode_audio(audio, limits=limits, cancel=cancel)
        native, rate = dec.samples, dec.sample_rate
    got = decode_frames(video, pool, want_audio=audio is None, limits=limits, cancel=cancel)
    if got is None:
        vid = decode_video(video, want_audio=audio is None, limits=limits, cancel=cancel)
        if audio is None:
            native, rate = vid.audio, vid.sample_rate
        return DaliFeatures(clip_features(vid.frames, vid.qa_frames, native, rate), None, "pyav")
    lease, track, track_rate = got
    if audio is None:
        native, rate = track, track_rate
    try:
        feats = clip_features(None, None, native, rate)
        feats.media_qa = qa.media_qa(lease.small, native, rate, qa_frames=lease.qa_frames)
    except BaseException:
        lease.release()
        raise
    return DaliFeatures(feats, lease, "dali")
