"""The front end against a live tritonserver: every request form and modality, S3, deadlines, raw bodies."""

# ruff: noqa: F811 - test arguments named like the fixtures imported from test_frontend

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fusion_emotion.client import sagemaker_triton
from fusion_emotion.client.http import predict_url
from test_frontend import (  # noqa: F401 - s3, moto_endpoint, fresh_tmp: fixtures
    ATTRIBUTES,
    BT_HEADERS,
    BUCKET,
    PLANTED_KEY,
    PLANTED_NAME,
    RESULT_KEYS,
    app_logs,
    assert_error,
    assert_result,
    fresh_tmp,
    moto_endpoint,
    multipart,
    run_frontend,
    s3,
)

from fusion_emotion import contract as C
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.server.procs import free_port


@pytest.fixture(scope="module")
def live(request: pytest.FixtureRequest) -> tuple[Any, dict[str, bytes]]:
    return request.getfixturevalue("triton"), request.getfixturevalue("media")


@pytest.fixture(scope="module")
def live_frontend(live: tuple[Any, dict[str, bytes]]) -> Iterator[str]:
    triton, _ = live
    with run_frontend(Settings(triton_url=triton.grpc_url, request_timeout_s=120)) as base:
        yield base


VIDEO_KINDS = ["mp4", "mp4_noaudio", "flv", "avi"]


@pytest.mark.integration
def test_ping_200(live_frontend: str) -> None:
    resp = httpx.get(live_frontend + "/ping", timeout=5)
    assert resp.status_code == 200, resp.text


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/invocations", "/predict"])
@pytest.mark.parametrize(
    "video_kind,with_audio",
    [(None, True)] + [(k, False) for k in VIDEO_KINDS] + [(k, True) for k in VIDEO_KINDS],
)
def test_multipart_modalities(live_frontend: str, live, path: str, video_kind: str | None, with_audio: bool) -> None:
    _, media = live
    files = {}
    if video_kind:
        files["video_file"] = (f"clip.{video_kind}", media[video_kind])
    if with_audio:
        files["audio_file"] = ("voice.wav", media["wav"])
    resp = httpx.post(live_frontend + path, **multipart(**files), timeout=120)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert_result(body)
    qa = body["qa_flags"]
    if video_kind is None:
        assert qa["video_blur_level"] is None and qa["video_face_detection_confidence"] is None


@pytest.mark.integration
@pytest.mark.parametrize("video_kind,with_audio", [(None, True), ("mp4", False), ("avi", True), ("flv", True)])
def test_s3_modalities(live_frontend: str, live, s3: Any, video_kind: str | None, with_audio: bool) -> None:
    _, media = live
    req = {}
    if video_kind:
        s3.put_object(Bucket=BUCKET, Key=f"in/clip.{video_kind}", Body=media[video_kind])
        req["s3_video_uri"] = f"s3://{BUCKET}/in/clip.{video_kind}"
    if with_audio:
        s3.put_object(Bucket=BUCKET, Key="in/voice.wav", Body=media["wav"])
        req["s3_audio_uri"] = f"s3://{BUCKET}/in/voice.wav"
    resp = httpx.post(live_frontend + "/invocations", json=req, timeout=120)
    assert resp.status_code == 200, resp.text
    assert_result(resp.json())


@pytest.mark.integration
def test_422_names_the_file(live_frontend: str, live, s3: Any) -> None:
    _, media = live
    inv = live_frontend + "/invocations"
    body = assert_error(
        httpx.post(inv, **multipart(video_file=("x.mp4", media["garbage"]), audio_file=("a.wav", media["wav"]))),
        422,
        "video_file",
    )
    assert body["input"] == "video_file"
    assert_error(httpx.post(inv, **multipart(audio_file=("a.wav", media["wav_header_only"]))), 422, "audio_file")
    assert_error(httpx.post(inv, **multipart(audio_file=("a.wav", media["mp4"]))), 422, "audio_file")
    s3.put_object(Bucket=BUCKET, Key="bad/garbage.mp4", Body=media["garbage"])
    uri = f"s3://{BUCKET}/bad/garbage.mp4"
    assert_error(httpx.post(inv, json={"s3_video_uri": uri}, timeout=60), 422, uri)


@pytest.mark.integration
def test_504_on_deadline(live) -> None:
    triton, media = live
    with run_frontend(Settings(triton_url=triton.grpc_url, request_timeout_s=0.001)) as base:
        resp = httpx.post(base + "/invocations", **multipart(video_file=("v.mp4", media["mp4"])), timeout=60)
        assert_error(resp, 504)
        assert httpx.get(base + "/ping", timeout=5).status_code == 200


