"""The web playground without a browser: its assets and config, the QA-flag guide, the /ui setting, and the
``ui`` server's routes for a SageMaker endpoint and an unreachable front end (the browser runs in
tests/test_playground_browser.py)."""

from __future__ import annotations

import io
import json
import math
import re

import botocore.exceptions
import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from fusion_emotion import contract as C
from fusion_emotion.cli import build_parser
from fusion_emotion.core.qa import overall_confidence
from fusion_emotion.frontend.app import create_app
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.playground.guide import FLAG_GUIDES
from fusion_emotion.playground.site import ASSET_DIR, CSP, load_assets
from fusion_emotion.server.procs import free_port
from fusion_emotion.ui.live import SAGEMAKER_LIVE_UNAVAILABLE
from fusion_emotion.ui.server import build_app
from fusion_emotion.ui.targets import Target, stream_url

RESULT = {**{k: 1 / 6 for k in C.LABELS}, "qa_flags": {k: None for k in C.QA_FLAG_NAMES}, "dominant_emotion": "angry"}
GUIDE = {g.name: g for g in FLAG_GUIDES}


# --------------------------------------------------------------------------- the guide
def test_guide_explains_every_flag_in_contract_order() -> None:
    assert tuple(g.name for g in FLAG_GUIDES) == C.QA_FLAG_NAMES
    for g in FLAG_GUIDES:
        assert g.meaning and g.warning and (g.warn_above is None) != (g.warn_below is None)
        assert not g.unreliable(None)


def _quality(clip: float = math.nan, silence: float = math.nan, face: float = math.nan, blur: float = math.nan):
    """overall_confidence of a certain prediction: the media quality factor alone."""
    return overall_confidence(np.eye(C.NUM_CLASSES)[0], np.array([clip, silence, face, blur]))


@pytest.mark.parametrize(
    "name,at_threshold",
    [
        ("audio_clipping_ratio", lambda v: _quality(clip=v)),
        ("audio_silence_ratio", lambda v: _quality(silence=v)),
        ("video_face_detection_confidence", lambda v: _quality(face=v)),
        ("video_blur_level", lambda v: _quality(blur=v)),
    ],
)
def test_media_flags_warn_where_they_halve_their_modality(name: str, at_threshold) -> None:
    """The warning thresholds are where overall_confidence's quality factor for that flag reaches 0.5."""
    g = GUIDE[name]
    threshold = g.warn_above if g.warn_above is not None else g.warn_below
    assert at_threshold(threshold) == pytest.approx(0.5)
    worse = threshold + 0.01 if g.warn_above is not None else threshold - 0.01
    better = threshold - 0.01 if g.warn_above is not None else threshold + 0.01
    assert g.unreliable(worse) and not g.unreliable(better) and not g.unreliable(threshold)
    assert at_threshold(worse) < 0.5 < at_threshold(better)


def test_consistency_and_overall_warn_below_their_cutoffs() -> None:
    assert GUIDE["modality_consistency_score"].unreliable(0.49) and not GUIDE["modality_consistency_score"].unreliable(
        0.5
    )
    assert GUIDE["overall_confidence"].unreliable(0.29) and not GUIDE["overall_confidence"].unreliable(0.3)


# --------------------------------------------------------------------------- assets and config
def test_every_asset_the_page_names_is_served_and_none_comes_from_elsewhere() -> None:
    assets = load_assets()
    assert set(assets) == {p.name for p in ASSET_DIR.iterdir()}, "a file in static/ would not be served"
    page = assets["index.html"][0].decode()
    named = set(re.findall(r'(?:src|href)="\./([^"]+)"', page))
    for text in (assets[n][0].decode() for n in assets if n.endswith(".js")):
        named |= set(re.findall(r'from "\./([^"]+)"', text)) | set(re.findall(r'addModule\("\./([^"]+)"\)', text))
    assert {"main.js", "playground.css", "capture-worklet.js", "render.js", "file.js", "live.js"} <= named
    assert named <= set(assets)
    for name, (body, _) in assets.items():
        # no URL but the SVG namespace, which names and fetches nothing
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", body.decode()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)


