"""Deterministic synthetic media for tests and demos.

The tests must exercise the real decoders on the real container formats the
service accepts (RAVDESS-like MP4, CREMA-D-like FLV, AVI, every WAV flavour)
without shipping data sets or touching the network. Everything here is built
from a bundled photo (scikit-image's astronaut, a real face), real synthetic
speech (espeak-ng) and seeded noise, so the same call always gives the same
media and the quality flags can be checked against known ground truth.

Video encoding goes through PyAV (FFmpeg); nothing is written to disk.
"""

from __future__ import annotations

import io
import logging
import shutil
import struct
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np

log = logging.getLogger(__name__)

FrameKind = Literal["face", "noise", "gradient", "index"]
SampleFormat = Literal["s16", "s24", "s32", "f32", "u8"]

DEFAULT_TEXT = "Kids are talking by the door. Dogs are sitting by the door."

# RAVDESS / CREMA-D audio sample rates.
RAVDESS_AUDIO_RATE = 48_000
CREMA_AUDIO_RATE = 44_100

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3


# --------------------------------------------------------------------------- audio


def speech(text: str = DEFAULT_TEXT, rate: int = 22050, voice: str = "en") -> np.ndarray:
    """Real synthetic speech (espeak-ng) as float32 mono at ``rate`` Hz.

    Speech, unlike tones, has the pauses, onsets and level changes that the
    silence and clipping flags are meant to see.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng); it is needed for synth.speech()")
    proc = subprocess.run([exe, "-v", voice, "--stdout", text], capture_output=True, check=False, timeout=60)
    if proc.returncode != 0 or len(proc.stdout) < 44:
        raise RuntimeError(f"espeak-ng failed (rc={proc.returncode}): {proc.stderr.decode(errors='replace')[:200]}")
    wave, native = _parse_stream_wav(proc.stdout)
    if native != rate:
        from scipy.signal import resample_poly

        g = np.gcd(native, rate)
        wave = resample_poly(wave, rate // g, native // g).astype(np.float32)
    return wave.astype(np.float32, copy=False)


def _parse_stream_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV as written to a pipe (espeak-ng leaves the size fields at 0x7ffff000)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng did not write a WAV file")
    pos = 12
    rate = channels = bits = 0
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
        elif cid == b"data":
            if bits != 16:
                raise RuntimeError(f"espeak-ng wrote {bits}-bit audio; expected 16")
            raw = data[body:]
            raw = raw[: len(raw) - len(raw) % (2 * channels)]
            pcm = np.frombuffer(raw, dtype="<i2").reshape(-1, channels).astype(np.float32) / 32768.0
            return pcm.mean(axis=1).astype(np.float32), int(rate)
        pos = body + size + (size & 1)
    raise RuntimeError("espeak-ng output has no data chunk")


def silence(seconds: float, rate: int) -> np.ndarray:
    """Digital silence (exact zeros), float32 mono."""
    return np.zeros(int(round(seconds * rate)), dtype=np.float32)


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A sine, float32 mono: a signal whose frequency and level are known exactly."""
    t = np.arange(int(round(seconds * rate)), dtype=np.float64) / rate
    return (amplitude * np.sin(2.0 * np.pi * freq * t)).astype(np.float32)


def _as_frames_by_channels(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError("samples must be [n] or [n, channels]")
    return x


def wav(samples: np.ndarray, rate: int, sample_format: SampleFormat = "s16") -> bytes:
    """A WAV file: mono ``[n]`` or ``[n, channels]`` float samples, full scale 1.0.

    Written by hand (not the ``wave`` module) so that 24-bit and IEEE-float files
    can be made too; float files carry the ``fact`` chunk the spec asks for.
    Integer formats clip to full scale, as a recorder would.
    """
    x = _as_frames_by_channels(samples)
    n, channels = x.shape
    if sample_format == "f32":
        payload = x.astype("<f4").tobytes()
        width, tag = 4, _WAVE_FORMAT_IEEE_FLOAT
    elif sample_format == "u8":
        payload = np.clip(np.round(x * 128.0 + 128.0), 0, 255).astype(np.uint8).tobytes()
        width, tag = 1, _WAVE_FORMAT_PCM
    elif sample_format == "s16":
        payload = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
        width, tag = 2, _WAVE_FORMAT_PCM
    elif sample_format == "s32":
        payload = np.clip(np.round(x * 2147483648.0), -2147483648, 2147483647).astype("<i4").tobytes()
        width, tag = 4, _WAVE_FORMAT_PCM
    elif sample_format == "s24":
        v = np.clip(np.round(x * 8388608.0), -8388608, 8388607).astype("<i4")
        payload = v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        width, tag = 3, _WAVE_FORMAT_PCM
    else:
        raise ValueError(f"unknown sample format {sample_format!r}")
    return _wav_bytes(payload, rate, channels, width, tag, n)


def _wav_bytes(payload: bytes, rate: int, channels: int, width: int, tag: int, nframes: int) -> bytes:
    block = channels * width
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, width * 8)
    chunks = [b"fmt ", struct.pack("<I", len(fmt)), fmt]
    if tag == _WAVE_FORMAT_IEEE_FLOAT:
        chunks += [b"fact", struct.pack("<II", 4, nframes)]
    chunks += [b"data", struct.pack("<I", len(payload)), payload]
    if len(payload) & 1:
        chunks.append(b"\0")
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def header_only_wav(rate: int = 16_000) -> bytes:
    """A valid 44-byte 16-bit mono WAV header announcing zero samples."""
    return _wav_bytes(b"", rate, 1, 2, _WAVE_FORMAT_PCM, 0)