@pytest.mark.integration
def test_client_predict_url_roundtrip(live_frontend: str, live) -> None:
    _, media = live
    assert_result(predict_url(live_frontend, media["mp4"], media["wav"], timeout=120))
    assert_result(predict_url(live_frontend + "/predict", None, media["wav"], timeout=120))


@pytest.mark.integration
@pytest.mark.parametrize(
    "kind,mime",
    [
        ("mp4", "video/mp4"),
        ("flv", "video/x-flv"),
        ("avi", "video/x-msvideo"),
        ("wav", "audio/wav"),
        ("wav16k", "audio/x-wav"),
        ("wav", "audio/wave"),
        ("mp4", "application/octet-stream"),
        ("wav", "application/octet-stream"),
    ],
)
def test_raw_bodies_as_batch_transform_sends_them(live_frontend: str, live, kind: str, mime: str) -> None:
    """One file's bytes as the body, with Batch Transform's headers: the same answer as the multipart form."""
    _, media = live
    resp = httpx.post(
        live_frontend + "/invocations", content=media[kind], headers={"Content-Type": mime, **BT_HEADERS}, timeout=120
    )
    assert resp.status_code == 200, resp.text
    raw = resp.json()
    assert_result(raw)
    field = "audio_file" if kind.startswith("wav") else "video_file"
    form = httpx.post(live_frontend + "/invocations", **multipart(**{field: ("f", media[kind])}), timeout=120).json()
    for label in C.LABELS:
        assert raw[label] == pytest.approx(form[label], abs=1e-6)
    assert (raw["qa_flags"]["video_blur_level"] is None) == kind.startswith("wav")  # WAV sniffed as audio


@pytest.mark.integration
def test_raw_body_errors_name_the_body(live_frontend: str, live) -> None:
    _, media = live
    inv = live_frontend + "/invocations"
    body = assert_error(
        httpx.post(inv, content=media["wav"], headers={"Content-Type": "video/mp4"}, timeout=60),
        422,
        "body: unsupported container 'wav'",
    )
    assert body["input"] == "body"
    assert_error(
        httpx.post(inv, content=media["garbage"], headers={"Content-Type": C.RAW_SNIFF_TYPE}, timeout=60),
        422,
        "body: not a decodable media file",
    )
    assert_error(httpx.post(inv, content=media["mp4"], headers={"Content-Type": "audio/wav"}, timeout=60), 422, "body:")


@pytest.mark.integration
def test_raw_matroska_and_webm_bodies_are_served(live_frontend: str, caplog: pytest.LogCaptureFixture) -> None:
    """Matroska (H.264) and WebM (VP8, as MediaRecorder writes it, without duration) sent raw decode and score.

    The demo repository's weights are random-init: every answer says so in the custom-attributes header, and
    the HTTP client warns (as ``predict --local`` and ``--triton`` do)."""
    from fusion_emotion import testmedia

    bodies = (
        (testmedia.mkv(width=320, height=240, fps=25, seconds=1.0, video_bitrate=500_000), "video/x-matroska"),
        (testmedia.webm(width=320, height=240, fps=25, seconds=1.0, video_bitrate=500_000, live=True), "video/webm"),
    )
    for data, mime in bodies:
        resp = httpx.post(live_frontend + "/invocations", content=data, headers={"Content-Type": mime}, timeout=60)
        assert resp.status_code == 200, (mime, resp.text)
        body = resp.json()
        assert set(body) >= RESULT_KEYS and abs(sum(body[e] for e in C.LABELS) - 1.0) < 1e-3, body
        assert resp.headers[C.RESPONSE_ATTRIBUTES_HEADER] == C.UNTRAINED_ATTRIBUTE
    with caplog.at_level(logging.WARNING, logger="fusion_emotion.client.http"):
        assert set(predict_url(live_frontend, bodies[0][0], None, timeout=60)) >= RESULT_KEYS
    assert "UNTRAINED" in caplog.text