def test_page_and_config_are_served_with_a_same_origin_policy() -> None:
    app = build_app(Target(endpoint="emotion-prod", region="eu-west-1"))
    client = TestClient(app)
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/ui/"
    for path in ("/ui/", "/ui/main.js", "/ui/playground.css", "/ui/config.json"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert resp.headers["content-security-policy"] == CSP and "default-src 'none'" in CSP
        assert "connect-src 'self'" in CSP and "script-src 'self'" in CSP
    assert client.get("/ui/secrets.txt").status_code == 404
    assert client.get("/ui/../pyproject.toml").status_code == 404
    config = client.get("/ui/config.json").json()
    assert config["labels"] == list(C.LABELS)
    assert [f["name"] for f in config["qa_flags"]] == list(C.QA_FLAG_NAMES)
    assert config["media_types"][".avi"] == "video/x-msvideo" and config["media_types"][".wav"] == "audio/wav"
    assert config["target"] == "SageMaker endpoint emotion-prod (eu-west-1)"
    assert config["live_unavailable"] == SAGEMAKER_LIVE_UNAVAILABLE
    assert (config["invocations"], config["stream"]) == ("/invocations", "/stream")


# --------------------------------------------------------------------------- the front end's /ui setting
def test_front_end_serves_ui_only_when_its_setting_is_on() -> None:
    off = TestClient(create_app(Settings()))
    assert off.get("/ui/").status_code == 404
    assert Settings.from_env({}).ui is False
    on_settings = Settings.from_env({"FUSION_EMOTION_UI": "true", "FUSION_EMOTION_TRITON_URL": "10.0.0.9:8001"})
    assert on_settings.ui is True
    on = TestClient(create_app(on_settings))
    assert "<title>fusion-emotion playground</title>" in on.get("/ui/").text
    config = on.get("/ui/config.json").json()
    assert config["target"] == "the front end (Triton at 10.0.0.9:8001)" and config["live_unavailable"] is None
    assert "/ui" not in json.dumps(create_app(on_settings).openapi()["paths"])
    with pytest.raises(ValueError, match="true or false"):
        Settings.from_env({"FUSION_EMOTION_UI": "maybe"})
    assert build_parser().parse_args(["serve", "--ui"]).ui is True
    assert build_parser().parse_args(["serve"]).ui is None  # the environment decides


# --------------------------------------------------------------------------- the ui command's targets
def test_ui_takes_exactly_one_target() -> None:
    parser = build_parser()
    args = parser.parse_args(["ui", "--sagemaker-endpoint", "e", "--region", "us-east-1", "--port", "9001"])
    assert (args.sagemaker_endpoint, args.region, args.port, args.host) == ("e", "us-east-1", 9001, "127.0.0.1")
    with pytest.raises(SystemExit):
        parser.parse_args(["ui", "--url", "http://h:8080", "--triton", "h:8001"])
    with pytest.raises(SystemExit):
        parser.parse_args(["ui"])
    with pytest.raises(
        ValueError, match="--region, --stream-endpoint-url and --ca-bundle go with --sagemaker-endpoint"
    ):
        Target(url="http://h:8080", region="us-east-1")
    assert stream_url("http://h:8080") == "ws://h:8080/stream"
    assert stream_url("https://h/prefix/invocations") == "wss://h/stream"


def test_triton_target_is_the_front_end_with_the_page() -> None:
    client = TestClient(build_app(Target(triton="127.0.0.1:8001")))
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
    assert client.get("/ui/config.json").json()["target"] == "the front end (Triton at 127.0.0.1:8001)"
    assert client.post("/invocations", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415


class FakeRuntime:
    """A sagemaker-runtime client: records each call and answers as the endpoint would."""

    class ModelError(Exception):
        def __init__(self, response: dict) -> None:
            super().__init__("model error")
            self.response = response

    exceptions = type("Exceptions", (), {"ModelError": ModelError})

    def __init__(self, answer: dict | Exception) -> None:
        self.answer = answer
        self.calls: list[dict] = []

    def invoke_endpoint(self, **kwargs) -> dict:
        self.calls.append(kwargs)
        if isinstance(self.answer, Exception):
            raise self.answer
        return {"Body": io.BytesIO(json.dumps(self.answer).encode()), "CustomAttributes": "weights=untrained"}


def test_endpoint_target_sends_the_file_through_invoke_endpoint() -> None:
    runtime = FakeRuntime({**RESULT, "segments": []})
    client = TestClient(build_app(Target(endpoint="emotion-prod"), runtime_client=runtime))
    resp = client.post("/invocations?timeline=true&x=1", content=b"RIFF....WAVE", headers={"Content-Type": "audio/wav"})
    assert resp.status_code == 200 and resp.json() == {**RESULT, "segments": []}
    assert resp.headers[C.RESPONSE_ATTRIBUTES_HEADER] == C.UNTRAINED_ATTRIBUTE  # the page shows the notice
    (call,) = runtime.calls
    assert call["EndpointName"] == "emotion-prod" and call["Body"] == b"RIFF....WAVE"
    assert call["ContentType"] == "audio/wav" and call["CustomAttributes"] == "timeline=true"


def test_endpoint_errors_reach_the_page_as_the_service_words_them() -> None:
    body = json.dumps({"error": "body: not a decodable media file (InvalidDataError)", "request_id": "r1"})
    runtime = FakeRuntime(FakeRuntime.ModelError({"OriginalStatusCode": 422, "OriginalMessage": body}))
    client = TestClient(build_app(Target(endpoint="emotion-prod"), runtime_client=runtime))
    resp = client.post("/invocations?timeline=true", content=b"junk", headers={"Content-Type": "video/mp4"})
    assert resp.status_code == 422 and resp.json()["error"] == "body: not a decodable media file (InvalidDataError)"
    missing = botocore.exceptions.ClientError(
        {"Error": {"Code": "ValidationException", "Message": "Endpoint emotion-prod of account 1 not found."},
         "ResponseMetadata": {"HTTPStatusCode": 400}},
        "InvokeEndpoint",
    )  # fmt: skip
    client = TestClient(build_app(Target(endpoint="emotion-prod"), runtime_client=FakeRuntime(missing)))
    resp = client.post("/invocations", content=b"x", headers={"Content-Type": "video/mp4"})
    assert resp.status_code == 400 and "Endpoint emotion-prod of account 1 not found." in resp.json()["error"]


def test_endpoint_target_says_live_needs_the_streaming_route() -> None:
    client = TestClient(build_app(Target(endpoint="emotion-prod"), runtime_client=FakeRuntime(RESULT)))
    with client.websocket_connect("/stream") as ws:
        message = json.loads(ws.receive_text())
        assert message == {
            "error": f"stream: {SAGEMAKER_LIVE_UNAVAILABLE}", "kind": "bad_request", "subject": "stream",
            "close_code": 1008,
        }  # fmt: skip
        assert ws.receive()["code"] == 1008


def test_unreachable_front_end_is_named_for_files_and_live() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = TestClient(build_app(Target(url=url)))
    resp = client.post("/invocations", content=b"x", headers={"Content-Type": "video/mp4"})
    assert (
        resp.status_code == 502
        and resp.json()["error"] == f"the front end at {url} could not be reached (ConnectError)"
    )
    with client.websocket_connect("/stream") as ws:
        message = json.loads(ws.receive_text())
        assert message["close_code"] == 1013 and message["kind"] == "overloaded"
        assert message["error"].startswith("stream: the live service could not be reached")
        assert ws.receive()["code"] == 1013


def test_proxy_refuses_bodies_over_its_limit_and_forwards_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import fusion_emotion.ui.server as server

    monkeypatch.setattr(server, "MAX_BODY_BYTES", 1000)
    sent: list[bytes] = []
    monkeypatch.setattr(httpx, "post", lambda *a, **k: sent.append(k["content"]))
    client = TestClient(build_app(Target(url="http://127.0.0.1:9")))
    assert client.post("/invocations", content=b"x" * 1001).status_code == 413
    assert not sent
