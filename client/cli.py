"""``fusion-emotion predict``: one file (plus optional WAV) -> the product's JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import tritonclient.grpc as grpcclient
from fusion_emotion.client.http import predict_sagemaker_endpoint, predict_url
from fusion_emotion.client.triton import infer_grpc

from fusion_emotion import contract as C
from fusion_emotion.core.result import result_dict

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".wave"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict emotions for a video (MP4/FLV/AVI) or a WAV file")
    add_media_arguments(p)
    route = p.add_mutually_exclusive_group(required=True)
    route.add_argument("--triton", metavar="HOST:PORT", help="Triton gRPC endpoint")
    route.add_argument(
        "--local", metavar="DIR", type=Path, help="run the reference pipeline in-process on a model repository"
    )
    route.add_argument("--url", metavar="URL", help="fusion-emotion front end, e.g. http://127.0.0.1:8080")
    route.add_argument("--sagemaker-endpoint", metavar="NAME", help="SageMaker endpoint (boto3 invoke_endpoint)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    p.set_defaults(func=run)


def add_media_arguments(p: argparse.ArgumentParser) -> None:
    """FILE and --audio, as every one-file command (predict, timeline) takes them; read with ``read_inputs``."""
    p.add_argument("file", type=Path, help="video (MP4/FLV/AVI) or audio (WAV) file")
    p.add_argument("--audio", type=Path, help="WAV to use instead of the video's own audio track")


def read_inputs(file: Path, audio: Path | None) -> tuple[bytes | None, bytes | None]:
    data = file.read_bytes()
    if file.suffix.lower() in AUDIO_SUFFIXES:
        if audio is not None:
            raise ValueError("give a video as FILE when --audio is used")
        return None, data
    return data, audio.read_bytes() if audio else None


def predict(args: argparse.Namespace, video: bytes | None, audio: bytes | None) -> dict:
    if args.local:
        from fusion_emotion.core.pipeline import ReferencePipeline  # optional: [models]

        probs, flags = ReferencePipeline(args.local).predict(video, audio)
        return result_dict(probs, flags)
    if args.triton:
        return result_dict(*infer_grpc(args.triton, video, audio, timeout_s=args.timeout))
    if args.url:
        return predict_url(args.url, video, audio, timeout=args.timeout)

    return predict_sagemaker_endpoint(args.sagemaker_endpoint, video, audio)


def weights_provenance(args: argparse.Namespace) -> str | None:
    """The repository's weights provenance (None when the route cannot tell)."""

    if args.local:
        text = (args.local / C.ENSEMBLE / "config.pbtxt").read_text()
        marker = f'key: "{C.PROVENANCE_PARAMETER}" value {{ string_value: "'
        return text.split(marker, 1)[1].split('"', 1)[0] if marker in text else None
    if args.triton:
        with grpcclient.InferenceServerClient(args.triton) as client:
            params = client.get_model_config(C.ENSEMBLE, as_json=True)["config"].get("parameters", {})
        return params.get(C.PROVENANCE_PARAMETER, {}).get("string_value")
    return None


def run(args: argparse.Namespace) -> int:
    # Only the in-process route decodes media here; the others must not import the decoder
    # (PyAV, scipy), which a client install (`pip install fusion-emotion[client]`) does not have.
    local_errors: tuple[type[Exception], ...] = ()
    if args.local:
        from fusion_emotion.core.probe import MediaError  # optional: [models]

        local_errors = (MediaError,)
    try:
        video, audio = read_inputs(args.file, args.audio)
        result = predict(args, video, audio)
        provenance = weights_provenance(args)
        if provenance and provenance.startswith("UNTRAINED"):
            log.warning("%s", provenance)
    except (OSError, ValueError, *local_errors) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # server-side errors (tritonclient, HTTP) reach the user as one line
        log.error("prediction failed: %s", exc)
        return 1
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0
