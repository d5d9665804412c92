"""Recorded calls, pure parts: the call options, the VAD gate, per-channel timelines with fake encoders,
the merged per-speaker result and the front end's option parsing."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from test_timeline import _FakeEncoder, _head

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core.calls import (
    CallOptions,
    add_call_arguments,
    call_from_args,
    call_options,
    pairs,
    parse_names,
    run_per_speaker,
)
from fusion_emotion.core.probe import MediaError
from fusion_emotion.core.result import speakers_result, timeline_result
from fusion_emotion.core.timeline import compute_timeline
from fusion_emotion.core.vad import FRAME_S, FRAME_SAMPLES, frame_f1, speech_frames, window_speech
from fusion_emotion.core.windows import TIMELINE_DEFAULTS
from fusion_emotion.errors import ApiError, ErrorKind, ServingError
from fusion_emotion.frontend.timeline import parse_attributes, request_options
from fusion_emotion.testmedia.calls import two_speaker_call


# --------------------------------------------------------------------------- options
def test_call_options_defaults_and_vad_rule() -> None:
    assert call_options() == CallOptions(C.SPEAKERS_MIXED, (), False)
    per = call_options("channels")
    assert per.per_channel and per.names == ("channel_0", "channel_1") and per.vad  # vad on with channels
    assert call_options("channels", "agent,customer", "false") == CallOptions("channels", ("agent", "customer"), False)
    assert call_options(None, None, True).vad and not call_options("mixed").vad
    assert parse_names(["a", "b", "c"]) == ("a", "b", "c")


@pytest.mark.parametrize(
    ("args", "subject"),
    [
        (("stereo",), "speakers"),
        (("mixed", "a,b"), "speaker_names"),
        (("channels", "a,a"), "speaker_names"),
        (("channels", "a b,c"), "speaker_names"),
        (("channels", ",".join(f"s{i}" for i in range(C.MAX_SPEAKER_CHANNELS + 1))), "speaker_names"),
        (("channels", None, "maybe"), "vad"),
    ],
)
def test_call_options_refuse_bad_values(args: tuple, subject: str) -> None:
    with pytest.raises(ServingError) as err:
        call_options(*args)
    assert err.value.kind is ErrorKind.BAD_REQUEST and err.value.subject == subject


def test_pairs_round_trip_and_cli_flags() -> None:
    cases = (CallOptions(), call_options("channels"), call_options("channels", "agent,customer", "false", True))
    for opts in cases:
        assert call_options(*(pairs(opts).get(k) for k in ("speakers", "speaker_names", "vad", "summary"))) == opts
    assert pairs(call_options("channels")) == {"speakers": "channels"}  # only what differs from the defaults
    p = argparse.ArgumentParser()
    add_call_arguments(p)
    args = p.parse_args(["--speakers", "channels", "--speaker-names", "agent,customer", "--no-vad"])
    assert call_from_args(args) == CallOptions("channels", ("agent", "customer"), False)
    assert call_from_args(p.parse_args(["--summary"])) == CallOptions(summary=True)


def test_run_per_speaker_merges_and_summarizes() -> None:
    seg = np.array([[0, 4, 0, 0, 0, 1, 0, 0]], np.float32)
    calls: list[int | None] = []

    def one(channel: int | None) -> dict:
        calls.append(channel)
        return timeline_result(seg, np.full(6, 1 / 6, np.float32), None, vad=True)

    out = run_per_speaker(call_options("channels", "a,b,c", None, "true"), one)
    assert calls == [0, 1, 2] and list(out) == ["speakers", "segments", "summary"]
    assert list(out["summary"]) == ["a", "b", "c"] and out["summary"]["a"]["share"]["happy"] == 1.0
    calls.clear()
    plain = run_per_speaker(CallOptions(), one)
    assert calls == [None] and "summary" not in plain and "speakers" not in plain


def test_front_end_options_from_header_query_and_json() -> None:
    header = parse_attributes("timeline=true,speakers=channels,speaker_names=agent,customer,other=1,vad=false")
    assert header == {"timeline": "true", "speakers": "channels", "speaker_names": "agent,customer", "vad": "false"}
    opts = request_options(header)
    assert opts.call == CallOptions("channels", ("agent", "customer"), False)
    assert parse_attributes("speaker_names=a;b;timeline=true") == {"speaker_names": "a,b", "timeline": "true"}
    json_opts = request_options({"timeline": True, "speakers": "channels", "speaker_names": ["x", "y"]})
    assert json_opts.call.names == ("x", "y") and json_opts.call.vad
    assert request_options({"timeline": "true"}).call == CallOptions()  # today's timelines unchanged
    for bad in ({"speakers": "channels"}, {"timeline": "true", "speakers": "left"}, {"vad": "true"}):
        with pytest.raises(ApiError) as err:
            request_options(bad)
        assert err.value.status == 400


# --------------------------------------------------------------------------- vad
def test_speech_frames_and_window_gate() -> None:
    assert not speech_frames(np.zeros(16_000, np.float32)).any()  # digital silence
    assert speech_frames(np.zeros(FRAME_SAMPLES * 3 + 5, np.float32)).shape == (3,)  # whole frames only
    frames = np.zeros(100, bool)  # 3 s of 30 ms frames
    frames[10:18] = True  # 0.24 s of speech in [0.3, 0.54)
    frames[60:62] = True  # a 60 ms click
    windows = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [0.35, 1.35]])
    np.testing.assert_array_equal(window_speech(frames, windows), [True, False, False, False])  # a click is no speech
    np.testing.assert_array_equal(window_speech(frames, np.array([[1.5, 2.5]]), min_speech_s=0.05), [True])
    assert frame_f1(frames, frames) == 1.0 and frame_f1(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert frame_f1(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)


def test_vad_finds_the_generated_calls_speech() -> None:
    call = two_speaker_call()
    for channel in (0, 1):
        detected = speech_frames(call.samples[:, channel])
        assert frame_f1(detected, call.truth_frames(channel, FRAME_S)) > 0.85
        assert not detected[-int(3 / FRAME_S) :].any()  # the silent tail is line noise only


# --------------------------------------------------------------------------- per-channel timelines
def _timeline(audio: bytes, **kwargs):
    ve, ae = _FakeEncoder(C.VIDEO_EMBED_DIM, 1), _FakeEncoder(C.AUDIO_EMBED_DIM, 2)
    tl = compute_timeline(None, audio, TIMELINE_DEFAULTS, encode_video=ve, encode_audio=ae, head=_head(), **kwargs)
    return tl, ae


def test_channel_is_the_channel_alone_and_vad_skips_silent_windows() -> None:
    call = two_speaker_call()
    stereo = testmedia.wav(call.samples, call.rate)
    for channel in (0, 1):
        mono = testmedia.wav(call.samples[:, channel], call.rate)
        got, ae_got = _timeline(stereo, channel=channel, vad=True)
        want, _ = _timeline(mono, vad=True)
        np.testing.assert_array_equal(got.speech, want.speech)
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)  # NaN where silent, both
        np.testing.assert_allclose(got.clip_probabilities, want.clip_probabilities, atol=1e-6)
        assert sum(ae_got.batches) == int(got.speech.sum()) + 1  # the speech windows and the clip, nothing else
    assert got.speech.tolist() == [False, True, False, False]  # customer: 4.6-7.4 s only
    assert np.isnan(got.probabilities[~got.speech]).all() and not np.isnan(got.probabilities[got.speech]).any()
    plain, ae = _timeline(stereo)
    assert plain.speech is None and sum(ae.batches) == 5 and not np.isnan(plain.probabilities).any()
    with pytest.raises(MediaError) as err:
        _timeline(testmedia.wav(call.samples[:, 0], call.rate), channel=1)
    assert err.value.kind is ErrorKind.BAD_REQUEST and err.value.subject == "channel"


def test_segments_and_speakers_result() -> None:
    seg = np.array([[0, 4, *([np.nan] * 6)], [4, 8, 0, 0, 0, 1, 0, 0]], np.float32)
    out = timeline_result(seg, np.full(6, 1 / 6, np.float32), None, vad=True)
    assert out["segments"][0] == {"start": 0.0, "end": 4.0, "speech": False}
    assert out["segments"][1]["speech"] is True and out["segments"][1]["dominant_emotion"] == "happy"
    assert "speech" not in timeline_result(seg[1:], np.full(6, 1 / 6, np.float32), None)["segments"][0]
    other = timeline_result(seg[::-1], np.full(6, 1 / 6, np.float32), None, vad=True)
    merged = speakers_result({"agent": out, "customer": other})
    assert list(merged) == ["speakers", "segments"] and set(merged["speakers"]) == {"agent", "customer"}
    assert "segments" not in merged["speakers"]["agent"] and merged["speakers"]["agent"]["dominant_emotion"]
    assert [(s["speaker"], s["start"]) for s in merged["segments"]] == [
        ("agent", 0.0),
        ("customer", 0.0),
        ("agent", 4.0),
        ("customer", 4.0),
    ]


def test_segments_csv_carries_speaker_and_speech() -> None:
    from fusion_emotion.client.timeline_cli import segments_csv

    seg = np.array([[0, 4, *([np.nan] * 6)], [4, 8, 0, 0, 0, 1, 0, 0]], np.float32)
    one = timeline_result(seg, np.full(6, 1 / 6, np.float32), None, vad=True)
    rows = segments_csv(speakers_result({"agent": one})).splitlines()
    assert rows[0].split(",")[:4] == ["speaker", "speech", "start", "end"]
    assert rows[1].split(",") == ["agent", "false", "0.0", "4.0", *([""] * 6), ""]
    assert rows[2].split(",")[:2] == ["agent", "true"] and rows[2].endswith(",happy")
    plain = segments_csv(timeline_result(seg[1:], np.full(6, 1 / 6, np.float32), None)).splitlines()
    assert plain[0].split(",")[0] == "start"  # a timeline without the options: the columns as before
