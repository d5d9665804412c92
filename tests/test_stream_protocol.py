"""``/stream``'s front-end parts without servers: message parsing, the bounds, pacing and the joining of audio."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from fusion_emotion.core.stream import stream_config
from fusion_emotion.frontend.stream_pacing import AudioJoiner, Pacer, TokenBucket
from fusion_emotion.frontend.stream_protocol import StreamClose, decode_frame, parse_config, parse_text
from fusion_emotion.frontend.stream_settings import StreamSettings, uvicorn_ws_options


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, 1008, "JSON"),  # RecursionError inside the parser
        ('{"frame_jpeg_b64": "", "t": 1' + "0" * 400 + "}", 1008, "finite"),  # OverflowError in float()
        ('{"frame_jpeg_b64": "", "t": NaN}', 1008, "finite"),
        ('{"frame_jpeg_b64": "", "t": true}', 1008, "finite"),
        ('{"end": 1}', 1008, "true"),
        ('{"t": 0}', 1008, "unexpected"),
    ],
)
def test_malformed_text_messages_close_with_a_reason(text: str, code: int, needle: str) -> None:
    with pytest.raises(StreamClose) as err:
        parse_text(text)
    assert err.value.code == code and needle in err.value.error.reason


def test_config_nested_or_huge_numbers_are_policy_errors() -> None:
    for text in ("[" * 100_000, '{"sample_rate": 1' + "0" * 400 + ', "encoding": "pcm_s16le"}'):
        with pytest.raises(StreamClose) as err:
            parse_config(text)
        assert err.value.code in (1003, 1008)


def test_frames_are_decoded_only_when_asked() -> None:
    msg = parse_text(json.dumps({"frame_rgb_b64": "AAAAAAAAAAAAAAAA", "width": 2, "height": 2, "t": 1.5}))
    assert msg.t == 1.5 and not msg.end
    inputs = decode_frame(msg, 1 << 20)
    assert inputs["rgbs"].shape == (1, 2, 2, 3) and inputs["times"] == [1.5]
    with pytest.raises(StreamClose) as err:
        decode_frame(parse_text(json.dumps({"frame_rgb_b64": "AAAA", "width": 2, "height": 2, "t": 0})), 1 << 20)
    assert err.value.code == 1007


def test_documented_audio_limit_is_the_enforced_one() -> None:
    s = StreamSettings()
    assert s.audio_message_bytes(stream_config(16_000), "<i2") == 320_000  # 10 s at 16 kHz mono s16
    assert s.audio_message_bytes(stream_config(48_000, 2), "<f4") == 1 << 20  # 1 MiB is the smaller here
    ws = uvicorn_ws_options(s)
    assert ws["ws_ping_interval"] == s.ping_interval_s and ws["ws_max_size"] == s.transport_max_bytes


def test_settings_from_env_cover_every_bound() -> None:
    env = {"FUSION_EMOTION_STREAM_MAX_OUTSTANDING": "3", "FUSION_EMOTION_STREAM_PING_TIMEOUT_S": "4.5",
           "FUSION_EMOTION_STREAM_MAX_UNCONFIGURED": "2", "FUSION_EMOTION_MAX_STREAMS": "5"}  # fmt: skip
    s = StreamSettings.from_env(env)
    assert (s.max_outstanding, s.ping_timeout_s, s.max_unconfigured, s.max_streams) == (3, 4.5, 2, 5)
    with pytest.raises(ValueError):
        StreamSettings.from_env({"FUSION_EMOTION_STREAM_MAX_OUTSTANDING": "1"})


def test_token_bucket_allows_one_second_of_burst_then_paces() -> None:
    now = [0.0]
    bucket = TokenBucket(10, clock=lambda: now[0])
    assert [bucket.take(1) for _ in range(10)] == [0.0] * 10
    assert bucket.take(1) == pytest.approx(0.1)
    now[0] += 0.1
    assert bucket.take(1) == pytest.approx(0.1)  # refilled one token, spent it, still one in debt


def test_pacer_refuses_a_message_flood_paces_bytes_and_drops_extra_frames() -> None:
    pacer = Pacer(messages_per_s=100, bytes_per_s=1000, frames_per_s=5)

    async def flood(n: int, nbytes: int) -> None:
        for _ in range(n):
            await pacer.take(nbytes)

    asyncio.run(flood(150, 1))  # over the burst, under twice the rate: taken
    with pytest.raises(StreamClose) as err:
        asyncio.run(flood(100, 1))
    assert err.value.code == 1008 and "messages per second" in err.value.error.reason
    pacer = Pacer(messages_per_s=1e6, bytes_per_s=1000, frames_per_s=5)
    asyncio.run(flood(3, 500))  # 1500 bytes at 1000/s, 1 s of burst: half a second asked
    assert pacer.waited_s == pytest.approx(0.5, abs=0.05)
    assert [pacer.frame() for _ in range(7)] == [True] * 5 + [False] * 2 and pacer.frames_dropped == 2


def test_joiner_joins_tiny_messages_and_cuts_at_update_boundaries() -> None:
    cfg = stream_config(16_000, 1, 1.0)
    joiner = AudioJoiner(cfg, "<i2", 32768.0, coalesce_s=0.25, max_chunk_s=10.0)
    pcm = (np.arange(40_000) % 100).astype("<i2").tobytes()
    chunks = []
    for i in range(0, len(pcm), 3):  # 3-byte messages: samples split across messages
        chunks += joiner.add(pcm[i : i + 3])
    rest = joiner.flush()
    chunks += [rest] if rest is not None else []
    joined = np.concatenate(chunks)
    np.testing.assert_array_equal(joined, (np.arange(40_000) % 100).astype(np.float32) / 32768.0)
    assert len(chunks) <= 40_000 // 4000 + 3  # ~0.25 s each, not one per message
    ends = np.cumsum([c.size for c in chunks])
    assert 16_000 in ends and 32_000 in ends  # a chunk ends exactly where each update's audio is complete


def test_joiner_caps_a_chunk_at_max_chunk_s() -> None:
    joiner = AudioJoiner(stream_config(8_000, 1, 4.0, 4.0), "<i2", 32768.0, coalesce_s=0.25, max_chunk_s=1.0)
    chunks = joiner.add(np.zeros(8_000 * 3, "<i2").tobytes())
    assert chunks and max(c.size for c in chunks) <= 8_000


def test_joiner_hands_out_a_slow_trickle_after_its_hold_time() -> None:
    now = [0.0]
    joiner = AudioJoiner(stream_config(16_000), "<i2", 32768.0, 0.25, 10.0, clock=lambda: now[0])
    assert joiner.add(b"\x00\x00" * 10) == []
    now[0] = 0.49
    assert joiner.add(b"\x00\x00") == []
    now[0] = 0.5
    assert [c.size for c in joiner.add(b"\x00\x00")] == [12]  # held 0.5 s (2 x coalesce_s): sent
