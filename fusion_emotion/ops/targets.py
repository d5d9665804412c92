"""What ``fusion-emotion bench`` loads: the service through each route, or the lean pipeline in-process.

Each target answers one request for the benchmark clip (``send`` raises on failure); the old design
(eager PyTorch) is ``fusion_emotion.ops.baseline.BaselineTarget``, beside these.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import boto3
import httpx
import tritonclient.grpc as grpcclient
from botocore.config import Config

from fusion_emotion import contract as C
from fusion_emotion.client.http import decode_response, encode_multipart, predict_sagemaker_endpoint
from fusion_emotion.tensors import build_inputs, parse_result, requested_outputs


class Target:
    """Something that answers one request for the benchmark clip; ``send`` raises on failure."""

    name = "target"
    triton_url: str | None = None
    server_pids: list[int] | None = None  # None: the work happens in this process

    def send(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release clients or models."""


class RemoteTarget(Target):
    """A target served by other processes: CPU is only metered with ``server_pids``."""


class HttpTarget(RemoteTarget):
    """The HTTP front end, one multipart POST per request (same body as ``predict --url``)."""

    def __init__(self, url: str, video: bytes | None, audio: bytes | None, concurrency: int, timeout_s: float = 120.0):
        parts = url.rstrip("/")
        self.url = parts if parts.count("/") > 2 else parts + "/invocations"
        self.name = f"http {self.url}"
        self.body, self.content_type = encode_multipart(video, audio)
        limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
        self.client = httpx.Client(timeout=timeout_s, limits=limits)

    def send(self) -> None:
        resp = self.client.post(self.url, content=self.body, headers={"Content-Type": self.content_type})
        payload = decode_response(resp.status_code, resp.content)
        if "dominant_emotion" not in payload:
            raise RuntimeError(f"unexpected response keys {sorted(payload)[:8]}")

    def close(self) -> None:
        self.client.close()


class TritonTarget(RemoteTarget):
    """The ``fusion_emotion`` ensemble over gRPC, one client per worker thread."""

    def __init__(self, url: str, video: bytes | None, audio: bytes | None, timeout_s: float = 120.0) -> None:
        self.name = f"triton {url}"
        self.triton_url = url
        self.grpc = grpcclient
        self.inputs = build_inputs(video, audio, grpcclient)
        self.outputs = requested_outputs(grpcclient)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self.grpc.InferenceServerClient(self.triton_url)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def send(self) -> None:
        result = self._client().infer(C.ENSEMBLE, self.inputs, outputs=self.outputs, client_timeout=self.timeout_s)
        probs, _ = parse_result(result)
        if probs is None or probs.shape[-1] != C.NUM_CLASSES:
            raise RuntimeError("response without probabilities")

    def close(self) -> None:
        for c in self._clients:
            c.close()


class SageMakerTarget(RemoteTarget):
    """A SageMaker endpoint running the front end (boto3 ``invoke_endpoint``)."""

    def __init__(self, endpoint: str, video: bytes | None, audio: bytes | None, region: str | None = None) -> None:
        self.name = f"sagemaker {endpoint}"
        self.endpoint, self.video, self.audio = endpoint, video, audio
        self.client = boto3.client("sagemaker-runtime", region_name=region, config=Config(max_pool_connections=64))

    def send(self) -> None:
        predict_sagemaker_endpoint(self.endpoint, self.video, self.audio, client=self.client)


class LocalTarget(Target):
    """The lean pipeline in-process: same preprocessing, encoders and head, no server."""

    def __init__(self, repository: str | Path, video: bytes | None, audio: bytes | None, intra_op_threads: int = 0):
        from fusion_emotion.core.pipeline import ReferencePipeline  # optional: [models]

        self.name = f"local {repository}"
        self.pipeline = ReferencePipeline(repository, intra_op_threads=intra_op_threads)
        self.video, self.audio = video, audio

    def send(self) -> None:
        self.pipeline.predict(self.video, self.audio)
