"""Hostile media, made on demand: one small generator per class of input that once cost us CPU or memory.

Each generator returns the bytes of one crafted file (a few KB to a few MB). The unit tests decode them
directly; the corpus test sends them through the real front end and tritonserver; docs/reliability.md
lists the bound each one meets. Nothing here is a fixture file: the tests make what they send.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import partial

import av
import cv2
import numpy as np

from fusion_emotion.testmedia.audio import tone, wav


def _with_tiny_video(out: av.container.OutputContainer, add_audio: Callable[[], av.stream.Stream]) -> av.stream.Stream:
    """A 16x16 one-frame MJPEG video stream (the video part of an audio attack), then the audio stream.

    Every stream must exist before the first packet is muxed (the header is written then).
    """
    vs = out.add_stream("mjpeg", rate=Fraction(1))
    vs.width, vs.height, vs.pix_fmt = 16, 16, "yuvj420p"
    audio = add_audio()
    frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
    frame.pts = 0
    for packet in [*vs.encode(frame), *vs.encode(None)]:
        out.mux(packet)
    return audio


def _pcm_avi(samples_per_packet: int, packets: int, rate: int = 8_000) -> bytes:
    """AVI with a tiny video stream and a PCM track cut into ``samples_per_packet``-sample packets."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as out:
        a = _with_tiny_video(out, lambda: out.add_stream("pcm_s16le", rate=rate, layout="mono"))
        chunk = (np.sin(np.arange(samples_per_packet) * 0.1) * 1000).astype(np.int16)[None]
        for i in range(packets):
            af = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            af.sample_rate = rate
            af.pts = i * samples_per_packet
            for p in a.encode(af):
                out.mux(p)
    return buf.getvalue()


def tiny_audio_packets(packets: int = 16_000) -> bytes:
    """AVI whose PCM audio comes one sample per packet (once quadratic: 11 s CPU at 16k packets)."""
    return _pcm_avi(1, packets)


