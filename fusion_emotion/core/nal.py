"""H.264 / HEVC NAL unit headers of demuxed packets, read without decoding.

Two questions are answered per packet: whether the PyAV sampler decodes it (H.264 ``skip_frame=NONREF``
skips a frame whose slices all have ``nal_ref_idc == 0``), and whether it starts a closed group of
pictures (an IDR picture), where a segment of the stream can be cut and decoded on its own.
"""

from __future__ import annotations

# H.264 NAL unit types (ITU-T H.264 table 7-1): coded slices, and the IDR slice.
_H264_SLICE = (1, 5)
_H264_IDR = 5
# HEVC NAL unit types (ITU-T H.265 table 7-1): IDR_W_RADL and IDR_N_LP. CRA and BLA pictures are random
# access points too, but their leading pictures need the previous group: not a clean cut.
_HEVC_IDR = (19, 20)


def nal_length_size(extradata: bytes, codec: str) -> int:
    """Bytes of each NAL length prefix from an avcC / hvcC record (MP4/MKV); 0 means Annex B (AVI)."""
    if codec == "h264" and len(extradata) >= 5 and extradata[0] == 1:
        return (extradata[4] & 0x03) + 1
    if codec == "hevc" and len(extradata) >= 23 and extradata[0] == 1:
        return (extradata[21] & 0x03) + 1
    return 0


def _length_prefixed(data: bytes, nal_length: int) -> list[int] | None:
    """NAL header bytes of a length-prefixed packet, or None when the prefixes do not tile it exactly."""
    headers: list[int] = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + nal_length], "big")
        if size <= 0 or pos + nal_length + size > len(data):
            return None
        headers.append(data[pos + nal_length])
        pos += nal_length + size
    return headers


def nal_headers(data: bytes, nal_length: int) -> list[int]:
    """The first byte of every NAL unit in one packet (length prefixes, else Annex B start codes)."""
    if nal_length:
        headers = _length_prefixed(data, nal_length)
        if headers is not None:
            return headers
    out: list[int] = []
    start = 0
    while True:  # Annex B: 00 00 01 start codes (AVI, or a length-prefixed stream muxed as Annex B)
        i = data.find(b"\x00\x00\x01", start)
        if i < 0 or i + 3 >= len(data):
            return out
        out.append(data[i + 3])
        start = i + 3


def h264_is_reference(data: bytes, nal_length: int) -> bool:
    """False when every coded slice in the packet has ``nal_ref_idc == 0`` (FFmpeg's ``skip_frame=NONREF``)."""
    slices = [h for h in nal_headers(data, nal_length) if (h & 0x1F) in _H264_SLICE]
    return not slices or any((h >> 5) & 0x03 for h in slices)


def is_idr(data: bytes, nal_length: int, codec: str) -> bool:
    """Whether the packet holds an IDR picture (H.264 or HEVC): decoding can start there, nothing before it
    is referenced. Other codecs: False (their streams are never cut)."""
    if codec == "h264":
        return any((h & 0x1F) == _H264_IDR for h in nal_headers(data, nal_length))
    if codec == "hevc":
        return any(((h >> 1) & 0x3F) in _HEVC_IDR for h in nal_headers(data, nal_length))
    return False
