"""Progress for long client runs: a redrawn bar on a terminal, a log line now and then otherwise.

Counts (ok / failed / skipped), rate and ETA; the total may become known late
(it is counted in the background while the work streams), and the ETA appears
once it is.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    """``3725`` -> ``1h02m``; ``42`` -> ``42s``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{int(seconds) % 60:02d}s"


class Progress:
    """Call ``update`` once per finished item and ``skip`` per item answered before; ``close`` at the end."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        interval_s: float = 30.0,
        width: int = 24,
        tty: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.interval_s = interval_s
        self.width = width
        self.ok = self.failed = self.skipped = 0
        self.media_s = 0.0
        self.start = time.monotonic()
        self._last_emit = self.start
        self._last_draw = 0.0

    @property
    def done(self) -> int:
        """Items finished in this run (not counting skipped)."""
        return self.ok + self.failed

    def rate(self) -> float:
        """Items per second in this run."""
        elapsed = time.monotonic() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        if self.total is None:
            return None
        rate = self.rate()
        remaining = self.total - self.skipped - self.done
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate > 0 else None

    def line(self) -> str:
        seen = self.skipped + self.done
        total = "?" if self.total is None else str(self.total)
        eta = self.eta_s()
        parts = [
            f"{self.label}: {seen}/{total}",
            f"ok {self.ok}",
            f"failed {self.failed}",
        ]
        if self.skipped:
            parts.append(f"skipped {self.skipped}")
        parts += [f"{self.rate() * 60:.1f}/min", f"media {self.media_s / 3600:.2f} h"]
        parts.append(f"ETA {format_seconds(eta)}" if eta is not None else "ETA ?")
        return ", ".join(parts)

    def _bar(self) -> str:
        if not self.total:
            return ""
        filled = int(self.width * min(1.0, (self.skipped + self.done) / self.total))
        return "[" + "#" * filled + "-" * (self.width - filled) + "] "

    def tick(self, force: bool = False) -> None:
        """Redraw (terminal, at most 10 times a second) or log (every ``interval_s``)."""
        now = time.monotonic()
        if self.tty:
            if force or now - self._last_draw >= 0.1:
                self.stream.write("\r\x1b[K" + self._bar() + self.line())
                self.stream.flush()
                self._last_draw = now
        elif force or now - self._last_emit >= self.interval_s:
            log.info("%s", self.line())
            self._last_emit = now

    def update(self, ok: bool, media_s: float | None = None) -> None:
        if ok:
            self.ok += 1
            self.media_s += media_s or 0.0
        else:
            self.failed += 1
        self.tick()

    def skip(self) -> None:
        self.skipped += 1
        self.tick()

    def close(self) -> None:
        self.tick(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