# --------------------------------------------------------------------------- video


def face_image() -> np.ndarray:
    """scikit-image's bundled astronaut photo (a real frontal face), uint8 RGB 512x512.

    scikit-image is a dev dependency only, hence the lazy import.
    """
    from skimage import data

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
    import cv2

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
    import cv2

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
"""Height the face detector's frames are scaled to at most (core.video.decode_video's ``qa_frames``)."""


def _wall(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A plain painted wall: flat colour, a soft vertical light gradient and sensor noise."""
    import cv2

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
    import cv2
    from skimage import data

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
    import cv2

    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    h, w = x.shape[1:3]
    if h <= max_height:
        return np.ascontiguousarray(x)
    nh, nw = max_height, max(1, round(w * max_height / h))
    return np.stack([cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA) for f in x])


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class _Container:
    """How one container is written: muxer, codecs, sample format and options."""

    fmt: str
    vcodec: str
    acodec: str
    audio_format: str
    video_options: dict[str, str] | None = None
    container_options: dict[str, str] | None = None


_MP4 = _Container("mp4", "libx264", "aac", "fltp", {"preset": "veryfast"})
_FLV = _Container("flv", "flv", "libmp3lame", "fltp")
_AVI = _Container("avi", "mpeg4", "pcm_s16le", "s16")
_MKV = _Container("matroska", "libx264", "aac", "fltp", {"preset": "veryfast"})
_WEBM = _Container("webm", "libvpx", "libopus", "flt", {"deadline": "realtime", "cpu-used": "8"})


def _encode(
    spec: _Container,
    *,
    width: int,
    height: int,
    fps: int,
    seconds: float,
    audio: np.ndarray | None,
    audio_rate: int,
    video_bitrate: int,
    kind: FrameKind,
    seed: int,
    blur_sigma: float = 0.0,
    live: bool = False,
    gop: int | None = None,
) -> bytes:
    """Mux synthetic frames and an optional mono track into ``spec``'s container, interleaved by time.

    ``live`` writes no duration and no cues (Matroska/WebM), as a browser's MediaRecorder does; ``gop``
    sets a fixed distance between key frames (no scene-cut ones).
    """
    fmt, vcodec, acodec, audio_format = spec.fmt, spec.vcodec, spec.acodec, spec.audio_format
    video_options = dict(spec.video_options or {})
    if gop:
        video_options.update({"g": str(gop), "sc_threshold": "0"})
    container_options = {"live": "1"} if live else spec.container_options
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt, container_options=container_options or {}) as out:
        vs = out.add_stream(vcodec, rate=Fraction(fps), options=video_options or {})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.bit_rate = video_bitrate
        if vcodec != "libx264":
            vs.codec_context.bit_rate_tolerance = video_bitrate
        vs.time_base = Fraction(1, fps)
        as_ = None
        pcm = None
        if audio is not None and acodec is not None:
            as_ = out.add_stream(acodec, rate=audio_rate, layout="mono")
            as_.format = audio_format
            pcm = np.asarray(audio, dtype=np.float32).reshape(-1)
        fed = 0  # audio samples sent so far
        chunk = 1024

        def feed_audio(until: int) -> None:
            nonlocal fed
            assert as_ is not None and pcm is not None
            until = min(until, pcm.shape[0])
            while fed < until:
                end = min(fed + chunk, until)
                af = _audio_frame(pcm[fed:end], audio_rate, audio_format)
                af.pts = fed
                af.time_base = Fraction(1, audio_rate)
                for p in as_.encode(af):
                    out.mux(p)
                fed = end

        for i, rgb in enumerate(video_frames(width, height, seconds, fps, kind, seed, blur_sigma)):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for p in vs.encode(vf):
                out.mux(p)
            if as_ is not None:
                feed_audio(int(round((i + 1) * audio_rate / fps)))
        for p in vs.encode(None):
            out.mux(p)
        if as_ is not None and pcm is not None:
            feed_audio(pcm.shape[0])
            for p in as_.encode(None):
                out.mux(p)
    data = buf.getvalue()
    log.debug("synth %s: %dx%d %d fps %.2f s -> %d bytes", fmt, width, height, fps, seconds, len(data))
    return data


def _audio_frame(x: np.ndarray, rate: int, fmt: str) -> av.AudioFrame:
    if fmt in ("s16", "s16p"):
        arr = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)[None, :]
    else:  # fltp / flt
        arr = np.clip(x, -1.0, 1.0).astype(np.float32)[None, :]
    af = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
    af.sample_rate = rate
    return af


def mp4(
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    seconds: float = 3.5,
    audio: np.ndarray | None = None,
    audio_rate: int = RAVDESS_AUDIO_RATE,
    video_bitrate: int = 8_000_000,
    kind: FrameKind = "face",
    seed: int = 0,
    blur_sigma: float = 0.0,
    gop: int | None = None,
) -> bytes:
    """RAVDESS-like MP4: H.264 (libx264, yuv420p, ~``video_bitrate``) + mono AAC at ``audio_rate``.

    ``audio`` is float32 mono at ``audio_rate``; None gives a file without an audio track. ``gop``: frames
    between IDR pictures (libx264's default is 250).
    """
    return _encode(_MP4, **locals())


def flv(
    width: int = 480,
    height: int = 360,
    fps: int = 30,
    seconds: float = 2.5,
    audio: np.ndarray | None = None,
    audio_rate: int = CREMA_AUDIO_RATE,
    video_bitrate: int = 1_000_000,
    kind: FrameKind = "face",
    seed: int = 0,
    blur_sigma: float = 0.0,
) -> bytes:
    """CREMA-D-like FLV: Sorenson H.263 ("flv") video + mono MP3 (libmp3lame).

    FLV carries MP3 only at 44100, 22050 or 11025 Hz.
    """
    if audio is not None and audio_rate not in (44_100, 22_050, 11_025):
        raise ValueError(f"FLV/MP3 audio must be 44100, 22050 or 11025 Hz, not {audio_rate}")
    return _encode(_FLV, **locals())


def avi(
    width: int = 640,
    height: int = 480,
    fps: int = 25,
    seconds: float = 2.0,
    audio: np.ndarray | None = None,
    audio_rate: int = 44_100,
    video_bitrate: int = 2_000_000,
    kind: FrameKind = "face",
    seed: int = 0,
    blur_sigma: float = 0.0,
) -> bytes:
    """AVI: MPEG-4 Part 2 ("mpeg4") video + 16-bit PCM audio."""
    return _encode(_AVI, **locals())


def mkv(
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    seconds: float = 2.0,
    audio: np.ndarray | None = None,
    audio_rate: int = RAVDESS_AUDIO_RATE,
    video_bitrate: int = 4_000_000,
    kind: FrameKind = "face",
    seed: int = 0,
) -> bytes:
    """Matroska: H.264 (libx264) + mono AAC, as screen and camera recorders write it."""
    return _encode(_MKV, **locals())


def webm(
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    seconds: float = 2.0,
    audio: np.ndarray | None = None,
    audio_rate: int = 48_000,
    video_bitrate: int = 1_000_000,
    kind: FrameKind = "face",
    seed: int = 0,
    live: bool = False,
) -> bytes:
    """WebM: VP8 + mono Opus (48 kHz), as browsers' MediaRecorder writes it.

    ``live=True`` writes no duration and no cues, exactly like a browser recording made by MediaRecorder.
    """
    if audio is not None and audio_rate != 48_000:
        raise ValueError("Opus in WebM is 48 kHz here")
    return _encode(_WEBM, **locals())


def remux(data: bytes, fmt: str) -> bytes:
    """The same encoded streams in another container (no re-encoding), e.g. MP4 -> "matroska" or "avi"."""
    from av.bitstream import BitStreamFilterContext

    out_buf = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out_buf, mode="w", format=fmt) as dst:
        mapping = {s.index: dst.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
        # AVI carries H.264 in Annex B form (start codes), MP4/MKV in avcC form.
        bsf = {
            s.index: BitStreamFilterContext("h264_mp4toannexb", s)
            for s in src.streams
            if fmt == "avi" and s.index in mapping and s.codec_context.name == "h264"
        }
        for packet in src.demux(*[s for s in src.streams if s.index in mapping]):
            if packet.dts is None:
                continue
            index = packet.stream.index
            for out_packet in bsf[index].filter(packet) if index in bsf else [packet]:
                out_packet.stream = mapping[index]
                dst.mux(out_packet)
    return out_buf.getvalue()
