"""perf_analyzer input-data JSON decodes back to exactly the files it was made from."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_emotion.ops.perf_inputs import (
    decode_input_data,
    deserialize_bytes_tensor,
    make_input_data,
    serialize_bytes_tensor,
)

ROOT = Path(__file__).resolve().parents[1]


def test_bytes_tensor_layout_is_little_endian_length_prefix():
    blob = serialize_bytes_tensor([b"abc", b""])
    assert blob == b"\x03\x00\x00\x00abc\x00\x00\x00\x00"
    assert deserialize_bytes_tensor(blob) == [b"abc", b""]


def test_truncated_tensor_is_refused():
    with pytest.raises(ValueError):
        deserialize_bytes_tensor(struct.pack("<I", 10) + b"short")
    with pytest.raises(ValueError):
        deserialize_bytes_tensor(b"\x01\x00")


def test_entry_format_follows_perf_analyzer_docs():
    doc = make_input_data([(b"VIDEO", b"AUDIO"), (b"V2", None)])
    first = doc["data"][0]["video"]
    assert first["shape"] == [1]
    raw = base64.b64decode(first["content"]["b64"])
    assert raw[:4] == (5).to_bytes(4, "little") and raw[4:] == b"VIDEO"
    assert "audio" not in doc["data"][1]
    with pytest.raises(ValueError):
        make_input_data([(None, None)])


def test_script_round_trip_real_files(tmp_path, media):
    video, audio = tmp_path / "clip.mp4", tmp_path / "speech.wav"
    video.write_bytes(media["flv"])
    audio.write_bytes(media["wav"])
    out = tmp_path / "inputs.json"
    cmd = [sys.executable, str(ROOT / "perf" / "make_perf_inputs.py"), "--video", str(video), "--audio", str(audio)]
    subprocess.run([*cmd, "-o", str(out)], check=True, cwd=ROOT, capture_output=True)
    rows = decode_input_data(json.loads(out.read_text()))
    assert rows == [{"video": [media["flv"]], "audio": [media["wav"]]}]
