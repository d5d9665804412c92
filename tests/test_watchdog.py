"""The stub watchdog of `fusion-emotion triton` (server.watchdog.watch) against a scripted server."""

from __future__ import annotations

import subprocess

from fusion_emotion.server import watchdog


class _Proc:
    def __init__(self, ticks: int) -> None:
        self.ticks = ticks

    def wait(self, timeout: float) -> int:
        self.ticks -= 1
        if self.ticks < 0:
            return 0
        raise subprocess.TimeoutExpired("tritonserver", timeout)

    def poll(self) -> None:
        return None


class _Server:
    """stubs() follows a script (one entry per watch tick); reload_model() records and 'restarts' a stub."""

    def __init__(self, script: list[dict[int, str]]) -> None:
        self.script = script
        self.tick = 0
        self.proc = _Proc(len(script))
        self.reloads: list[str] = []
        self.extra: dict[int, str] = {}

    def ready(self, timeout: float = 1.0) -> bool:
        return True

    def stubs(self) -> dict[int, str]:
        current = self.script[min(self.tick, len(self.script) - 1)]
        return {**current, **self.extra}

    def reload_model(self, name: str) -> None:
        self.reloads.append(name)
        self.extra[900 + len(self.reloads)] = name

    def advance(self) -> None:
        self.tick += 1


def _run(script: list[dict[int, str]]) -> _Server:
    server = _Server(script)
    original = server.proc.wait

    def wait(timeout: float) -> int:
        server.advance()
        return original(timeout)

    server.proc.wait = wait  # type: ignore[method-assign]
    watchdog.watch(server, lambda: False, max_reloads=3, period_s=0.0)  # type: ignore[arg-type]
    return server


def test_a_model_reloaded_on_purpose_is_not_a_dead_stub() -> None:
    a, b = {1: "stream", 2: "audio"}, {3: "stream", 2: "audio"}  # stream's stub 1 replaced by 3 (load API)
    server = _run([a, a, {**a, 3: "stream"}, b, b, b])
    assert server.reloads == []


def test_a_dead_stub_is_reloaded() -> None:
    a = {1: "stream", 2: "audio"}
    server = _run([a, a, {2: "audio"}, {2: "audio"}, {2: "audio"}])
    assert server.reloads == ["stream"]
