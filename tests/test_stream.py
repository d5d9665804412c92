"""Real-time streams, pure part (fusion_emotion.core.stream): windows, rolling buffers, limits, the reference."""

from __future__ import annotations

import numpy as np
import pytest
from test_timeline import _FakeEncoder, _head

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core import stream as S
from fusion_emotion.core import windows as W
from fusion_emotion.core.rows import Row
from fusion_emotion.core.stream_frames import StreamFrame, jpeg_frame, rgb_frame
from fusion_emotion.errors import ErrorKind, ServingError


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def face_jpegs() -> list[bytes]:
    """A few distinct 320x240 face frames (the astronaut, shifted), as JPEG."""
    return [_jpeg(f) for f in testmedia.video_frames(320, 240, 6, 1.0)]


def _feed(
    state: S.StreamState, native: np.ndarray, chunk_sizes: np.ndarray, frames: list[tuple[float, bytes]]
) -> list[tuple[W.StreamWindow, Row]]:
    """Feed a recording chunk by chunk (frames sent before the audio that passes their time); collect windows."""
    out: list[tuple[W.StreamWindow, Row]] = []
    rate = state.config.sample_rate
    pos, fi = 0, 0
    for n in chunk_sizes:
        end_s = (pos + n) / rate
        while fi < len(frames) and frames[fi][0] <= end_s:
            t, data = frames[fi]
            if state.accept_frame_time(t):
                state.add_frame(jpeg_frame(t, data, state.limits))
            fi += 1
        state.add_audio(native[:, pos : pos + n].T.reshape(-1))
        pos += n
        for w in state.due():
            out.append((w, state.row(w)))
        state.trim()
    last = state.last_window()
    if last is not None:
        out.append((last, state.row(last)))
    return out


def _chunks(total: int, rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(lo, hi)))
    sizes[-1] -= sum(sizes) - total
    return np.array([s for s in sizes if s > 0])


def test_config_defaults_and_bounds() -> None:
    cfg = S.stream_config()
    assert (cfg.sample_rate, cfg.channels, cfg.hop_s, cfg.window_s) == (16_000, 1, 1.0, 4.0)
    assert S.stream_config(hop_s=None, window_s=0.8 + 0.2).hop_s == 1.0
    for kwargs, subject in (
        ({"sample_rate": 7999}, "sample_rate"),
        ({"sample_rate": 48_001}, "sample_rate"),
        ({"sample_rate": 16000.5}, "sample_rate"),
        ({"channels": 3}, "channels"),
        ({"hop_s": 0.2}, "hop_s"),
        ({"hop_s": 5.0}, "hop_s"),
        ({"window_s": 11}, "window_s"),
        ({"hop_s": float("nan")}, "hop_s"),
        ({"window_s": "x"}, "window_s"),
    ):
        with pytest.raises(ServingError) as err:
            S.stream_config(**kwargs)
        assert err.value.kind is ErrorKind.BAD_REQUEST and err.value.subject == subject


def test_plan_windows_counts_and_partial_last() -> None:
    cfg = S.stream_config(hop_s=1.0, window_s=4.0)
    w = W.plan_stream_windows(int(10.5 * 16_000), cfg.windows)
    assert len(w) == 11
    assert [(x.t_start, x.t_end) for x in w[:5]] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5)]
    assert (w[-1].t_start, w[-1].t_end) == (6.5, 10.5)
    assert len(W.plan_stream_windows(8 * 16_000, cfg.windows)) == 8  # ends on a hop: no extra window
    assert W.plan_stream_windows(0, cfg.windows) == []
    assert [(x.t_start, x.t_end) for x in W.plan_stream_windows(8000, cfg.windows)] == [(0.0, 0.5)]


