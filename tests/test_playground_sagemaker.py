"""The playground's Live view against a SageMaker endpoint: the page's /stream relayed through the endpoint's
bidirectional stream (AWS's SDK on awscrt, in .venv-py312), played here by the stand-in of SageMaker's bridge,
to the real front end and tritonserver. The same updates as over /stream directly; the container's close
code and reason reach the page."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from fusion_emotion.client.stream import MediaSource, play
from test_sagemaker_stream import ENV, _py312, _same_updates, direct, frontend, speech, standin  # noqa: F401

from fusion_emotion.frontend.stream import CLOSE_UNSUPPORTED
from fusion_emotion.server.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def playground(standin: dict[str, str]) -> Iterator[str]:  # noqa: F811 - the fixture imported above
    """`fusion-emotion ui --sagemaker-endpoint` in Python 3.12, pointed at the stand-in."""
    port = free_port()
    proc = subprocess.Popen(
        [_py312(), "-m", "fusion_emotion.cli", "ui", "--sagemaker-endpoint", "fusion-emotion", "--region",
         "us-east-1", "--stream-endpoint-url", standin["endpoint_url"], "--ca-bundle", standin["ca_bundle"],
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/ui/config.json", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "the playground did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)


def test_live_view_streams_through_the_sagemaker_endpoint(playground: str, speech, direct) -> None:  # noqa: F811
    config = httpx.get(f"{playground}/ui/config.json").json()
    assert config["live_unavailable"] is None  # the SDK is there: Live is on for an endpoint
    result = asyncio.run(play(playground.replace("http://", "ws://") + "/stream", speech["source"]))
    assert result.close_code == 1000 and not result.errors, result
    _same_updates(result.updates, direct)


def test_container_refusal_reaches_the_page(playground: str, speech) -> None:  # noqa: F811
    bad = MediaSource(speech["source"].pcm, 1000)  # a rate the stream refuses
    result = asyncio.run(play(playground.replace("http://", "ws://") + "/stream", bad))
    assert result.close_code == CLOSE_UNSUPPORTED and not result.updates, result
    (error,) = result.errors
    assert error["subject"] == "sample_rate" and error["close_code"] == CLOSE_UNSUPPORTED
