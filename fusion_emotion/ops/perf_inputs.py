"""perf_analyzer ``--input-data`` JSON for the ``fusion_emotion`` ensemble.

perf_analyzer's random data would be rejected by ``preprocess`` (not a media
file), so real clips have to be given. Its "Real Input Data" format
(perf_analyzer docs/input_data.md) takes binary tensor contents as
``{"b64": ...}``; for a STRING/BYTES tensor every element is a 4-byte unsigned
length followed by the bytes, little-endian, and the base64 must include those
length prefixes. Our BYTES inputs have dims [1], so one element per tensor.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any

from fusion_emotion import contract as C

_LEN = struct.Struct("<I")


def serialize_bytes_tensor(elements: Sequence[bytes]) -> bytes:
    """Triton's BYTES wire layout: for each element, uint32 little-endian length + the bytes."""
    out = bytearray()
    for e in elements:
        if len(e) > 0xFFFFFFFF:
            raise ValueError("element over 4 GiB cannot be length-prefixed")
        out += _LEN.pack(len(e))
        out += e
    return bytes(out)


def deserialize_bytes_tensor(blob: bytes) -> list[bytes]:
    """Inverse of :func:`serialize_bytes_tensor`; refuses truncated or trailing data."""
    out, pos = [], 0
    while pos < len(blob):
        if pos + _LEN.size > len(blob):
            raise ValueError(f"truncated length prefix at byte {pos}")
        (n,) = _LEN.unpack_from(blob, pos)
        pos += _LEN.size
        if pos + n > len(blob):
            raise ValueError(f"element at byte {pos} claims {n} bytes, only {len(blob) - pos} left")
        out.append(bytes(blob[pos : pos + n]))
        pos += n
    return out


def tensor_entry(data: bytes) -> dict[str, Any]:
    """One BYTES input of shape [1]: base64 content with its length prefix, explicit shape."""
    return {
        "content": {"b64": base64.b64encode(serialize_bytes_tensor([data])).decode("ascii")},
        "shape": list(C.IN_VIDEO.dims),
    }


def make_input_data(requests: Sequence[tuple[bytes | None, bytes | None]]) -> dict[str, Any]:
    """``{"data": [...]}`` with one entry per (video, audio) request; perf_analyzer plays them round-robin.

    A None modality is left out of that entry (both inputs are optional in the
    ensemble), but every entry needs at least one.
    """
    if not requests:
        raise ValueError("need at least one request")
    data = []
    for i, (video, audio) in enumerate(requests):
        entry: dict[str, Any] = {}
        if video is not None:
            entry[C.IN_VIDEO.name] = tensor_entry(video)
        if audio is not None:
            entry[C.IN_AUDIO.name] = tensor_entry(audio)
        if not entry:
            raise ValueError(f"request {i} has neither video nor audio")
        data.append(entry)
    return {"data": data}


def decode_input_data(doc: dict[str, Any]) -> list[dict[str, list[bytes]]]:
    """The files back out of an input-data document (the test's round trip, and a sanity check)."""
    out = []
    for entry in doc["data"]:
        row: dict[str, list[bytes]] = {}
        for name, value in entry.items():
            content = value["content"] if isinstance(value, dict) and "content" in value else value
            if not isinstance(content, dict) or "b64" not in content:
                raise ValueError(f"input {name!r} is not base64 content")
            elements = deserialize_bytes_tensor(base64.b64decode(content["b64"], validate=True))
            shape = value.get("shape") if isinstance(value, dict) else None
            if shape is not None and len(elements) != _product(shape):
                raise ValueError(f"input {name!r}: {len(elements)} elements for shape {shape}")
            row[name] = elements
        out.append(row)
    return out


def _product(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