def many_streams(streams: int = 40, width: int = 3840, height: int = 2160) -> bytes:
    """MP4 with ``streams`` one-frame 4K H.264 tracks: probing each one allocates a 4K decoder."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        tracks = []
        for _ in range(streams):
            s = out.add_stream("libx264", rate=1, options={"preset": "ultrafast", "crf": "51"})
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            tracks.append(s)
        frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
        for s in tracks:
            for p in s.encode(frame):
                out.mux(p)
            for p in s.encode(None):
                out.mux(p)
    return buf.getvalue()


def ffconcat(path: str = "/etc/hostname") -> bytes:
    """A plain-text ffconcat playlist: without a demuxer whitelist FFmpeg would open ``path`` itself."""
    return f"ffconcat version 1.0\nfile '{path}'\n".encode()


def frame_size_switch(small: int = 32, large: int = 4000, frames: int = 3) -> bytes:
    """AVI (MJPEG) declaring ``small``x``small`` whose later frames are ``large``x``large`` JPEGs."""

    def jpeg(size: int) -> bytes:
        ok, enc = cv2.imencode(".jpg", np.full((size, size, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 20])
        assert ok
        return enc.tobytes()

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as out:
        vs = out.add_stream("mjpeg", rate=Fraction(10))
        vs.width, vs.height, vs.pix_fmt = small, small, "yuvj420p"
        for i in range(frames):
            packet = av.Packet(jpeg(small if i == 0 else large))
            packet.stream = vs
            packet.pts = packet.dts = i
            packet.time_base = Fraction(1, 10)
            out.mux(packet)
    return buf.getvalue()


def _mp2_packets(x: np.ndarray, rate: int, layout: str) -> list[bytes]:
    enc = av.CodecContext.create("mp2", "w")
    enc.sample_rate, enc.layout, enc.format = rate, layout, "s16"
    enc.bit_rate = 128_000
    enc.open()
    channels = 2 if layout == "stereo" else 1
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    interleaved = np.repeat(pcm[:, None], channels, axis=1).reshape(1, -1)
    out = []
    for start in range(0, interleaved.shape[1], 1152 * channels):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(interleaved[:, start : start + 1152 * channels]), format="s16", layout=layout
        )
        frame.sample_rate = rate
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    return out


def _audio_switch_avi(first: tuple[int, str], second: tuple[int, str], seconds: float = 1.0) -> bytes:
    """AVI (tiny MJPEG video) whose MP2 track changes (rate, layout) half-way: MP2 frame headers allow it."""
    packets = []
    for rate, layout in (first, second):
        packets += _mp2_packets(tone(440.0, seconds / 2, rate, 0.3), rate, layout)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as out:
        a = _with_tiny_video(out, lambda: out.add_stream("mp2", rate=first[0], layout=first[1]))
        for i, data in enumerate(packets):
            packet = av.Packet(data)
            packet.stream = a
            packet.pts = packet.dts = i * 1152
            packet.time_base = Fraction(1, first[0])
            out.mux(packet)
    return buf.getvalue()


def channel_switch() -> bytes:
    """MP2 audio that switches from mono to stereo mid-stream (once a raw ValueError and a 500)."""
    return _audio_switch_avi((44_100, "mono"), (44_100, "stereo"))


def rate_switch() -> bytes:
    """MP2 audio that switches from 44.1 kHz to 48 kHz mid-stream (once mixed silently)."""
    return _audio_switch_avi((44_100, "mono"), (48_000, "mono"))


def huge_float_wav(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    """32-bit float WAV of finite but enormous samples (±3e38): once inf after mixing, NaN at the encoder."""
    n = int(seconds * rate)
    x = np.where(np.arange(2 * n) % 2 == 0, 3e38, -3e38).astype(np.float32)  # stereo, interleaved
    return wav(x.reshape(n, 2), rate, "f32")


def coprime_rate_wav(seconds: float = 30.0, rate: int = 191_999) -> bytes:
    """A long WAV at a rate coprime with 16 kHz: resampling all of it was ~1 s CPU per 30 s of audio."""
    return wav(tone(440.0, seconds, rate, 0.3), rate, "s16")


def nested_json(depth: int = 100_000) -> bytes:
    """A JSON body nested ``depth`` levels deep (once a RecursionError and a 500)."""
    return b"[" * depth + b"]" * depth


def wav_declaring_huge_size(rate: int = 16_000) -> bytes:
    """A WAV header that declares 4 GiB of samples and carries one second."""
    pcm = (tone(440.0, 1.0, rate) * 32767).astype(np.int16).tobytes()
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + fmt + b"data" + struct.pack("<I", 0xFFFFFFF0) + pcm


@dataclass(frozen=True)
class HostileCase:
    """One hostile input: how to make it, which request input carries it, and what the refusal names."""

    name: str
    make: Callable[[], bytes]
    input_name: str  # "video" or "audio"
    kind: str  # fusion_emotion.errors.ErrorKind value expected
    reason: str  # a substring of the refusal's reason


CASES: tuple[HostileCase, ...] = (
    HostileCase("tiny_audio_packets", tiny_audio_packets, "video", "invalid_media", "samples on average"),
    # 12 HD tracks exercise the same bound as 40 4K ones (refused before any is probed) at a tenth of the make time.
    HostileCase("many_streams", partial(many_streams, 12, 1920, 1080), "video", "too_large", "streams"),
    HostileCase("ffconcat", ffconcat, "video", "invalid_media", "not a decodable media file"),
    HostileCase("frame_size_switch", frame_size_switch, "video", "invalid_media", "decoding failed"),
    HostileCase("channel_switch", channel_switch, "video", "invalid_media", "audio format changes mid-stream"),
    HostileCase("rate_switch", rate_switch, "video", "invalid_media", "audio format changes mid-stream"),
)
"""Media that must be refused (4xx) whatever the route; huge_float_wav and coprime_rate_wav must be *served*."""
