"""Run by tests/test_sagemaker_stream.py with .venv-py312: one stream through the real SDK client, as JSON.

argv[1] is a JSON object: endpoint_url, ca_bundle, pcm (path of int16 mono PCM), sample_rate, and the
options of SageMakerTarget (path, query, fragment_bytes, config_as_binary) plus realtime and seconds. Prints one JSON
line per update as it arrives ("update"), then the outcome ("result"), or the SDK's error ("raised").
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fusion_emotion.client.sagemaker_stream import SageMakerTarget, connect_sagemaker
from fusion_emotion.client.stream import MediaSource, play, stream_config


def _emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({kind: fields}) + "\n")
    sys.stdout.flush()


async def main(spec: dict[str, Any]) -> None:
    pcm = np.frombuffer(Path(spec["pcm"]).read_bytes(), "<i2")
    if spec.get("seconds"):  # the audio repeated to this length
        pcm = np.resize(pcm, int(spec["seconds"] * spec["sample_rate"]))
    pcm = pcm[:, None]
    source = MediaSource(pcm, int(spec["sample_rate"]))
    query = stream_config(source) if spec.get("query") else None
    target = SageMakerTarget(
        "fusion-emotion-test", "us-east-1", endpoint_uri=spec["endpoint_url"], ca_file=spec["ca_bundle"],
        path=spec.get("path"), query=query, fragment_bytes=spec.get("fragment_bytes"),
        config_as_binary=bool(spec.get("config_as_binary")),
    )  # fmt: skip
    connection: dict[str, Any] = {}

    def connect() -> Any:
        cm = connect_sagemaker(target)

        class Keep:  # remember the connection for its close reason
            async def __aenter__(self) -> Any:
                connection["c"] = await cm.__aenter__()
                return connection["c"]

            async def __aexit__(self, *exc: Any) -> Any:
                return await cm.__aexit__(*exc)

        return Keep()

    def on_message(msg: dict[str, Any]) -> None:
        if "t_end" in msg:
            _emit("update", **msg)

    try:
        result = await play("", source, realtime=bool(spec.get("realtime")), connect=connect,
                            send_config=query is None, on_message=on_message)  # fmt: skip
    except Exception as exc:  # the SDK's modeled errors (ModelError 424, InputValidationError 400)
        _emit("raised", type=type(exc).__name__, message=str(getattr(exc, "message", exc)))
        return
    c = connection.get("c")
    _emit("result", updates=result.updates, errors=result.errors, ready=result.ready, close_code=result.close_code,
          close_reason=c.close_reason if c else None)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