@pytest.mark.integration
def test_custom_attributes_and_default_options_on_live_triton(live, live_frontend: str) -> None:
    triton, media = live
    inv = live_frontend + "/invocations"
    wav = {"Content-Type": "audio/wav"}
    resp = httpx.post(inv, content=media["wav"], headers={**wav, ATTRIBUTES: "timeline=true,window_s=2"}, timeout=120)
    assert resp.status_code == 200, resp.text
    segments = resp.json()["segments"]
    assert len(segments) >= 2 and all(s["end"] - s["start"] == pytest.approx(2.0) for s in segments)
    resp = httpx.post(
        inv + "?timeline=false", content=media["wav"], headers={**wav, ATTRIBUTES: "timeline=true"}, timeout=120
    )
    assert resp.status_code == 200 and "segments" not in resp.json()
    # Batch Transform cannot send per-request options: the job's environment sets the defaults.
    with run_frontend(
        Settings(triton_url=triton.grpc_url, request_timeout_s=120, default_options="timeline=true")
    ) as b:
        assert httpx.post(b + "/invocations", content=media["wav"], headers=wav, timeout=120).json()["segments"]
        off = httpx.post(
            b + "/invocations", content=media["wav"], headers={**wav, ATTRIBUTES: "timeline=false"}, timeout=120
        )
        assert off.status_code == 200 and "segments" not in off.json()


@pytest.mark.integration
def test_privacy_success_paths(live, s3: Any, fresh_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    triton, media = live
    s3.put_object(Bucket=BUCKET, Key=PLANTED_KEY, Body=media["wav"])  # the test's own upload may log
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with run_frontend(Settings(triton_url=triton.grpc_url, request_timeout_s=120)) as base:
        inv = base + "/invocations"
        ok = httpx.post(inv, **multipart(video_file=(PLANTED_NAME, media["mp4"])), timeout=120)
        ok_s3 = httpx.post(inv, json={"s3_audio_uri": f"s3://{BUCKET}/{PLANTED_KEY}"}, timeout=120)
        bad = httpx.post(inv, **multipart(video_file=(PLANTED_NAME, media["garbage"])), timeout=120)
    assert (ok.status_code, ok_s3.status_code, bad.status_code) == (200, 200, 422)
    assert list(fresh_tmp.iterdir()) == []
    text = app_logs(caplog)
    assert "request_id=" in text
    assert PLANTED_NAME not in text and PLANTED_KEY not in text


@pytest.mark.integration
def test_ping_tracks_triton(live, demo_repository: Path, tmp_path: Path) -> None:
    """A private tritonserver: /ping 200 while it runs, 503 within 2 s once it is gone."""
    from fusion_emotion.server.launcher import ServerOptions, TritonProcess

    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    server = TritonProcess(
        ServerOptions(repository=demo_repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port),
        log_file=tmp_path / "triton.log",
    )
    server.start()
    try:
        server.wait_ready(240)
        with run_frontend(Settings(triton_url=f"127.0.0.1:{grpc_port}")) as base:
            assert httpx.get(base + "/ping", timeout=5).status_code == 200
            server.stop()
            start = time.monotonic()
            assert_error(httpx.get(base + "/ping", timeout=5), 503)
            assert time.monotonic() - start < 2.0
    finally:
        server.stop()


@pytest.mark.integration
def test_sagemaker_triton_container_route(
    live, demo_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tritonserver as SageMaker's stock Triton image starts it answers /ping and /invocations itself.

    Same flags as that image's `serve` script: explicit model control loading only
    the ensemble (preprocess then loads the BLS-called encoders itself).
    """
    from fusion_emotion.server.launcher import ServerOptions, TritonProcess

    _, media = live
    sm_port = free_port()
    monkeypatch.setenv("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME", C.ENSEMBLE)
    server = TritonProcess(
        ServerOptions(
            repository=demo_repository,
            grpc_port=free_port(),
            http_port=free_port(),
            metrics_port=free_port(),
            extra_args=[
                "--allow-sagemaker=true",
                f"--sagemaker-port={sm_port}",
                "--model-control-mode=explicit",
                f"--load-model={C.ENSEMBLE}",
            ],
        ),
        log_file=tmp_path / "triton-sagemaker.log",
    )
    server.start()
    try:
        server.wait_ready(240)
        base = f"http://127.0.0.1:{sm_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "triton-sagemaker.log").read_text()[-3000:]
            time.sleep(0.25)
        for video, audio in ((media["mp4"], media["wav"]), (media["avi"], None), (None, media["wav"])):
            assert_result(sagemaker_triton.invoke_url(base, video, audio, timeout=120))
        with pytest.raises(sagemaker_triton.SageMakerTritonError) as info:
            sagemaker_triton.invoke_url(base, media["garbage"], None, timeout=120)
        assert info.value.status == 400 and "video" in info.value.message
        log_text = (tmp_path / "triton-sagemaker.log").read_text()
        assert f"preprocess: loading {C.VIDEO_ENCODER} (not loaded by the server)" in log_text
    finally:
        server.stop()
