"""Deterministic test frames: a real face (scikit-image's astronaut) moving through the picture, noise,
gradients, blur, and the face-flag scenes with a face of known size (or none) for the QA flags' ground truth.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import cv2
import numpy as np

FrameKind = Literal["face", "noise", "gradient", "index"]


def face_image() -> np.ndarray:
    """scikit-image's bundled astronaut photo (a real frontal face), uint8 RGB 512x512."""
    from skimage import data  # optional: [dev] (scikit-image ships the photo)

    return np.ascontiguousarray(data.astronaut())


def video_frames(
    width: int,
    height: int,
    seconds: float,
    fps: float,
    kind: FrameKind = "face",
    seed: int = 0,
    blur_sigma: float = 0.0,
) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames [height, width, 3].

    ``face``: the astronaut photo framed head-and-shoulders (face about a third
    of the frame height) with a slow pan and zoom, so consecutive frames differ
    as in a real clip. ``noise``: seeded uniform noise
    (no face, maximal sharpness). ``gradient``: a moving colour ramp.
    ``index``: flat grey whose level encodes the frame index (``16 + 2 * i``,
    saturating at 235), used to check which frames a decoder sampled.
    ``blur_sigma`` > 0 applies a Gaussian blur (sigma in pixels of this frame size).
    """
    count = max(1, int(round(seconds * fps)))
    rng = np.random.default_rng(seed)
    face = face_image() if kind == "face" else None
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) if kind == "gradient" else (None, None)
    for i in range(count):
        progress = i / max(1, count - 1)
        if kind == "face":
            assert face is not None
            m = _face_transform(width, height, progress)
            frame = cv2.warpAffine(face, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        elif kind == "noise":
            frame = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        elif kind == "gradient":
            assert xx is not None and yy is not None
            shift = 255.0 * progress
            r = (xx / max(1, width - 1) * 255.0 + shift) % 256.0
            g = yy / max(1, height - 1) * 255.0
            b = np.full_like(r, 128.0 + 100.0 * np.sin(2.0 * np.pi * progress))
            frame = np.stack([r, g, b], axis=-1).astype(np.uint8)
        elif kind == "index":
            frame = np.full((height, width, 3), min(235, 16 + 2 * i), dtype=np.uint8)
        else:
            raise ValueError(f"unknown frame kind {kind!r}")
        if blur_sigma > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), sigmaX=blur_sigma, sigmaY=blur_sigma)
        yield np.ascontiguousarray(frame)


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blur uint8 frames [..., H, W, 3] (sigma in pixels): a soft copy of a sharp clip."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        return cv2.GaussianBlur(arr, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigmaX=sigma, sigmaY=sigma) for f in arr])


# Head-and-shoulders framing of the astronaut photo, like the emotion data sets:
# the face (Haar box ~95 px at x 177..272, y 66..161 of the 512 px photo) spans
# about a third of the frame height.
_FACE_CENTER_XY = (224.0, 150.0)
_FACE_VIEW_H = 300.0


def _face_transform(width: int, height: int, progress: float) -> np.ndarray:
    """Affine map photo -> frame at ``progress`` in [0, 1]: slow zoom-in and a gentle pan."""
    zoom = 1.0 + 0.08 * progress
    scale = zoom * height / _FACE_VIEW_H
    cx = _FACE_CENTER_XY[0] + 12.0 * np.sin(2.0 * np.pi * progress)
    cy = _FACE_CENTER_XY[1] + 8.0 * progress
    return np.array([[scale, 0.0, width / 2.0 - scale * cx], [0.0, scale, height / 2.0 - scale * cy]], dtype=np.float64)


# --------------------------------------------------------------------------- face-flag scenes

SceneKind = Literal["face", "no_face", "noise", "wall", "texture"]

# The astronaut's frontal face in the 512 px photo: the box OpenCV's Haar cascades
# put on it (x 175..272, y 66..163), brow to chin. "Face height" below is this box.
_FACE_BOX = (175.0, 66.0, 97.0, 97.0)  # x, y, w, h
QA_MAX_HEIGHT = 360
"""Height the face detector's frames are scaled to at most (media.decode_video's ``qa_frames``)."""


def _wall(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A plain painted wall: flat colour, a soft vertical light gradient and sensor noise."""
    base = rng.uniform(90, 200, size=3)
    light = np.linspace(0.85, 1.1, height, dtype=np.float32)[:, None, None]
    frame = np.broadcast_to(base.astype(np.float32), (height, width, 3)) * light
    noise = cv2.GaussianBlur(rng.normal(0, 4.0, size=(height, width, 3)).astype(np.float32), (0, 0), 1.0)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


def face_scene(
    width: int,
    height: int,
    face_frac: float = 0.15,
    *,
    kind: SceneKind = "face",
    centers: Sequence[tuple[float, float]] = ((0.5, 0.45),),
    seed: int = 0,
) -> np.ndarray:
    """One uint8 RGB frame [height, width, 3] with known ground truth for the face flag.

    ``face``: the astronaut photo scaled so its frontal face (brow to chin, the
    detector's box) is ``face_frac`` of the frame height, pasted on a plain wall
    once per entry of ``centers`` (face centres as fractions of width and height),
    as a webcam or interview frame with the speaker further away. Negatives: ``no_face`` (a
    face-less photo: scikit-image's rocket scene, resized to fill the frame),
    ``noise`` (uniform noise), ``wall`` (a blank wall), ``texture`` (a textured
    non-face: scikit-image's brick and gravel tiled over the frame).
    """
    from skimage import data  # optional: [dev] (scikit-image ships the photo)

    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if kind == "wall":
        return _wall(width, height, rng)
    if kind == "no_face":
        return np.ascontiguousarray(cv2.resize(data.rocket(), (width, height), interpolation=cv2.INTER_AREA))
    if kind == "texture":
        tile = np.concatenate([data.brick(), data.gravel()], axis=1)
        reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]))
        gray = np.tile(tile, reps)[:height, :width]
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if kind != "face":
        raise ValueError(f"unknown scene kind {kind!r}")
    frame = _wall(width, height, rng)
    x, y, w, h = _FACE_BOX
    scale = face_frac * height / h
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    photo = face_image()
    for fx, fy in centers:
        cx, cy = fx * width, fy * height
        m = np.array([[scale, 0.0, cx - scale * (x + w / 2)], [0.0, scale, cy - scale * (y + h / 2)]])
        cv2.warpAffine(photo, m, (width, height), dst=frame, flags=interp, borderMode=cv2.BORDER_TRANSPARENT)
    return frame


def qa_frames(frames: np.ndarray, max_height: int = QA_MAX_HEIGHT) -> np.ndarray:
    """Frames as the face detector gets them: scaled (area filter) so the height is at most ``max_height``.

    Aspect kept, never upscaled; uint8 [T, H', W', 3] (a single [H, W, 3] frame is one-frame).
    """
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    h, w = x.shape[1:3]
    if h <= max_height:
        return np.ascontiguousarray(x)
    nh, nw = max_height, max(1, round(w * max_height / h))
    return np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA) for f in x])
