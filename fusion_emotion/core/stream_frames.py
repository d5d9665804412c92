"""A live stream's video frames: JPEG or raw RGB, decoded once on arrival to the model's size, under limits.

Each received frame is resized exactly as a decoded file frame is (``core.video.resize_frame``); the face
detector's larger copy is made only for frames a window picks (JPEG: re-decoded from the kept bytes) or on
arrival (raw RGB, which has no compressed form to keep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np

from fusion_emotion.core.video import qa_copy, resize_frame
from fusion_emotion.errors import ErrorKind, ServingError


class FrameLimits(Protocol):
    """The bounds a frame is checked against (``core.stream.StreamLimits``)."""

    max_frame_bytes: int
    max_frame_width: int
    max_frame_height: int


@dataclass
class StreamFrame:
    """One received frame: its stream time, the model's 128x171 copy, and how to get the QA copy."""

    t: float
    rgb: np.ndarray  # uint8 [128, 171, 3]: the file path's resize
    jpeg: bytes | None = None  # kept to re-decode the face detector's copy only if the frame is picked
    qa_rgb: np.ndarray | None = None  # raw RGB frames: the face detector's copy, made on arrival

    @property
    def nbytes(self) -> int:
        extra = len(self.jpeg) if self.jpeg is not None else 0
        return self.rgb.nbytes + extra + (self.qa_rgb.nbytes if self.qa_rgb is not None else 0)

    def qa_copy(self) -> np.ndarray:
        if self.qa_rgb is not None:
            return self.qa_rgb
        assert self.jpeg is not None
        return qa_copy(_decode_jpeg(self.jpeg, None))


def _check_size(width: int, height: int, limits: FrameLimits | None) -> None:
    if limits is not None and (width > limits.max_frame_width or height > limits.max_frame_height):
        raise ServingError(
            ErrorKind.TOO_LARGE,
            "frame",
            f"frame size {width}x{height} is over the {limits.max_frame_width}x{limits.max_frame_height} limit",
        )


def _decode_jpeg(data: bytes, limits: FrameLimits | None) -> av.VideoFrame:
    """One JPEG through FFmpeg's mjpeg decoder (pixel budget enforced inside the decoder)."""
    if not data:
        raise ServingError(ErrorKind.INVALID_MEDIA, "frame", "empty JPEG frame (0 bytes)")
    if limits is not None and len(data) > limits.max_frame_bytes:
        raise ServingError(
            ErrorKind.TOO_LARGE,
            "frame",
            f"JPEG frame is {len(data)} bytes, over the {limits.max_frame_bytes}-byte limit",
        )
    codec = av.CodecContext.create("mjpeg", "r")
    if limits is not None:
        codec.options = {"max_pixels": str(limits.max_frame_width * limits.max_frame_height)}
    try:
        frames = codec.decode(av.Packet(data)) + codec.decode(None)
    except av.error.ArgumentError:
        raise ServingError(ErrorKind.TOO_LARGE, "frame", "JPEG frame is over the frame-size limit") from None
    except (av.error.FFmpegError, ValueError, MemoryError, EOFError) as exc:
        raise ServingError(ErrorKind.INVALID_MEDIA, "frame", f"not a decodable JPEG ({type(exc).__name__})") from None
    if not frames:
        raise ServingError(ErrorKind.INVALID_MEDIA, "frame", "not a decodable JPEG (no picture)")
    frame = frames[0]
    _check_size(frame.width, frame.height, limits)
    return frame


def jpeg_frame(t: float, data: bytes, limits: FrameLimits | None = None) -> StreamFrame:
    """A JPEG frame decoded once on arrival to the model's size; its bytes are kept for the QA copy."""
    return StreamFrame(float(t), resize_frame(_decode_jpeg(data, limits)), jpeg=bytes(data))


def rgb_frame(t: float, rgb: np.ndarray, limits: FrameLimits | None = None) -> StreamFrame:
    """A raw RGB frame (uint8 [H, W, 3]) resized like a decoded video frame."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ServingError(
            ErrorKind.INVALID_MEDIA, "frame", f"raw frame must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}"
        )
    _check_size(arr.shape[1], arr.shape[0], limits)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
    return StreamFrame(float(t), resize_frame(frame), qa_rgb=qa_copy(frame))