def test_pick_frames_follows_the_file_rule() -> None:
    times = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2])
    picks = W.pick_in_window(times, 0.0, 1.0)
    targets = (np.arange(16) + 0.5) / 16
    # the first frame at or after each target, never one after the window end
    expected = [int(np.flatnonzero(times + 1e-6 >= t)[0]) for t in targets]
    assert picks.tolist() == expected and picks.max() == 5
    assert W.pick_in_window(times, 1.25, 2.0) is None
    assert W.pick_in_window(times, 1.1, 2.0).tolist() == [6] * 16  # targets past the last frame get it


@pytest.mark.parametrize(
    ("rate", "channels", "hop", "window", "seconds"),
    [(16_000, 1, 1.0, 4.0, 6.3), (44_100, 2, 0.7, 3.0, 4.0), (8_000, 1, 2.0, 5.0, 7.1)],
)
def test_live_windows_equal_the_offline_reference(rate, channels, hop, window, seconds, face_jpegs) -> None:
    rng = np.random.default_rng(rate)
    speech = testmedia.speech(rate=rate)
    n = int(seconds * rate)
    mono = np.resize(speech, n).astype(np.float32)
    native = np.stack([mono, 0.5 * mono] if channels == 2 else [mono])
    frame_times = np.round(np.arange(0.1, seconds, 0.2), 6)  # 5 fps, from t = 0.1 s
    frames = [(float(t), face_jpegs[i % len(face_jpegs)]) for i, t in enumerate(frame_times)]
    cfg = S.stream_config(rate, channels, hop, window)

    live = _feed(S.StreamState(cfg), native, _chunks(n, rng, rate // 50, rate // 2), frames)
    sf = [jpeg_frame(t, d) for t, d in frames]
    expected = W.plan_stream_windows(S.native_total16(n, rate), cfg.windows)
    assert [(w.start16, w.end16) for w, _ in live] == [(w.start16, w.end16) for w in expected]
    for (_, got), ref_w in zip(live, expected):
        ref = S.window_row(ref_w, native, 0, rate, sf)
        np.testing.assert_array_equal(got.waveform, ref.waveform)  # chunking changes nothing, bit for bit
        np.testing.assert_array_equal(got.frames, ref.frames)
        np.testing.assert_array_equal(got.media_qa, ref.media_qa)
    # and the scored updates equal reference_updates
    ve, ae, head = _FakeEncoder(C.VIDEO_EMBED_DIM, 1), _FakeEncoder(C.AUDIO_EMBED_DIM, 2), _head()
    got = S.score_updates(head, [w for w, _ in live], [f for _, f in live], ve, ae)
    ref = S.reference_updates(native, rate, sf, cfg, encode_video=ve, encode_audio=ae, head=head)
    assert len(got) == len(ref) == len(expected)
    for a, b in zip(got, ref):
        assert (a.t_start, a.t_end) == (b.t_start, b.t_end)
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
        np.testing.assert_allclose(a.qa_flags, b.qa_flags, atol=1e-6, equal_nan=True)
        assert abs(float(a.probabilities.sum()) - 1) < 1e-5


def test_window_of_16k_audio_is_the_file_paths_waveform() -> None:
    """A full window of 16 kHz audio gives exactly what a 4 s WAV of the same samples gives."""
    from fusion_emotion.core.rows import decode_row

    speech = np.resize(testmedia.speech(rate=16_000), 6 * 16_000).astype(np.float32)
    state = S.StreamState(S.stream_config())
    state.add_audio(speech)
    windows = state.due()
    assert len(windows) == 6
    w5 = windows[4]  # [1, 5]
    feats = state.row(w5)
    wav = testmedia.wav(speech[16_000 : 5 * 16_000], 16_000, "f32")
    file_feats = decode_row(None, wav)
    np.testing.assert_array_equal(feats.waveform, file_feats.waveform)
    np.testing.assert_allclose(feats.media_qa, file_feats.media_qa, equal_nan=True)


def test_first_windows_hold_what_has_arrived() -> None:
    state = S.StreamState(S.stream_config())
    state.add_audio(np.full(16_000, 0.25, np.float32))
    (w,) = state.due()
    f = state.row(w)
    assert (w.t_start, w.t_end) == (0.0, 1.0)
    assert np.all(f.waveform[:16_000] == 0.25) and np.all(f.waveform[16_000:] == 0)  # zero-padded, as a short file
    assert np.isnan(f.media_qa[2:]).all() and f.frames is None  # no frames sent: audio only


def test_memory_stays_bounded_over_a_long_stream(face_jpegs) -> None:
    state = S.StreamState(S.stream_config(48_000, 2))
    chunk = np.zeros(2 * 4800, np.float32)  # 100 ms
    frame = jpeg_frame(0, face_jpegs[0])
    sizes = []
    for i in range(300):  # 30 s
        t = i * 0.1
        if state.accept_frame_time(t):
            state.add_frame(StreamFrame(t, frame.rgb, jpeg=frame.jpeg))
        state.add_audio(chunk)
        state.due()
        state.trim()
        sizes.append(state.nbytes)
    assert state.emitted == 29  # the 30th window waits for the resampler's reach past 30 s ...
    assert state.last_window() == W.StreamWindow(0, 26 * 16_000, 30 * 16_000)  # ... or for END
    state.row(state.last_window())  # everything it needs is still held
    assert max(sizes[100:]) <= max(sizes[:100]) + 1  # flat after the first windows
    assert len(state.frames) <= 10 * 5 + 1  # window + hop at 10 fps


def test_limits() -> None:
    limits = S.StreamLimits(max_chunk_s=1.0, max_fps=10, max_frame_store_bytes=300_000, max_duration_s=5)
    state = S.StreamState(S.stream_config(16_000, 2), limits)
    with pytest.raises(ServingError, match="over the 1 s chunk limit") as err:
        state.add_audio(np.zeros(2 * 16_001, np.float32))
    assert err.value.kind is ErrorKind.TOO_LARGE
    with pytest.raises(ServingError, match="whole number of 2-channel samples"):
        state.add_audio(np.zeros(3, np.float32))
    with pytest.raises(ServingError, match="non-finite") as err:
        state.add_audio(np.array([0.0, np.nan], np.float32))
    assert err.value.kind is ErrorKind.INVALID_MEDIA
    state.add_audio(np.full(4, 7.0, np.float32))  # clipped to full scale
    assert state.audio.view(0, 2).max() == 1.0
    rgb = np.zeros((100, 120, 3), np.uint8)
    assert state.accept_frame_time(0.0)
    state.add_frame(rgb_frame(0.0, rgb))
    assert not state.accept_frame_time(0.05) and state.frames_dropped == 1  # over max_fps: dropped, not decoded
    assert state.accept_frame_time(0.1)
    state.add_frame(rgb_frame(0.1, rgb))
    with pytest.raises(ServingError, match="before the previous frame"):
        state.accept_frame_time(0.05)
    for bad in (float("inf"), -0.1):
        with pytest.raises(ServingError, match="finite number"):
            state.accept_frame_time(bad)
    for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        assert state.accept_frame_time(t)
        try:
            state.add_frame(rgb_frame(t, rgb))
        except ServingError as exc:
            assert exc.kind is ErrorKind.TOO_LARGE and "exceed 300000 bytes" in exc.reason
            break
    else:
        pytest.fail("the frame store limit never applied")
    with pytest.raises(ServingError, match="duration limit"):
        for _ in range(6):
            state.add_audio(np.zeros(2 * 16_000, np.float32))


def test_frames_errors_and_size_limits(face_jpegs) -> None:
    limits = S.StreamLimits(max_frame_bytes=1000, max_frame_width=200, max_frame_height=200)
    with pytest.raises(ServingError) as err:
        jpeg_frame(0, face_jpegs[0], limits)
    assert err.value.kind is ErrorKind.TOO_LARGE and err.value.subject == "frame"
    with pytest.raises(ServingError, match="not a decodable JPEG") as err:
        jpeg_frame(0, b"\xff\xd8garbage" * 10)
    assert err.value.kind is ErrorKind.INVALID_MEDIA
    with pytest.raises(ServingError, match="over the frame-size limit|over the 200x200 limit"):
        jpeg_frame(0, face_jpegs[0], S.StreamLimits(max_frame_width=200, max_frame_height=200))
    with pytest.raises(ServingError, match="over the 200x200 limit"):
        rgb_frame(0, np.zeros((300, 100, 3), np.uint8), limits)
    with pytest.raises(ServingError, match="uint8"):
        rgb_frame(0, np.zeros((30, 10), np.uint8))
    # raw RGB and JPEG frames go through the same resize as decoded video frames
    rgb = next(testmedia.video_frames(320, 240, 1, 1.0))
    a, b = rgb_frame(0, rgb), jpeg_frame(0, _jpeg(rgb, 100))
    assert a.rgb.shape == b.rgb.shape == (*C.RESIZE_HW, 3)
    assert np.abs(a.rgb.astype(int) - b.rgb).mean() < 3  # JPEG loss only
    assert a.qa_copy().shape == b.qa_copy().shape == (240, 320, 3)  # under 360 px: kept as is


def test_limits_from_params() -> None:
    limits = S.StreamLimits.from_params({"max_streams": "3", "idle_timeout_s": "2.5", "unrelated": "x", "max_fps": ""})
    assert limits.max_streams == 3 and limits.idle_timeout_s == 2.5 and limits.max_fps == 30.0


def test_frontend_config_message_and_close_codes() -> None:
    from fusion_emotion.frontend.stream import CLOSE_UNSUPPORTED, StreamClose, StreamSettings, close_code, parse_config

    cfg, enc = parse_config('{"sample_rate": 44100, "encoding": "pcm_f32le", "channels": 2, "hop_s": 0.5}')
    assert (cfg.sample_rate, cfg.channels, cfg.hop_s, cfg.window_s, enc) == (44_100, 2, 0.5, 4.0, "pcm_f32le")
    for text, code, subject in (
        ("[1]", 1008, "config"),
        ("not json", 1008, "config"),
        ('{"sample_rate": 16000, "encoding": "opus"}', CLOSE_UNSUPPORTED, "encoding"),
        ('{"encoding": "pcm_s16le"}', 1008, "sample_rate"),
        ('{"sample_rate": "16000", "encoding": "pcm_s16le"}', 1008, "sample_rate"),
        ('{"sample_rate": 96000, "encoding": "pcm_s16le"}', CLOSE_UNSUPPORTED, "sample_rate"),
        ('{"sample_rate": 16000, "encoding": "pcm_s16le", "channels": 6}', CLOSE_UNSUPPORTED, "channels"),
        ('{"sample_rate": 16000, "encoding": "pcm_s16le", "window_s": 20}', 1008, "window_s"),
        ('{"sample_rate": 16000, "encoding": "pcm_s16le", "gain": 2}', 1008, "config"),
    ):
        with pytest.raises(StreamClose) as err:
            parse_config(text)
        assert (err.value.code, err.value.error.subject) == (code, subject), text
    assert close_code(ServingError(ErrorKind.TOO_LARGE, "stream", "duration")) == 4413
    assert close_code(ServingError(ErrorKind.TOO_LARGE, "audio", "big")) == 1009
    assert close_code(ServingError(ErrorKind.DEADLINE, "stream", "idle")) == 4408
    settings = StreamSettings.from_env({"FUSION_EMOTION_MAX_STREAMS": "3", "FUSION_EMOTION_STREAM_MAX_LAG_HOPS": "4"})
    assert settings.max_streams == 3 and settings.max_lag_hops == 4.0
    assert settings.transport_max_bytes > settings.max_message_bytes * 4 // 3
    with pytest.raises(ValueError):
        StreamSettings.from_env({"FUSION_EMOTION_MAX_STREAMS": "0"})
