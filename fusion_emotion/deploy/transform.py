"""SageMaker Batch Transform for ``fusion-emotion batch --transform-job``: a library of clips at scale.

SageMaker runs the job on its own instances: one record per S3 object
(``BatchStrategy=SingleRecord``, ``SplitType=None``), each posted as a raw body
with the job's content type to our container's ``/invocations``, the answer
stored as ``<output>/<relative key>.out``. This module:

1. lists the input prefix and writes a manifest of the media objects that fit
   ``MaxPayloadInMB`` (the others get error lines straight away, in a
   ``skipped.jsonl`` beside it), so non-media objects never reach the container
   and fail the job;
2. creates the model (``deploy``'s code) and the transform job, with the
   container's body limit, deadline and default options (``--timeline``) in the
   job environment;
3. with ``--wait``, follows the job (status and outputs written so far) and
   gathers every ``.out`` into one JSONL in the ``batch`` format, with an error
   line for each input that has none (SageMaker writes no output for a record
   the container refused, and marks the job Failed).

Everything goes through one boto3 session, so ``AWS_ENDPOINT_URL`` points it at
moto in the tests. The ``batch --transform-job`` / ``--attach`` command line is ``transform_cli``.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from fusion_emotion import aws
from fusion_emotion import contract as C
from fusion_emotion.client.batch_inputs import describe_error
from fusion_emotion.client.batch_runner import Summary, run_batch
from fusion_emotion.client.progress import format_seconds
from fusion_emotion.client.results import ResultsFile
from fusion_emotion.deploy import config as dc
from fusion_emotion.deploy import sagemaker as sm
from fusion_emotion.s3uri import S3Uri

log = logging.getLogger(__name__)

MAX_PAYLOAD_MB = 100  # SageMaker's per-record maximum for Batch Transform
DEFAULT_INVOCATION_TIMEOUT_S = 600
DEFAULT_MAX_RETRIES = 1
DEFAULT_POLL_S = 60.0
# Under the output prefix, per job: the manifest SageMaker reads and the inputs it was not given.
META_FOLDER = "_fusion-emotion"
TERMINAL = ("Completed", "Failed", "Stopped")
_SIZE_VCPUS = {"medium": 1, "large": 2, "xlarge": 4}


class TransformError(RuntimeError):
    """A transform-job step failed; the message says which and why."""


@dataclass
class TransformConfig:
    input: str  # s3://bucket/prefix/
    output: str  # s3://bucket/prefix/ for the .out objects
    model: dc.DeployConfig  # image, tarball, role, instances; endpoint_name = the job's base name
    content_type: str | None = None
    options: str = ""  # the container's default request options, e.g. "timeline=true,window_s=4"
    timeline: bool = False
    max_payload_mb: int = MAX_PAYLOAD_MB
    max_concurrent: int | None = None
    invocation_timeout_s: int = DEFAULT_INVOCATION_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES


@dataclass
class InputPlan:
    prefix: str  # s3://bucket/prefix/ the manifest entries are relative to
    count: int
    skipped: int
    content_type: str
    manifest_uri: str
    skipped_uri: str | None


@dataclass
class SubmitResult:
    job_name: str
    model_name: str
    plan: InputPlan
    request: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- sizing
def instance_vcpus(instance_type: str) -> int | None:
    """vCPUs from the size part of ``ml.<family>.<size>`` (xlarge 4, 2xlarge 8, ...); None if unknown."""
    size = instance_type.rsplit(".", 1)[-1]
    if size in _SIZE_VCPUS:
        return _SIZE_VCPUS[size]
    m = re.fullmatch(r"(\d+)xlarge", size)
    return 4 * int(m.group(1)) if m else None


def default_concurrency(instance_type: str, timeline: bool) -> int:
    """Requests in flight per instance, matched to what one instance serves.

    Whole clips: decoding binds (perf/README.md), one request per vCPU keeps every core
    decoding while the GPU batches. Timelines run in one model instance that handles a
    request at a time: two keep it busy without piling work behind the invocation timeout.
    """
    if timeline:
        return 2
    return max(2, instance_vcpus(instance_type) or 4)


# --------------------------------------------------------------------------- inputs
def _meta_prefix(output: S3Uri, job_name: str) -> S3Uri:
    return output.join(META_FOLDER, job_name)


def plan_inputs(s3: Any, cfg: TransformConfig, job_name: str) -> InputPlan:
    """List INPUT once (streamed), write the manifest and the skipped lines, upload both."""
    src = dc.s3_argument(cfg.input, "INPUT")
    out = dc.s3_argument(cfg.output, "--output")
    list_prefix = src.key + "/" if src.key else ""
    prefix_uri = f"s3://{src.bucket}/{list_prefix}"
    meta = _meta_prefix(out, job_name)
    limit = cfg.max_payload_mb * 1024 * 1024
    types: set[str] = set()
    count = skipped = 0
    with (
        tempfile.TemporaryFile("w+b") as manifest,
        tempfile.TemporaryFile("w+b") as skipped_lines,
    ):
        # One entry per line so gathering can read the manifest back streamed.
        manifest.write(json.dumps([{"prefix": prefix_uri}])[:-1].encode())
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=src.bucket, Prefix=list_prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/") or (out.bucket == src.bucket and key.startswith(out.join(META_FOLDER).key + "/")):
                    continue
                uri = f"s3://{src.bucket}/{key}"
                media_type = C.media_type_for(key)
                reason = None
                if media_type is None:
                    reason = "not sent: not a media file (by extension)"
                elif int(obj.get("Size", 0)) > limit:
                    reason = f"not sent: {obj['Size']} bytes, over MaxPayloadInMB ({cfg.max_payload_mb} MB)"
                if reason:
                    skipped_lines.write(
                        json.dumps({"source": uri, "status": "error", "error": reason}).encode() + b"\n"
                    )
                    skipped += 1
                    continue
                types.add(media_type)
                manifest.write(b",\n" + json.dumps(key[len(list_prefix) :]).encode())
                count += 1
        manifest.write(b"\n]\n")
        if count == 0:
            raise TransformError(f"no media objects under {prefix_uri} ({skipped} other objects)")
        content_type = cfg.content_type or (types.pop() if len(types) == 1 else C.RAW_SNIFF_TYPE)
        manifest_key = meta.join("inputs.manifest")
        manifest.seek(0)
        s3.upload_fileobj(manifest, manifest_key.bucket, manifest_key.key)
        skipped_uri = None
        if skipped:
            skipped_key = meta.join("skipped.jsonl")
            skipped_lines.seek(0)
            s3.upload_fileobj(skipped_lines, skipped_key.bucket, skipped_key.key)
            skipped_uri = str(skipped_key)
    log.info("inputs: %d media objects (%s), %d not sent", count, content_type, skipped)
    return InputPlan(prefix_uri, count, skipped, content_type, str(manifest_key), skipped_uri)


def read_manifest(s3: Any, uri: str) -> tuple[str, Iterator[str]]:
    """``(prefix, relative keys)`` of a manifest, streamed line by line (our one-entry-per-line layout,
    falling back to parsing the whole JSON for manifests written by others)."""
    loc = dc.s3_argument(uri, "manifest")
    body = s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
    lines = body.iter_lines()
    first = next(lines, b"").strip()
    try:
        header = json.loads(first.rstrip(b",").decode() + "]")
        prefix = header[0]["prefix"]
    except (ValueError, KeyError, IndexError, TypeError):
        whole = json.loads(first + b"".join(lines))
        return whole[0]["prefix"], iter([e for e in whole[1:] if isinstance(e, str)])

    def entries() -> Iterator[str]:
        for raw in lines:
            text = raw.strip().rstrip(b",").strip()
            if text and text != b"]":
                yield json.loads(text)

    return prefix, entries()


# --------------------------------------------------------------------------- job
def transform_job_request(cfg: TransformConfig, job_name: str, model_name: str, plan: InputPlan) -> dict[str, Any]:
    """The CreateTransformJob request: one object per record, raw bodies, our container's settings."""
    env = {
        dc.ENV_MAX_BODY_BYTES: str(cfg.max_payload_mb * 1024 * 1024),
        # The front end answers (504) before SageMaker's own per-invocation timeout.
        dc.ENV_REQUEST_TIMEOUT_S: str(max(1, cfg.invocation_timeout_s - 10)),
    }
    if cfg.options:
        env[dc.ENV_DEFAULT_OPTIONS] = cfg.options
    return {
        "TransformJobName": job_name,
        "ModelName": model_name,
        "MaxConcurrentTransforms": cfg.max_concurrent or default_concurrency(cfg.model.instance_type, cfg.timeline),
        "MaxPayloadInMB": cfg.max_payload_mb,
        "BatchStrategy": "SingleRecord",
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": cfg.invocation_timeout_s,
            "InvocationsMaxRetries": cfg.max_retries,
        },
        "Environment": env,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": plan.manifest_uri}},
            "ContentType": plan.content_type,
            "CompressionType": "None",
            "SplitType": "None",
        },
        "TransformOutput": {
            "S3OutputPath": str(dc.s3_argument(cfg.output, "--output")),
            "Accept": "application/json",
            "AssembleWith": "None",
        },
        "TransformResources": {"InstanceType": cfg.model.instance_type, "InstanceCount": cfg.model.instance_count},
    }


