"""Where the playground sends a file: a front end (``--url``) or a SageMaker endpoint, through the clients.

The page posts one file as a raw body with its media type and the timeline options; the front end gets
them as they are (``client.http.post_raw_answer``), an endpoint through ``invoke_endpoint`` with the
options in ``CustomAttributes`` (SageMaker passes no query string). Answers and error statuses come back
as the service gave them; only a service that cannot be reached is worded here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import botocore.exceptions
import httpx

from fusion_emotion import contract as C
from fusion_emotion.client.http import FrontendError, invoke_endpoint_answer, post_raw_answer
from fusion_emotion.frontend.timeline import JSON_KEYS

log = logging.getLogger(__name__)

FORWARD_TIMEOUT_S = 120.0  # above the front end's own deadline (55 s), so its 504 is what the page sees


@dataclass(frozen=True)
class Target:
    """Exactly one of ``url``, ``endpoint`` or ``triton``."""

    url: str | None = None
    endpoint: str | None = None
    region: str | None = None
    triton: str | None = None
    # The endpoint's bidirectional-streaming API elsewhere than AWS's (a VPC endpoint, the local stand-in),
    # and the CA bundle its TLS certificate is checked against.
    stream_endpoint_url: str | None = None
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.url, self.endpoint, self.triton)) != 1:
            raise ValueError("give exactly one target: a front end URL, a SageMaker endpoint or a Triton address")
        if self.endpoint is None and (self.region, self.stream_endpoint_url, self.ca_bundle) != (None, None, None):
            raise ValueError("--region, --stream-endpoint-url and --ca-bundle go with --sagemaker-endpoint")

    def describe(self) -> str:
        if self.url is not None:
            return f"the front end at {self.url}"
        if self.endpoint is not None:
            return f"SageMaker endpoint {self.endpoint}" + (f" ({self.region})" if self.region else "")
        return f"Triton at {self.triton}"


def stream_url(url: str) -> str:
    """``http://HOST:PORT[/...]`` -> ``ws://HOST:PORT/stream`` (https -> wss): the front end's WebSocket."""
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, "/stream", "", ""))


@dataclass(frozen=True)
class Reply:
    """What the page gets back: a status, a JSON body and the response attributes to pass on."""

    status: int
    body: dict[str, Any]
    attributes: str | None = None

    def headers(self) -> dict[str, str]:
        return {C.RESPONSE_ATTRIBUTES_HEADER: self.attributes} if self.attributes else {}


def options_of(query: dict[str, str]) -> dict[str, str]:
    """The request options the page sent (``timeline``, ``window_s``, ``hop_s``); others are not forwarded."""
    return {k: v for k, v in query.items() if k in JSON_KEYS}


def forward_file(
    target: Target, data: bytes, content_type: str, options: dict[str, str], runtime_client: Any = None
) -> Reply:
    """One file to the target (blocking: run it in a thread); ``runtime_client``: a sagemaker-runtime client."""
    try:
        if target.url is not None:
            answer = post_raw_answer(target.url, data, content_type, params=options, timeout=FORWARD_TIMEOUT_S)
        else:
            assert target.endpoint is not None
            attributes = ",".join(f"{k}={v}" for k, v in options.items()) or None
            answer = invoke_endpoint_answer(
                target.endpoint, data, content_type, custom_attributes=attributes, client=runtime_client,
                region=target.region,
            )  # fmt: skip
    except FrontendError as exc:
        return Reply(exc.status, exc.payload or {"error": exc.message})
    except httpx.HTTPError as exc:
        log.warning("front end not reachable: %s", type(exc).__name__)
        return Reply(502, {"error": f"{target.describe()} could not be reached ({type(exc).__name__})"})
    except botocore.exceptions.ClientError as exc:  # SageMaker's own refusal (no such endpoint, access denied)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 502)
        return Reply(status, {"error": str(exc)})
    except botocore.exceptions.BotoCoreError as exc:  # no credentials, no region, no connection
        return Reply(502, {"error": f"{target.describe()}: {exc}"})
    return Reply(200, answer.payload, answer.attributes)
