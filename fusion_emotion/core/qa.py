"""Quality flags that travel with every prediction.

Pure numpy/OpenCV functions (the face detector dominates their cost: see the
README's "video_face_detection_confidence") computed on what the decoders produce, so a client can tell a confident
answer on good media from a guess on clipped, silent, blurred or face-less
media. Every flag is a float in [0, 1]; NaN means "not available" (the modality
is absent) and becomes JSON null at the clients. the README ("Quality flags") documents
the same formulas for users.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import numpy as np

from fusion_emotion import contract as C

log = logging.getLogger(__name__)

# --- audio ------------------------------------------------------------------------
CLIP_THRESHOLD = 0.99
"""|x| at or above this share of full scale counts as clipped (int16: |x| >= 32440)."""

SILENCE_FRAME_S = 0.025
SILENCE_DBFS = -40.0
"""A 25 ms frame whose RMS level is below -40 dBFS (RMS < 0.01 of full scale) is silent."""

# --- video ------------------------------------------------------------------------
BLUR_REF_VARIANCE = 100.0
"""Variance of the Laplacian at which blur_level is 0.5 (the classic "blurry" threshold)."""

FACE_FRAMES = 2
"""Frames the face detector examines (evenly spaced over the clip): 2 found as many faces as 4 at 62 % of the CPU
(perf/face_flag.py, README "video_face_detection_confidence")."""
FACE_WINDOW = 20
"""``haarcascade_frontalface_alt2``'s native window (px, its XML's width/height): the smallest face it finds."""
FACE_DETECT_HEIGHT = 300
"""Frames are scaled down to at most this height before detection."""
FACE_MIN_FRACTION = FACE_WINDOW / FACE_DETECT_HEIGHT
"""Smallest face found, as a share of the frame height (brow to chin, the detector's box): 6.7 %."""
FACE_COARSE_FRACTION = 0.25
"""First pass: faces of at least a quarter of the frame height (head-and-shoulders footage, webcams, RAVDESS-like
clips). Scanning only those scales costs about a tenth of the full pyramid; when it finds nothing, the full
search down to FACE_MIN_FRACTION runs as it always did (perf/face_flag.py)."""
FACE_NEAR_SIZE = 0.6
"""After the first pass finds faces, the search goes on down to 60 % of the smallest one's size."""
FACE_SCALE_FACTOR = 1.1
FACE_MIN_NEIGHBORS = 3
FACE_SUPPORT_SCALE = 2.5
"""Per-frame score ``1 - exp(-n / 2.5)``, ``n`` = overlapping windows behind the best face (>= 4, so >= 0.80)."""

# --- overall ----------------------------------------------------------------------
CLIP_TOLERANCE = 0.1
"""Clipping ratio at which the audio counts as unusable for overall_confidence."""

FACE_CASCADE = "haarcascade_frontalface_alt2.xml"
"""Chosen over ``_default`` and ``_alt`` on measured recall, false positives, count and cost (perf/face_flag.py)."""
_cascades = threading.local()  # name -> classifier, per thread
_cascade_lock = threading.Lock()


def _finite(x: float | None) -> bool:
    return x is not None and not math.isnan(float(x))


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


# --------------------------------------------------------------------------- audio


def clipping_ratio(samples: np.ndarray) -> float:
    """Share of samples at (or next to) full scale: ``mean(|x| >= 0.99)``.

    ``samples`` is float32 [channels, n] (or [n]) with full scale 1.0, as
    received, before any resampling (a resampler's low-pass would smear the
    flat tops away). All channels count. Clean speech gives 0; anything above
    about 0.001 is audible distortion. Empty input gives 0.
    """
    x = np.asarray(samples)
    if x.size == 0:
        return 0.0
    return _clip01(float(np.count_nonzero(np.abs(x) >= CLIP_THRESHOLD)) / x.size)


def silence_ratio(wave: np.ndarray, rate: int) -> float:
    """Share of 25 ms frames whose RMS level is below -40 dBFS.

    ``wave`` is mono float32 [n] (full scale 1.0) at its native ``rate``; no
    resampling is needed since the frame length follows the rate. Frames do
    not overlap; the trailing partial frame is ignored unless the signal is
    shorter than one frame (then the whole signal is one frame). Level in dBFS
    is ``20*log10(rms)`` (a full-scale square wave is 0 dBFS, a full-scale sine
    -3 dBFS), so the threshold is RMS < 0.01. Empty input gives 1.
    """
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return 1.0
    frame = max(1, int(round(SILENCE_FRAME_S * rate)))
    count = x.size // frame
    if count == 0:
        frames = x[None, :]
    else:
        frames = x[: count * frame].reshape(count, frame)
    mean_sq = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frames.shape[1]
    threshold = (10.0 ** (SILENCE_DBFS / 20.0)) ** 2
    return _clip01(float(np.count_nonzero(mean_sq < threshold)) / frames.shape[0])


# --------------------------------------------------------------------------- video


def _gray(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [T, H, W, 3] -> float32 luma [T, H, W] (BT.601 weights, as cv2.cvtColor).

    Element-wise, not ``np.tensordot``: that is a BLAS call, and OpenBLAS's idle worker then spins for a
    while after it returns: ~60 ms CPU per request for ~1 ms of work when a request ran alone (the stubs
    also cap BLAS at one thread: fusion_emotion.server.blas).
    """
    f = np.asarray(frames, dtype=np.float32)
    return f[..., 0] * np.float32(0.299) + f[..., 1] * np.float32(0.587) + f[..., 2] * np.float32(0.114)


def laplacian_variance(frames: np.ndarray) -> np.ndarray:
    """Per-frame variance of the 4-neighbour Laplacian of the grayscale frame (0..255 scale)."""
    g = _gray(np.asarray(frames))
    lap = g[:, 1:-1, :-2] + g[:, 1:-1, 2:] + g[:, :-2, 1:-1] + g[:, 2:, 1:-1] - 4.0 * g[:, 1:-1, 1:-1]
    return lap.reshape(lap.shape[0], -1).var(axis=1, dtype=np.float64)


def blur_level(frames: np.ndarray) -> float:
    """0 = sharp ... 1 = blurred: ``1 / (1 + v / 100)`` with ``v`` the median Laplacian variance.

    ``frames`` is uint8 [T, H, W, 3] RGB as produced by ``media.decode_video``
    (128x171). ``v`` is the variance of the 4-neighbour Laplacian (kernel
    ``[[0,1,0],[1,-4,1],[0,1,0]]``, valid region) of the BT.601 grayscale frame
    on the 0..255 scale, median over frames. v = 100 (the usual "blurry" cut-off)
    maps to 0.5; detailed sharp footage (v ~ 1000) to ~0.1; featureless or
    heavily blurred footage (v < 10) to > 0.9.
    """
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.shape[0] == 0 or x.shape[1] < 3 or x.shape[2] < 3:
        return float("nan")
    v = float(np.median(laplacian_variance(x)))
    return _clip01(1.0 / (1.0 + v / BLUR_REF_VARIANCE))


def _face_cascade(name: str = FACE_CASCADE):  # -> cv2.CascadeClassifier
    """One of OpenCV's bundled Haar cascades (cv2.data.haarcascades), loaded once per thread.

    A CascadeClassifier is not safe to share: two threads detecting at once with different minimum sizes
    failed OpenCV's ``scaleIdx`` assertion (the in-process pipeline and preprocess's decode pool run QA in
    threads). The first import of cv2 is serialised too: a thread could see the module half initialised.
    """
    loaded = getattr(_cascades, "by_name", None)
    if loaded is None:
        loaded = _cascades.by_name = {}
    if name not in loaded:
        with _cascade_lock:
            import cv2  # deferred: only the face detector needs OpenCV (fusion_head's stub imports qa, never cv2)

            path = cv2.data.haarcascades + name
            cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"could not load the OpenCV face cascade {path}")
        loaded[name] = cascade
    return loaded[name]


@dataclass(frozen=True)
class FaceFrame:
    """Faces found in one examined frame: boxes (x, y, w, h in the detector's frame) and their support."""

    boxes: np.ndarray  # int [k, 4]
    support: np.ndarray  # int [k]: overlapping detector windows merged into each box (>= FACE_MIN_NEIGHBORS + 1)

    @property
    def count(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def score(self) -> float:
        """0 without a face, else ``1 - exp(-n / 2.5)`` for the best-supported face (>= 0.80)."""
        if not self.count:
            return 0.0
        return float(1.0 - math.exp(-float(self.support.max()) / FACE_SUPPORT_SCALE))


def _examined(frames: np.ndarray, max_frames: int) -> np.ndarray:
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    n = x.shape[0]
    k = min(n, max_frames)
    return x[((np.arange(k) + 0.5) * n / k).astype(np.int64)]


def _cascade_search(detector, gray: np.ndarray, scale_factor: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One detectMultiScale2 pass for faces of at least ``size`` px: boxes int [k, 4], support int [k]."""
    boxes, support = detector.detectMultiScale2(
        gray, scaleFactor=scale_factor, minNeighbors=FACE_MIN_NEIGHBORS, minSize=(size, size)
    )
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4), np.asarray(support, dtype=np.int64).reshape(-1)


def detect_faces(
    frames: np.ndarray,
    max_frames: int = FACE_FRAMES,
    *,
    detect_height: int = FACE_DETECT_HEIGHT,
    cascade: str = FACE_CASCADE,
    scale_factor: float = FACE_SCALE_FACTOR,
    min_size: int = FACE_WINDOW,
    coarse_fraction: float = FACE_COARSE_FRACTION,
) -> list[FaceFrame]:
    """Frontal faces in ``max_frames`` evenly spaced frames of uint8 RGB [T, H, W, 3].

    Each frame is converted to grayscale and scaled down (area filter, never up)
    to at most FACE_DETECT_HEIGHT = 300 px, where a face of FACE_MIN_FRACTION = 6.7 %
    of the frame height fills the cascade's native 20 px window; OpenCV's
    ``haarcascade_frontalface_alt2`` then runs with scale factor 1.1 and
    minNeighbors 3. Frames smaller than 300 px (the 128x171 model frames) are used
    as they are, so there the smallest face found is 20 px.

    Coarse to fine: each frame is first searched for faces of at least FACE_COARSE_FRACTION (25 %) of its
    height, the cheap large scales. A frame where that finds a face is searched again down to FACE_NEAR_SIZE
    (60 %) of the smallest face found, so people at similar distances are all found while a face under 60 %
    of the nearest one's size is not; a frame where it finds none gets exactly the full search.
    ``coarse_fraction`` 0 always runs the full search.
    ``detect_height``, ``cascade``, ``scale_factor``, ``min_size`` and ``coarse_fraction`` exist for the
    detector comparison (perf/face_flag.py).
    """
    detector = _face_cascade(cascade)  # first: it imports cv2 under its lock
    import cv2  # deferred, see _face_cascade

    out: list[FaceFrame] = []
    for frame in _examined(frames, max_frames):
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        if h > detect_height:
            gray = cv2.resize(gray, (max(1, round(w * detect_height / h)), detect_height), interpolation=cv2.INTER_AREA)

        coarse = round(gray.shape[0] * coarse_fraction)
        boxes, support = _cascade_search(detector, gray, scale_factor, max(coarse, min_size))
        if coarse > min_size:
            # found large faces: search again down to FACE_NEAR_SIZE of the smallest (a second person at a
            # similar distance); found none: the full search
            floor = max(min_size, round(FACE_NEAR_SIZE * int(boxes[:, 2].min()))) if boxes.shape[0] else min_size
            if floor < coarse:  # else the first pass already covered every size down to the floor
                boxes, support = _cascade_search(detector, gray, scale_factor, floor)
        out.append(FaceFrame(boxes, support))
    return out


def face_confidence_of(found: list[FaceFrame]) -> float:
    """Mean per-frame score over the examined frames (NaN when none were examined)."""
    if not found:
        return float("nan")
    return _clip01(float(np.mean([f.score for f in found])))


def face_count_of(found: list[FaceFrame]) -> int:
    """Faces in the clip: the median over examined frames of the faces found per frame (rounded down)."""
    if not found:
        return 0
    return int(np.floor(np.median([f.count for f in found])))


def face_confidence(frames: np.ndarray) -> float:
    """How clearly a frontal face is seen: mean over FACE_FRAMES (2) examined frames of the per-frame score.

    Per frame, 0 when no face is found, else ``1 - exp(-n / 2.5)`` with ``n`` the
    number of overlapping detector windows merged into the best face (at least 4,
    so a found face scores at least 0.80; larger and clearer faces gather more
    windows and approach 1). ``frames`` are best the decoder's ``qa_frames``
    (height up to 360 px); the 128x171 model frames work too, but there faces
    under 20 px (16 % of the height) are not found. See :func:`detect_faces`.
    Frontal face of >= 10 % of the frame height throughout -> >= 0.8; no face,
    noise, a blank wall -> 0; faces in profile or under 6.7 % of the height -> 0.
    """
    return face_confidence_of(detect_faces(frames))


def face_count(frames: np.ndarray) -> int:
    """How many frontal faces the clip shows (median over the examined frames); 0 for none."""
    return face_count_of(detect_faces(frames))


# --------------------------------------------------------------------------- fusion


def _as_distribution(p: np.ndarray) -> np.ndarray | None:
    q = np.asarray(p, dtype=np.float64).reshape(-1)
    if q.size == 0 or not np.all(np.isfinite(q)):
        return None
    q = np.clip(q, 0.0, None)
    s = q.sum()
    return q / s if s > 0 else None


def consistency(p_video: np.ndarray, p_audio: np.ndarray) -> float:
    """``1 - JSD(p_video, p_audio)`` with the Jensen-Shannon divergence in bits (so in [0, 1]).

    1: the two single-modality predictions agree exactly; 0: they put their
    mass on disjoint classes. Inputs are renormalised to sum 1; NaN when either
    is missing (None, non-finite or all zero) or the lengths differ.
    """
    if p_video is None or p_audio is None:
        return float("nan")
    p, q = _as_distribution(p_video), _as_distribution(p_audio)
    if p is None or q is None or p.shape != q.shape:
        return float("nan")
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    jsd = 0.5 * kl(p) + 0.5 * kl(q)
    return _clip01(1.0 - jsd)


def overall_confidence(p_fused: np.ndarray, media_qa: np.ndarray, consistency: float = float("nan")) -> float:
    """The fused top-class probability tempered by media quality and modality agreement.

    ``overall = max(p_fused) * Q_media * K`` where

    * audio quality ``Qa = (1 - min(1, clipping / 0.1)) * min(1, (1 - silence) / 0.5)``:
      10 % clipped samples make the audio worthless; up to half silence (normal
      for a short utterance) costs nothing, an all-silent track gives 0;
    * video quality ``Qv = face * min(1, (1 - blur) / 0.5)``: no face gives 0,
      blur up to 0.5 costs nothing;
    * ``Q_media`` is the mean of ``Qa`` and ``Qv`` over the modalities present
      (a flag that is NaN is left out of its product; a modality with all flags
      NaN is left out of the mean; no flags at all -> 1);
    * ``K = consistency`` when available (both modalities present), else 1.

    ``media_qa`` is ordered as ``contract.MEDIA_QA_NAMES``. NaN if ``p_fused`` is
    not a finite probability vector.
    """
    p = _as_distribution(p_fused)
    if p is None:
        return float("nan")
    clip, sil, face, blur = (
        float(v) for v in np.asarray(media_qa, dtype=np.float64).reshape(-1)[: len(C.MEDIA_QA_NAMES)]
    )

    qualities: list[float] = []
    audio_terms = []
    if _finite(clip):
        audio_terms.append(1.0 - min(1.0, clip / CLIP_TOLERANCE))
    if _finite(sil):
        audio_terms.append(min(1.0, (1.0 - sil) / 0.5))
    if audio_terms:
        qualities.append(float(np.prod(audio_terms)))
    video_terms = []
    if _finite(face):
        video_terms.append(face)
    if _finite(blur):
        video_terms.append(min(1.0, (1.0 - blur) / 0.5))
    if video_terms:
        qualities.append(float(np.prod(video_terms)))
    q_media = float(np.mean(qualities)) if qualities else 1.0
    k = float(consistency) if _finite(consistency) else 1.0
    return _clip01(float(p.max()) * _clip01(q_media) * _clip01(k))


def media_qa(
    video_frames: np.ndarray | None,
    audio_native: np.ndarray | None,
    audio_rate: int | None,
    qa_frames: np.ndarray | None = None,
) -> np.ndarray:
    """The four media flags, float32 [4] in ``contract.MEDIA_QA_NAMES`` order.

    ``video_frames``: uint8 [T, 128, 171, 3] from ``media.decode_video`` (None if
    no video); ``audio_native``: float32 [channels, n] as decoded, at its native
    ``audio_rate`` (None if no audio); ``qa_frames``: the decoder's uint8 RGB
    [4, H, W, 3] frames for the face detector (height up to 360 px), used for the
    face flag when given, else ``video_frames`` are. Blur is always measured on
    ``video_frames`` (its scale is calibrated there). Clipping counts every channel;
    silence uses the channel mean at the native rate. Flags of an absent modality are NaN.
    """
    out = np.full(len(C.MEDIA_QA_NAMES), np.nan, dtype=np.float32)
    if audio_native is not None and audio_rate:
        a = np.asarray(audio_native, dtype=np.float32)
        if a.ndim == 1:
            a = a[None]
        if a.size:
            mono = a.mean(axis=0) if a.shape[0] > 1 else a[0]
            out[0] = clipping_ratio(a)
            out[1] = silence_ratio(mono, int(audio_rate))
    if video_frames is not None and np.asarray(video_frames).size:
        face_input = qa_frames if qa_frames is not None and np.asarray(qa_frames).size else video_frames
        out[2] = face_confidence(face_input)
        out[3] = blur_level(video_frames)
    return out