def validate(cfg: TransformConfig) -> None:
    """Offline checks, before any AWS call."""
    dc.validate_endpoint_name(cfg.model.endpoint_name)
    dc.validate_model_args(cfg.model)
    src = dc.s3_argument(cfg.input, "INPUT (with --transform-job, an s3:// prefix)")
    out = dc.s3_argument(cfg.output, "--output (with --transform-job, an s3:// prefix)")
    inside = not src.key or out.key == src.key or out.key.startswith(src.key + "/")
    if src.bucket == out.bucket and inside:
        raise dc.ArgumentError("--output must not lie inside INPUT (the outputs would become inputs of later jobs)")
    if not 1 <= cfg.max_payload_mb <= MAX_PAYLOAD_MB:
        raise dc.ArgumentError(f"--max-payload-mb must be 1..{MAX_PAYLOAD_MB} (SageMaker's per-record maximum)")
    if cfg.max_concurrent is not None and cfg.max_concurrent < 1:
        raise dc.ArgumentError("--max-concurrent-transforms must be >= 1")
    if not 1 <= cfg.invocation_timeout_s <= 3600:
        raise dc.ArgumentError("--invocation-timeout must be 1..3600 s")
    if cfg.content_type is not None and cfg.content_type not in (
        C.RAW_VIDEO_TYPES | C.RAW_AUDIO_TYPES | {C.RAW_SNIFF_TYPE}
    ):
        raise dc.ArgumentError(f"--content-type {cfg.content_type!r} is not one the container accepts")


