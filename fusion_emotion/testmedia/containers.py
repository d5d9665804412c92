"""Deterministic test containers: synthetic frames and speech muxed into MP4, FLV, AVI, MKV and WebM.

The real container formats the service accepts (RAVDESS-like MP4, CREMA-D-like FLV, AVI), encoded through
PyAV (FFmpeg) in memory: nothing is written to disk.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.bitstream import BitStreamFilterContext

from fusion_emotion.testmedia.audio import CREMA_AUDIO_RATE, RAVDESS_AUDIO_RATE
from fusion_emotion.testmedia.frames import FrameKind, video_frames

log = logging.getLogger(__name__)


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
