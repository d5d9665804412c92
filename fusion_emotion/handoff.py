"""Bounded hand-off between threads that gives up when told to stop.

Used by the decode prefetcher (``core.timeline.prefetch``, serving code) and the batch runner
(``client.batch``): dependency-free so both the serving environment and a client install can import it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any


def put_until_stopped(q: queue.Queue[Any], item: Any, stop: threading.Event, poll_s: float = 0.1) -> bool:
    """Put ``item`` into the bounded ``q``, waiting for room; False (not put) once ``stop`` is set.

    A plain blocking put would hang a producer whose consumer has gone away.
    """
    while not stop.is_set():
        try:
            q.put(item, timeout=poll_s)
            return True
        except queue.Full:
            continue
    return False
