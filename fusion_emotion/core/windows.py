"""Windows over time, for files, timelines and live streams: bounds, planning and the one frame-pick rule.

Numpy only (no decoder), so clients can validate a request's window settings before sending it.

* **Bounds**: a window is 1-10 s long and starts every ``hop_s`` (0.5 s to the window length); one
  validation (:func:`window_params`) for every route, with each route's own defaults.
* **Planning**: a file timeline (:func:`plan_file_windows`) knows the whole duration, so its windows
  start every hop and the last one ends at the end; a live stream (:func:`plan_stream_windows`) can only
  look back, so its windows *end* every hop (the first ones shorter) and a partial one closes the stream.
* **The frame-pick rule**: a clip or window samples ``NUM_FRAMES`` target times at the centres of equal
  slices (:func:`sample_times`); each target is served by the first frame shown at or after it, targets
  past the last frame by the last frame (:func:`serves`, :func:`select_frames`). The PyAV sampler applies
  it while decoding, the DALI decoder and live streams on known frame times; all three use these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.errors import ErrorKind, ServingError

MIN_WINDOW_S = 1.0
MAX_WINDOW_S = 10.0
MIN_HOP_S = 0.5

# A frame serves a target time when it is shown at (or, within this slack, just before) the target; frame
# times within it of a window's edge count as inside.
FRAME_TIME_EPS = 1e-6


@dataclass(frozen=True)
class WindowParams:
    """A validated window length and hop, in seconds (:func:`window_params`)."""

    window_s: float
    hop_s: float

    @property
    def window16(self) -> int:
        """The window in 16 kHz samples."""
        return int(round(self.window_s * C.SAMPLE_RATE))

    @property
    def hop16(self) -> int:
        """The hop in 16 kHz samples (a stream's window ends sit on multiples of it)."""
        return int(round(self.hop_s * C.SAMPLE_RATE))


# Each route's defaults: the audio encoder's own window (no padding, no cropping); a timeline's windows
# back to back (on CPU every window costs a full pass of both encoders), a stream's updates every second.
TIMELINE_DEFAULTS = WindowParams(C.AUDIO_WINDOW_SECONDS, C.AUDIO_WINDOW_SECONDS)
STREAM_DEFAULTS = WindowParams(C.AUDIO_WINDOW_SECONDS, 1.0)


def _seconds(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ServingError(ErrorKind.BAD_REQUEST, name, "must be a number of seconds") from None
    if not math.isfinite(out):
        raise ServingError(ErrorKind.BAD_REQUEST, name, "must be a finite number of seconds")
    return out


def window_params(
    window_s: float | None = None, hop_s: float | None = None, defaults: WindowParams = TIMELINE_DEFAULTS
) -> WindowParams:
    """Defaults for missing values (a default hop never exceeds the window); a BAD_REQUEST ``ServingError``
    naming ``window_s`` or ``hop_s`` when a value is not a finite number inside the bounds."""
    window = _seconds("window_s", window_s)
    window = defaults.window_s if window is None else window
    if not MIN_WINDOW_S <= window <= MAX_WINDOW_S:
        raise ServingError(
            ErrorKind.BAD_REQUEST, "window_s", f"{window:g} s is outside [{MIN_WINDOW_S:g}, {MAX_WINDOW_S:g}] s"
        )
    hop = _seconds("hop_s", hop_s)
    hop = min(defaults.hop_s, window) if hop is None else hop
    if not MIN_HOP_S <= hop <= window:
        raise ServingError(
            ErrorKind.BAD_REQUEST, "hop_s", f"{hop:g} s is outside [{MIN_HOP_S:g} s, window_s = {window:g} s]"
        )
    return WindowParams(window, hop)


# --------------------------------------------------------------------------- planning


def plan_file_windows(duration_s: float, params: WindowParams) -> np.ndarray:
    """A file's window ``[start, end]`` pairs (float64 [W, 2], seconds from the media start), in time order.

    Windows start every ``hop_s``; a last window ending exactly at the end is added when the regular ones
    stop short of it, so the whole media is covered. Media shorter than one window gives one window
    spanning all of it.
    """
    if not duration_s > 0:
        raise ValueError(f"duration must be > 0, got {duration_s}")
    w, h = params.window_s, params.hop_s
    if duration_s <= w + 1e-9:
        return np.array([[0.0, float(duration_s)]])
    count = int(math.floor((duration_s - w) / h + 1e-9)) + 1
    starts = np.arange(count, dtype=np.float64) * h
    if starts[-1] + w < duration_s - 1e-6:
        starts = np.append(starts, duration_s - w)
    return np.stack([starts, starts + w], axis=1)


@dataclass(frozen=True)
class StreamWindow:
    """One live update's span, in 16 kHz samples of stream time."""

    index: int  # 1, 2, ... for regular windows (end = index * hop); 0 for the last, partial one
    start16: int
    end16: int

    @property
    def t_start(self) -> float:
        return self.start16 / C.SAMPLE_RATE

    @property
    def t_end(self) -> float:
        return self.end16 / C.SAMPLE_RATE


def regular_window(index: int, params: WindowParams) -> StreamWindow:
    """A stream's ``index``-th regular window: it ends at ``index`` hops and looks back one window."""
    end = index * params.hop16
    return StreamWindow(index, max(0, end - params.window16), end)


def closing_window(total16: int, regular: int, params: WindowParams) -> StreamWindow | None:
    """At a stream's end: the partial window ending at its last sample, unless regular window
    ``regular`` (the last one handed out) already ended there."""
    if total16 <= regular * params.hop16:
        return None
    return StreamWindow(0, max(0, total16 - params.window16), total16)


def plan_stream_windows(total16: int, params: WindowParams) -> list[StreamWindow]:
    """Every window of a stream of ``total16`` samples (16 kHz): one per hop, then the partial last one."""
    regular = total16 // params.hop16
    out = [regular_window(k, params) for k in range(1, regular + 1)]
    last = closing_window(total16, regular, params)
    return out + ([last] if last is not None else [])


# --------------------------------------------------------------------------- the frame-pick rule


def sample_times(duration_s: float, num: int = C.NUM_FRAMES, start_s: float = 0.0) -> np.ndarray:
    """Centres of ``num`` equal slices of a span: uniform sampling over time."""
    return start_s + (np.arange(num, dtype=np.float64) + 0.5) * (duration_s / num)


def window_frame_times(windows: np.ndarray, offset_s: float = 0.0, num: int = C.NUM_FRAMES) -> np.ndarray:
    """Stream times of the ``num`` frames sampled inside each ``[start, end]`` window: float64 [W, num].

    The clip rule, so a window spanning the whole media samples exactly the clip-level frames.
    """
    return np.stack([sample_times(float(e - s), num, float(s) + offset_s) for s, e in windows])


def serves(frame_time: float, target: float) -> bool:
    """The rule for one frame and one target, as a decoder applies it while frames arrive in time order:
    the first frame at or after the target serves it."""
    return frame_time + FRAME_TIME_EPS >= target


def select_frames(frame_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target, the index of the frame that serves it (:func:`serves`), else the last frame.

    ``frame_times`` are the candidate frames' times in presentation order.
    """
    times = np.asarray(frame_times, dtype=np.float64).reshape(-1)
    if times.size == 0:
        raise ValueError("no frames to select from")
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    return np.minimum(np.searchsorted(times, targets - FRAME_TIME_EPS, side="left"), times.size - 1)


def pick_in_window(times: np.ndarray, t_start: float, t_end: float, num: int = C.NUM_FRAMES) -> np.ndarray | None:
    """Indices into ``times`` (ascending) of the ``num`` frames of window ``[t_start, t_end]``, or None.

    Only frames inside the window count (a live stream's frames outside it belong to other windows); a
    window without frames has no video.
    """
    times = np.asarray(times, dtype=np.float64)
    inside = np.flatnonzero((times >= t_start - FRAME_TIME_EPS) & (times <= t_end + FRAME_TIME_EPS))
    if inside.size == 0:
        return None
    return inside[select_frames(times[inside], sample_times(t_end - t_start, num, t_start))]
