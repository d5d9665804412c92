"""``fusion-emotion batch`` through SageMaker: the endpoint route and ``--transform-job`` / ``--attach``.

The transform job is checked against moto (the calls and their parameters, recorded with botocore event
hooks; moto runs no container), and, in the integration test, the container side: this test plays Batch
Transform's agent, posting each object's bytes with the job's content type to the real front end over the
real Triton, then ``batch --attach`` gathers the ``.out`` objects.
"""

# ruff: noqa: F811 - test arguments named like the moto fixtures imported from test_deploy_sagemaker

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fusion_emotion.client.search import SegmentIndex
from test_batch import by_source, lines
from test_deploy_sagemaker import BUCKET, IMAGE, ROLE, aws, moto_endpoint  # noqa: F401 - the moto fixtures

from fusion_emotion import aws as aws_module
from fusion_emotion import contract as C
from fusion_emotion.cli import main
from fusion_emotion.deploy import config as dc
from fusion_emotion.deploy import transform as T


# --------------------------------------------------------------------------- SageMaker: endpoint route and transform jobs
@pytest.fixture()
def recorded(aws, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every SageMaker / runtime / S3 call the code makes through aws.session, with its parameters."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **kwargs: Any) -> None:
        calls.append((model.name, copy.deepcopy(params)))

    for service in ("sagemaker", "sagemaker-runtime"):
        aws.events.register(f"provide-client-params.{service}.*", record)
    monkeypatch.setattr(aws_module, "session", lambda region=None: aws)
    return calls


def _queue_endpoint_results(moto: str, bodies: list[dict[str, Any]]) -> None:
    results = [{"Body": json.dumps(b), "ContentType": "application/json"} for b in bodies]
    httpx.post(f"{moto}/moto-api/static/sagemaker/endpoint-results", json={"results": results}).raise_for_status()


def test_batch_sagemaker_endpoint_sends_raw_bodies_with_custom_attributes(
    recorded, moto_endpoint: str, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    # moto answers from a queue without looking at the body (and cannot take non-UTF-8 bodies): text stands in
    (lib / "a.mp4").write_bytes(b"video bytes")
    (lib / "b.wav").write_bytes(b"RIFF audio bytes")
    answer = {**dict.fromkeys(C.LABELS, 1 / 6), "qa_flags": {}, "dominant_emotion": "angry"}
    _queue_endpoint_results(moto_endpoint, [answer | {"segments": []}, answer | {"segments": []}])
    out = tmp_path / "r.jsonl"
    argv = ["batch", str(lib), "--output", str(out), "--sagemaker-endpoint", "fe-ep", "--timeline", "--window", "4"]
    assert main(argv) == 0
    invokes = sorted((p for name, p in recorded if name == "InvokeEndpoint"), key=lambda p: p["ContentType"])
    assert [p["ContentType"] for p in invokes] == ["audio/wav", "video/mp4"]
    assert all(p["CustomAttributes"] == "timeline=true,window_s=4" and p["EndpointName"] == "fe-ep" for p in invokes)
    assert invokes[0]["Body"] == b"RIFF audio bytes" and invokes[1]["Body"] == b"video bytes"
    assert all(r["status"] == "ok" for r in lines(out))


def _transform_argv(tmp_path: Path, *extra: str, job: str = "tag-library") -> list[str]:
    return [
        "batch", f"s3://{BUCKET}/library/clips/", "--output", f"s3://{BUCKET}/tagged/",
        "--transform-job", "--image-uri", IMAGE, "--role-arn", ROLE,
        "--model-data", f"s3://{BUCKET}/prebuilt/model.tar.gz", "--job-name", job,
        "--results", str(tmp_path / "gathered.jsonl"), *extra,
    ]  # fmt: skip


def _put_library(s3: Any, media: dict[str, bytes]) -> None:
    s3.put_object(Bucket=BUCKET, Key="prebuilt/model.tar.gz", Body=b"tar")
    s3.put_object(Bucket=BUCKET, Key="library/clips/talk.mp4", Body=media["mp4"])
    s3.put_object(Bucket=BUCKET, Key="library/clips/sub/voice.wav", Body=media["wav16k"])
    s3.put_object(Bucket=BUCKET, Key="library/clips/sub/broken.flv", Body=media["garbage"])
    s3.put_object(Bucket=BUCKET, Key="library/clips/notes.txt", Body=b"not media")
    s3.put_object(Bucket=BUCKET, Key="library/clips/huge.avi", Body=b"\0" * (6 * 1024 * 1024))


def test_transform_job_request_shape_wait_and_gather(recorded, aws, media: dict[str, bytes], tmp_path: Path) -> None:
    s3 = aws.client("s3")
    _put_library(s3, media)
    # moto runs no container: put what our front end answers for one object where Batch Transform would.
    answer = {**dict.fromkeys(C.LABELS, 1 / 6), "qa_flags": {"overall_confidence": 0.2}, "dominant_emotion": "angry"}
    answer["segments"] = [{"start": 0.0, "end": 3.5, **dict.fromkeys(C.LABELS, 1 / 6), "dominant_emotion": "angry"}]
    s3.put_object(Bucket=BUCKET, Key="tagged/talk.mp4.out", Body=json.dumps(answer).encode())

    argv = _transform_argv(tmp_path, "--instance-count", "3", "--max-payload-mb", "5", "--timeline", "--wait")
    assert main([*argv, "--poll", "0.05"]) == 1  # voice.wav has no output in moto: not every input succeeded

    names = [name for name, _ in recorded]
    assert names[:2] == ["CreateModel", "CreateTransformJob"] and "DescribeTransformJob" in names
    model = dict(recorded)["CreateModel"]
    job = dict(recorded)["CreateTransformJob"]
    assert job["TransformJobName"].startswith("tag-library-") and model["ModelName"] == job["ModelName"]
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] == "fusion_emotion"
    assert job["BatchStrategy"] == "SingleRecord" and job["MaxPayloadInMB"] == 5
    assert job["MaxConcurrentTransforms"] == 2  # timelines: one model instance serves them
    assert job["TransformInput"]["SplitType"] == "None" and job["TransformInput"]["CompressionType"] == "None"
    assert job["TransformInput"]["ContentType"] == "application/octet-stream"  # mixed: the container sniffs
    source = job["TransformInput"]["DataSource"]["S3DataSource"]
    assert source["S3DataType"] == "ManifestFile"
    assert job["TransformOutput"] == {
        "S3OutputPath": f"s3://{BUCKET}/tagged",
        "Accept": "application/json",
        "AssembleWith": "None",
    }
    assert job["TransformResources"] == {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 3}
    assert job["Environment"] == {
        "FUSION_EMOTION_MAX_BODY_BYTES": str(5 * 1024 * 1024),
        "FUSION_EMOTION_REQUEST_TIMEOUT_S": "590",
        "FUSION_EMOTION_DEFAULT_OPTIONS": "timeline=true",
    }
    assert job["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 600, "InvocationsMaxRetries": 1}
    manifest_loc = dc.s3_argument(source["S3Uri"])
    manifest = json.loads(s3.get_object(Bucket=manifest_loc.bucket, Key=manifest_loc.key)["Body"].read())
    assert manifest == [{"prefix": f"s3://{BUCKET}/library/clips/"}, "sub/broken.flv", "sub/voice.wav", "talk.mp4"]

    gathered = by_source(lines(tmp_path / "gathered.jsonl"))
    uri = f"s3://{BUCKET}/library/clips/"
    assert set(gathered) == {uri + k for k in ("talk.mp4", "sub/voice.wav", "sub/broken.flv", "notes.txt", "huge.avi")}
    talk = gathered[uri + "talk.mp4"]
    assert talk["status"] == "ok" and talk["duration_s"] == 3.5 and talk["segments"] == answer["segments"]
    assert talk["result"] == {k: v for k, v in answer.items() if k != "segments"}
    assert "no output" in gathered[uri + "sub/voice.wav"]["error"]
    assert "not a media file" in gathered[uri + "notes.txt"]["error"]
    assert "over MaxPayloadInMB" in gathered[uri + "huge.avi"]["error"]

    # Attaching again answers nothing twice.
    size = (tmp_path / "gathered.jsonl").stat().st_size
    assert main(["batch", "--attach", job["TransformJobName"], "--results", str(tmp_path / "gathered.jsonl")]) == 1
    assert (tmp_path / "gathered.jsonl").stat().st_size == size


def test_transform_job_sizing_and_validation(
    recorded, aws, media: dict[str, bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert [T.instance_vcpus(t) for t in ("ml.g4dn.xlarge", "ml.g5.2xlarge", "ml.m5.large", "ml.g4dn.12xlarge")] == [
        4,
        8,
        2,
        48,
    ]
    assert T.default_concurrency("ml.g5.4xlarge", timeline=False) == 16
    assert T.default_concurrency("ml.g5.4xlarge", timeline=True) == 2
    _put_library(aws.client("s3"), media)
    assert main(_transform_argv(tmp_path, "--content-type", "video/mp4", job="sizing")) == 0  # no --wait: submit only
    job = dict(recorded)["CreateTransformJob"]
    assert job["MaxConcurrentTransforms"] == 4 and job["TransformInput"]["ContentType"] == "video/mp4"
    assert "FUSION_EMOTION_DEFAULT_OPTIONS" not in job["Environment"]
    assert job["Environment"]["FUSION_EMOTION_MAX_BODY_BYTES"] == str(100 * 1024 * 1024)
    recorded.clear()
    for (flag, value), why in (
        (("--output", f"s3://{BUCKET}/library/clips/out/"), "must not lie inside INPUT"),
        (("--content-type", "text/plain"), "is not one the container accepts"),
        (("--max-payload-mb", "101"), "--max-payload-mb must be 1..100"),
        (("--role-arn", "nope"), "--role-arn must be an IAM role ARN"),
    ):
        argv = _transform_argv(tmp_path, job="invalid")
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
        caplog.clear()
        assert main(argv) == 2
        assert why in caplog.text
    assert recorded == []  # refused before any AWS call


def test_read_manifest_streams_ours_and_reads_others(aws) -> None:
    s3 = aws.client("s3")
    ours = '[{"prefix": "s3://b-1/p/"},\n"a.mp4",\n"x/b.wav"\n]\n'
    theirs = '[{"prefix": "s3://b-1/p/"}, "a.mp4", "x/b.wav"]'
    for name, text in (("ours", ours), ("theirs", theirs)):
        s3.put_object(Bucket=BUCKET, Key=f"m/{name}.manifest", Body=text.encode())
        prefix, entries = T.read_manifest(s3, f"s3://{BUCKET}/m/{name}.manifest")
        assert (prefix, list(entries)) == ("s3://b-1/p/", ["a.mp4", "x/b.wav"])


# =========================================================================== integration
@pytest.mark.integration
def test_transform_job_container_side_end_to_end(
    recorded, aws, triton, media: dict[str, bytes], tmp_path: Path
) -> None:
    """Submit against moto, then do what Batch Transform's agent does with the real container, then gather."""
    from test_frontend import run_frontend

    from fusion_emotion.frontend.settings import Settings

    s3 = aws.client("s3")
    _put_library(s3, media)
    s3.put_object(Bucket=BUCKET, Key="library/clips/sub/crema.flv", Body=media["flv"])
    assert main(_transform_argv(tmp_path, "--timeline", "--max-payload-mb", "20", job="e2e")) == 0
    name = dict(recorded)["CreateTransformJob"]["TransformJobName"]
    job = aws.client("sagemaker").describe_transform_job(TransformJobName=name)
    # The container's settings come from the job's environment, as in SageMaker.
    settings = Settings.from_env({"FUSION_EMOTION_TRITON_URL": triton.grpc_url, **job["Environment"]})
    assert settings.max_body_bytes == 20 * 1024 * 1024 and settings.default_options == "timeline=true"
    manifest_uri = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    prefix, entries = T.read_manifest(s3, manifest_uri)
    out = dc.s3_argument(job["TransformOutput"]["S3OutputPath"])
    statuses = {}
    with run_frontend(settings) as base:
        for rel in entries:
            src = dc.s3_argument(prefix + rel)
            body = s3.get_object(Bucket=src.bucket, Key=src.key)["Body"].read()
            resp = httpx.post(
                base + "/invocations",
                content=body,
                headers={
                    "Content-Type": job["TransformInput"]["ContentType"],
                    "Accept": job["TransformOutput"]["Accept"],
                },
                timeout=300,
            )
            statuses[rel] = resp.status_code
            if resp.status_code == 200:  # SageMaker stores only successful records
                s3.put_object(Bucket=out.bucket, Key=f"{out.key}/{rel}.out", Body=resp.content)
    assert statuses == {
        "huge.avi": 422,
        "sub/broken.flv": 422,
        "sub/crema.flv": 200,
        "sub/voice.wav": 200,
        "talk.mp4": 200,
    }

    results = tmp_path / "gathered.jsonl"
    assert main(["batch", "--attach", job["TransformJobName"], "--results", str(results)]) == 1
    gathered = by_source(lines(results))
    for rel in ("sub/crema.flv", "sub/voice.wav", "talk.mp4"):
        record = gathered[prefix + rel]
        assert record["status"] == "ok" and record["segments"], record
        assert record["duration_s"] == record["segments"][-1]["end"] > 1.0
        assert sum(record["result"][k] for k in C.LABELS) == pytest.approx(1.0, abs=1e-4)
    assert gathered[prefix + "sub/voice.wav"]["media"] == "audio"
    assert gathered[prefix + "sub/broken.flv"]["status"] == "error"
    with SegmentIndex(results) as index:
        index.refresh()
        assert len(index.search("happy", 100)) == sum(
            len(gathered[prefix + r]["segments"]) for r in statuses if statuses[r] == 200
        )
