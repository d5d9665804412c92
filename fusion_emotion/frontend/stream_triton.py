"""One ``/stream`` session's Triton sequence: its gRPC bidirectional call, bounded, and always ended cleanly.

* The call's responses are read by one pump task into a local queue, and that task is never cancelled while
  the call may still need to carry the END: cancelling a task that waits on a grpc.aio stream read cancels
  the whole call (``grpc/aio/_call.py``), and a cancelled call never delivers the abort, so Triton would hold
  the sequence slot for ``max_sequence_idle_microseconds``. Waiting on the local queue can be cancelled freely.
* :meth:`close` queues the abort + END, ends the request iterator (gRPC half-close once the END is written),
  and waits for Triton to end the call; only past ``close_timeout_s`` is the call cancelled.
* The model acknowledges every request it has taken (a flags-only non-final response); at most
  ``max_outstanding`` requests of a stream are queued here or at Triton unacknowledged, so one stream's
  backlog is bounded in memory and in the model's work, and the model's one instance serves streams in turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import tritonclient.grpc.aio as grpcclient

from fusion_emotion.errors import ErrorKind, ServingError, parse_wire
from fusion_emotion.frontend.stream_protocol import StreamClose
from fusion_emotion.tensors import chunk_inputs, parse_update, stream_outputs

log = logging.getLogger("fusion_emotion.frontend.stream")

_CALL_ENDED = object()


def triton_error(error: Any) -> StreamClose:
    """A Triton error response -> the StreamClose its tagged wire error names."""
    text = str(error.message() if hasattr(error, "message") else error)
    wire = parse_wire(text)
    if wire is None:  # Triton's own error, not one of ours: its words go to the log, never to the client
        log.warning("stream: untagged inference server error: %.300s", text)
        return StreamClose(ServingError(ErrorKind.INTERNAL, "stream", "inference failed"))
    return StreamClose(ServingError(wire.kind, wire.subject, wire.reason))


class TritonSequence:
    """Requests to and responses from one Triton sequence (id ``sid``) on one gRPC stream."""

    def __init__(self, client: Any, model_name: str, sid: int, max_outstanding: int) -> None:
        self.client = client
        self.model_name = model_name
        self.sid = sid
        self.max_outstanding = max_outstanding
        self.requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()  # bounded by send()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()  # (update, final) | StreamClose | _CALL_ENDED
        self.sent = 0  # requests queued (START included)
        self.acked = 0  # requests the model took
        self.peak_outstanding = 0
        self.accepted = False
        self.ended = False  # the final response or an error came
        self.end_written = asyncio.Event()  # the iterator was asked past its last request: the END is written
        self._room = asyncio.Event()
        self._call: Any = None
        self._pump: asyncio.Future | None = None
        self._closing = False

    @property
    def outstanding(self) -> int:
        return self.sent - self.acked

    def _request(self, inputs: list[Any], *, start: bool = False, end: bool = False) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "inputs": inputs,
            "outputs": stream_outputs(grpcclient),
            "sequence_id": self.sid,
            "sequence_start": start,
            "sequence_end": end,
        }

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self.requests.get()
            if item is None:
                self.end_written.set()
                return
            yield item

    def open(self, **config: Any) -> None:
        """Start the gRPC call and queue the START (the stream's settings)."""
        self._call = self.client.stream_infer(self._iterate())
        self._pump = asyncio.ensure_future(self._read())
        self.requests.put_nowait(self._request(chunk_inputs(grpcclient, **config), start=True))
        self.sent += 1

    async def _read(self) -> None:
        """The pump: every response into the local queue; acknowledgements counted, not queued."""
        try:
            async for result, error in self._call:
                if error is not None:
                    self.ended = True
                    self.responses.put_nowait(triton_error(error))
                    continue
                update, final = parse_update(result)
                if update is None and not final:
                    if self.accepted:
                        self.acked += 1
                        self._room.set()
                        continue
                    self.accepted = True
                self.ended = self.ended or final
                self.responses.put_nowait((update, final))
        except asyncio.CancelledError:
            pass  # close() gave up waiting and cancelled the call
        except Exception as exc:  # Triton unreachable: the session says "retry later"
            if not self._closing:
                log.warning("stream %x: gRPC stream failed (%s)", self.sid, type(exc).__name__)
            self.responses.put_nowait(
                StreamClose(ServingError(ErrorKind.OVERLOADED, "stream", "inference server unavailable"))
            )
        finally:
            self.responses.put_nowait(_CALL_ENDED)
            self._room.set()

    async def send(self, inputs: list[Any], *, end: bool = False) -> None:
        """Queue one request, after waiting while ``max_outstanding`` are unacknowledged (the END does not wait)."""
        while not end and self.outstanding >= self.max_outstanding and not self.ended and not self._pump_done():
            self._room.clear()
            await self._room.wait()
        self.requests.put_nowait(self._request(inputs, end=end))
        self.sent += int(not end)
        self.peak_outstanding = max(self.peak_outstanding, self.outstanding)

    def _pump_done(self) -> bool:
        return self._pump is None or self._pump.done()

    async def next_response(self) -> tuple[dict[str, Any] | None, bool]:
        """The next update (or first response): raises the stream's StreamClose for an error or a lost call."""
        item = await self.responses.get()
        if isinstance(item, StreamClose):
            raise item
        if item is _CALL_ENDED:
            self.responses.put_nowait(_CALL_ENDED)  # every later read sees it too
            raise StreamClose(ServingError(ErrorKind.OVERLOADED, "stream", "inference server closed the stream"))
        return item

    async def close(self, finished: bool, timeout_s: float) -> None:
        """Abort the sequence (unless its final response came), END it, and let Triton end the call."""
        if self._call is None:
            return
        self._closing = True
        if not finished:
            self.requests.put_nowait(self._request(chunk_inputs(grpcclient, abort=True), end=True))
        self.requests.put_nowait(None)
        assert self._pump is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._pump), timeout_s)
        except asyncio.TimeoutError:
            log.warning("stream %x: Triton did not end the call within %.1f s (END written: %s); cancelling",
                        self.sid, timeout_s, self.end_written.is_set())  # fmt: skip
            self._call.cancel()
        except asyncio.CancelledError:
            self._call.cancel()
            raise