def submit(cfg: TransformConfig, session: Any | None = None) -> SubmitResult:
    """Plan the inputs, create the model and the transform job (the model is removed if the job is refused)."""
    validate(cfg)
    session = session or aws.session()
    sagemaker, s3 = session.client("sagemaker"), session.client("s3")
    job_name, _ = sm.resource_names(cfg.model.endpoint_name)
    plan = plan_inputs(s3, cfg, job_name)
    model_data_url = sm.resolve_model_data(session, cfg.model)
    request = transform_job_request(cfg, job_name, job_name, plan)
    try:
        sm.create_model(sagemaker, cfg.model, job_name, model_data_url)
    except ClientError as exc:
        raise TransformError(f"{exc.operation_name} failed: {exc}") from exc
    try:
        log.info(
            "creating transform job %s (%s x %d, %d in flight each)",
            job_name,
            cfg.model.instance_type,
            cfg.model.instance_count,
            request["MaxConcurrentTransforms"],
        )
        sagemaker.create_transform_job(**request)
    except ClientError as exc:
        try:
            sagemaker.delete_model(ModelName=job_name)
            log.info("rolled back model %s", job_name)
        except ClientError as cleanup_exc:
            log.warning("could not roll back model %s: %s", job_name, cleanup_exc)
        raise TransformError(f"{exc.operation_name} failed: {exc}") from exc
    return SubmitResult(job_name, job_name, plan, request)


# --------------------------------------------------------------------------- follow and gather
def _output_location(desc: dict[str, Any]) -> S3Uri:
    return dc.s3_argument(desc["TransformOutput"]["S3OutputPath"], "S3OutputPath")


def list_outputs(s3: Any, output: S3Uri) -> Iterator[str]:
    """Keys of the ``.out`` objects under the output prefix (our own meta folder left out)."""
    prefix = output.key + "/" if output.key else ""
    meta = output.join(META_FOLDER).key + "/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=output.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".out") and not obj["Key"].startswith(meta):
                yield obj["Key"]


