"""``/stream``'s per-stream pacing: wall-clock rate limits and the joining of small audio messages.

A client above its byte rate is read more slowly (TCP then slows it down), as a client ahead of its updates
is; one above its message rate is refused (1008); frames above the frame rate are dropped undecoded. Audio
messages are joined before they become Triton requests, so the number of requests (and the model's work per
request) follows the audio's duration, not the number of messages a client chose to send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from fusion_emotion.core.stream import StreamConfig, needed_native
from fusion_emotion.core.windows import regular_window
from fusion_emotion.frontend.stream_protocol import bad


class TokenBucket:
    """``rate`` units per second with one second of burst; :meth:`delay_s` says how long to wait after a take."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.clock = clock
        self.tokens = self.rate
        self.at = clock()

    def take(self, amount: float) -> float:
        """Spend ``amount`` (may go into debt); the seconds until the bucket is out of debt again."""
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate) - amount
        self.at = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Pacer:
    """Wall-clock rates of one stream: messages (a flood is refused), bytes (paced), frames (extra ones dropped).

    Messages are refused, not paced: a tiny message costs the client nothing to send, and TCP buffers hold
    ~10^5 of them, which would take minutes to read at a paced rate (with the client's pongs behind them).
    Big messages drain from those buffers in seconds, so bytes are paced.
    """

    def __init__(self, messages_per_s: float, bytes_per_s: float, frames_per_s: float) -> None:
        self.messages = TokenBucket(messages_per_s)
        self.bytes = TokenBucket(bytes_per_s)
        self.frames = TokenBucket(frames_per_s)
        self.waited_s = 0.0
        self.frames_dropped = 0

    async def take(self, nbytes: int) -> None:
        """Count one message: StreamClose past twice the message rate for a second; a sleep over the byte rate."""
        if self.messages.take(1) > 1.0:
            raise bad("message", f"more than {self.messages.rate:g} messages per second (a flood); send fewer, larger")
        delay = self.bytes.take(nbytes)
        if delay > 0:
            self.waited_s += delay
            await asyncio.sleep(delay)

    def frame(self) -> bool:
        """Whether one more frame fits the frame rate now (one that does not is dropped before decoding)."""
        if self.frames.take(1) > 0:
            self.frames.tokens += 1  # not spent: the frame is dropped
            self.frames_dropped += 1
            return False
        return True


class AudioJoiner:
    """Raw PCM messages -> float32 chunks of at least ``coalesce_s`` (a sample split across messages is joined).

    A chunk is also cut where the audio reaches the end of the next update's window (so joining adds no latency
    to updates), before a frame or the end (so the model sees everything in the order it was sent), and once
    audio has waited ``2 * coalesce_s`` of wall time (a slow trickle still reaches the model before its idle
    timeout).
    """

    def __init__(
        self,
        config: StreamConfig,
        dtype: str,
        scale: float,
        coalesce_s: float,
        max_chunk_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.hold_s = 2 * coalesce_s
        self.held_since: float | None = None
        self.dtype = np.dtype(dtype)
        self.scale = scale
        self.frame_bytes = self.dtype.itemsize * config.channels
        self.min_samples = max(1, int(coalesce_s * config.sample_rate))
        self.max_samples = max(1, int(max_chunk_s * config.sample_rate))
        self.pending = bytearray()
        self.sent = 0  # samples (per channel) handed out
        self.next_window = 1
        self.next_needed = self._needed(1)

    def _needed(self, k: int) -> int:
        return needed_native(regular_window(k, self.config.windows).end16, self.config.sample_rate)

    @property
    def pending_samples(self) -> int:
        return len(self.pending) // self.frame_bytes

    def add(self, data: bytes) -> list[np.ndarray]:
        """One message's bytes; the chunks due now."""
        if not self.pending:
            self.held_since = self.clock()
        self.pending += data
        out = []
        while True:
            n = self.pending_samples
            due = min(self.next_needed - self.sent, self.max_samples)
            if n >= due and due > 0:
                out.append(self._take(due))
            elif n >= self.min_samples:
                out.append(self._take(min(n, self.max_samples)))
            else:
                break
        if n and self.held_since is not None and self.clock() - self.held_since >= self.hold_s:
            out.append(self._take(n))
        return out

    def flush(self) -> np.ndarray | None:
        """Every whole sample held (before a frame or the end); None when there is none."""
        n = self.pending_samples
        return self._take(n) if n else None

    def _take(self, n: int) -> np.ndarray:
        nbytes = n * self.frame_bytes
        samples = np.frombuffer(bytes(self.pending[:nbytes]), dtype=self.dtype).astype(np.float32)
        del self.pending[:nbytes]
        self.held_since = self.clock() if self.pending else None
        if self.scale != 1.0:
            samples *= 1.0 / self.scale
        self.sent += n
        while self.next_needed <= self.sent:
            self.next_window += 1
            self.next_needed = self._needed(self.next_window)
        return samples

    @property
    def sent_s(self) -> float:
        return self.sent / self.config.sample_rate