def follow(session: Any, job_name: str, total: int | None, poll_s: float = DEFAULT_POLL_S) -> dict[str, Any]:
    """Poll until the job ends, logging its status and how many outputs exist; returns the last description."""
    sagemaker, s3 = session.client("sagemaker"), session.client("s3")
    start = time.monotonic()
    first_count: int | None = None
    while True:
        desc = sagemaker.describe_transform_job(TransformJobName=job_name)
        status = desc["TransformJobStatus"]
        if status in TERMINAL:
            log.info("transform job %s: %s", job_name, status)
            return desc
        done = sum(1 for _ in list_outputs(s3, _output_location(desc)))
        first_count = done if first_count is None else first_count
        elapsed = time.monotonic() - start
        rate = (done - first_count) / elapsed * 60 if elapsed > 0 else 0.0
        eta = ""
        if total and rate > 0:
            eta = f", ETA {format_seconds((total - done) / rate * 60)}"
        log.info(
            "transform job %s: %s, %d/%s outputs, %.1f/min%s",
            job_name,
            status,
            done,
            total if total is not None else "?",
            rate,
            eta,
        )
        time.sleep(poll_s)


def _output_index(s3: Any, output: S3Uri) -> tuple[dict[str, str], dict[str, str | None]]:
    """``.out`` keys by path relative to the output prefix, and by file name (None when ambiguous)."""
    base = output.key + "/" if output.key else ""
    by_rel: dict[str, str] = {}
    by_name: dict[str, str | None] = {}
    for key in list_outputs(s3, output):
        rel = key[len(base) : -len(".out")]
        by_rel[rel] = key
        name = rel.rsplit("/", 1)[-1]
        by_name[name] = None if name in by_name else key
    return by_rel, by_name


def out_record(source: str, body: bytes) -> dict[str, Any]:
    """One ``.out`` (our front end's JSON) -> a ``batch`` JSONL record."""
    payload = json.loads(body)
    if not isinstance(payload, dict) or "dominant_emotion" not in payload:
        raise TransformError(f"output is not a prediction: {str(payload)[:200]}")
    segments = payload.pop("segments", None)
    media_type = C.media_type_for(source)
    record: dict[str, Any] = {
        "source": source,
        "status": "ok",
        "media": C.IN_AUDIO.name if media_type in C.RAW_AUDIO_TYPES else C.IN_VIDEO.name if media_type else None,
        "duration_s": segments[-1]["end"] if segments else None,
        "result": payload,
    }
    if segments is not None:
        record["segments"] = segments
    return record


def gather(
    session: Any,
    desc: dict[str, Any],
    results_path: Path,
    *,
    concurrency: int = 16,
    progress: Any = None,
    stop: Any = None,
) -> Summary:
    """Every input of the job -> one line of ``results_path`` (resumable like ``batch``); returns its Summary."""
    s3 = session.client("s3")
    output = _output_location(desc)
    manifest_uri = desc["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    prefix, entries = read_manifest(s3, manifest_uri)
    by_rel, by_name = _output_index(s3, output)
    status = desc["TransformJobStatus"]
    why = f"transform job {desc['TransformJobName']} {status}" + (
        f": {desc['FailureReason']}" if desc.get("FailureReason") else ""
    )
    results = ResultsFile(results_path)
    results.load()
    skipped: dict[str, dict[str, Any]] = {}  # inputs never sent: their error lines, until written

    def handle(source: str) -> dict[str, Any]:
        rel = source[len(prefix) :]
        key = by_rel.get(rel) or by_name.get(rel.rsplit("/", 1)[-1])
        if key is None:
            return {
                "source": source,
                "status": "error",
                "error": f"no output: the container refused this file or the job ended before it ({why}; "
                "the container's answers are in CloudWatch, /aws/sagemaker/TransformJobs)",
            }
        try:
            body = s3.get_object(Bucket=output.bucket, Key=key)["Body"].read()
            return out_record(source, body)
        except Exception as exc:  # an unreadable output is that input's error line
            return {"source": source, "status": "error", "error": describe_error(exc)}

    def sources() -> Iterator[str]:
        for rel in entries:
            yield prefix + rel
        meta = _meta_prefix(output, desc["TransformJobName"]).join("skipped.jsonl")
        try:
            body = s3.get_object(Bucket=meta.bucket, Key=meta.key)["Body"]
        except s3.exceptions.NoSuchKey:
            return
        for raw in body.iter_lines():
            if raw.strip():
                record = json.loads(raw)
                skipped[record["source"]] = record
                yield record["source"]

    def handle_any(source: str) -> dict[str, Any]:
        return skipped.pop(source) if source in skipped else handle(source)

    with results:
        return run_batch(sources(), handle_any, results, concurrency=concurrency, progress=progress, stop=stop)
