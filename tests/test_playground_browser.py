"""The web playground in a real browser: headless Chromium (Debian's, driven by Playwright) against the real
front end and tritonserver, both directly (the front end's ``/ui``) and through ``fusion-emotion ui --url``.

One tritonserver (the session's), one front end, one ``ui`` server and one browser serve every test here.
The page's numbers are checked against the API's JSON for the same request; live mode runs on Chromium's
fake microphone (a WAV of generated speech) and camera. The screenshots of the docs' playground page are
taken here: they land in ``$PLAYGROUND_SCREENSHOTS`` (default build/playground-screenshots); the docs'
copies are made with ``PLAYGROUND_SCREENSHOTS=docs/img``.
"""

# ruff: noqa: F811 - test arguments named like the fixtures imported from test_frontend

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import serve_app
from playwright.sync_api import Browser, Page, sync_playwright
from test_frontend import run_frontend

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.playground.guide import FLAG_GUIDES
from fusion_emotion.ui.server import build_app
from fusion_emotion.ui.targets import Target

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("PLAYGROUND_SCREENSHOTS", "build/playground-screenshots"))
PICKER = "Choose or drop a video or audio file"


@pytest.fixture(scope="module")
def frontend(triton) -> Iterator[str]:
    """The real front end, with its /ui setting on."""
    with run_frontend(Settings(triton_url=triton.grpc_url, request_timeout_s=120, ui=True)) as base:
        yield base


@pytest.fixture(scope="module")
def playground(frontend: str) -> Iterator[str]:
    """``fusion-emotion ui --url <front end>``: its app, served as the command serves it."""
    with serve_app(build_app(Target(url=frontend))) as base:
        yield base


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, media: dict[str, bytes]) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("playground")
    speech = testmedia.speech(rate=48_000)
    long_audio = np.concatenate([speech, speech, speech])[: 9 * 48_000]
    made = {
        "clip.mp4": media["mp4"],  # 1280x720, 3.5 s: one window
        "long.mp4": testmedia.mp4(width=320, height=240, seconds=9.0, audio=long_audio, audio_rate=48_000),
        "broken.mp4": media["garbage"],
        "notes.txt": b"not media at all\n",
        "mic.wav": testmedia.wav(testmedia.speech(rate=16_000), 16_000, "s16"),  # the fake microphone
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in made}


@pytest.fixture(scope="module")
def browser(files: dict[str, Path]) -> Iterator[Browser]:
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={files['mic.wav'].resolve()}",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()


def open_page(browser: Browser, base: str) -> tuple[Page, list[str]]:
    """The playground page, ready; and every URL it requests from then on."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(base + "/ui/")
    page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    return page, requested


def wait_for(page: Page, expression: str, timeout_s: float = 120.0) -> None:
    """Poll a JS expression (the page's CSP forbids the eval that Playwright's wait_for_function uses)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {expression}; state {state(page)}")
        time.sleep(0.1)


def state(page: Page) -> dict[str, Any]:
    return page.evaluate("() => window.fusionEmotion")


def choose(page: Page, path: Path) -> dict[str, Any]:
    page.get_by_label(PICKER).set_input_files(str(path))
    wait_for(page, "['done', 'error'].includes(window.fusionEmotion.status)")
    return state(page)


def drop(page: Page, path: Path, content_type: str) -> None:
    """Drop ``path`` on the page's drop zone, as a file dragged from the desktop arrives."""
    transfer = page.evaluate_handle(
        "([text, name, type]) => { const t = new DataTransfer(); t.items.add(new File([text], name, { type }));"
        " return t; }",
        [path.read_text(), path.name, content_type],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def api(frontend: str, path: Path, content_type: str) -> httpx.Response:
    """What the page's request gets from the API itself: the same bytes, type and options."""
    return httpx.post(
        frontend + "/invocations", params={"timeline": "true"}, content=path.read_bytes(),
        headers={"Content-Type": content_type}, timeout=120,
    )  # fmt: skip


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def shown_flags(page: Page, table: str) -> dict[str, tuple[float | None, bool]]:
    """Each flag row of ``table``: (its value, whether it carries the unreliable warning)."""
    rows = page.locator(f"#{table} tbody tr")
    out = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        text = row.locator(".flag-value").get_attribute("data-value")
        out[row.get_attribute("data-flag")] = (None if text == "null" else float(text),
                                               row.locator(".flag-warning").count() == 1)  # fmt: skip
    return out


def expected_flags(flags: dict[str, float | None]) -> dict[str, tuple[float | None, bool]]:
    return {g.name: (flags[g.name], g.unreliable(flags[g.name])) for g in FLAG_GUIDES}


def test_clip_numbers_equal_the_api_json(browser: Browser, frontend: str, files: dict[str, Path]) -> None:
    """On the front end's own /ui: bars, dominant emotion, flags and the untrained notice are the API's."""
    page, requested = open_page(browser, frontend)
    got = choose(page, files["clip.mp4"])
    assert got["status"] == "done", got["error"]
    resp = api(frontend, files["clip.mp4"], "video/mp4")
    assert resp.status_code == 200, resp.text
    want = resp.json()
    assert got["lastResult"] == want and len(want["segments"]) == 1
    for label in C.LABELS:
        value = page.locator(f'.bar-row[data-label="{label}"] .bar-value')
        assert float(value.get_attribute("data-value")) == want[label]
        assert value.inner_text() == f"{want[label]:.4f}"
    assert page.locator("#file-dominant").inner_text() == want["dominant_emotion"]
    assert shown_flags(page, "file-flags") == expected_flags(want["qa_flags"])
    assert page.locator("#file-flags .flag-warning").count() >= 1  # random weights: low overall_confidence
    # demo weights: the service says weights=untrained, the page says what that means
    assert resp.headers[C.RESPONSE_ATTRIBUTES_HEADER] == C.UNTRAINED_ATTRIBUTE
    assert page.locator("#untrained").is_visible()
    assert page.locator("#timeline").is_hidden()  # one window: no timeline
    # the clip-level answer of the timeline route is the ensemble's (docs/timeline_evaluate.md)
    plain = httpx.post(frontend + "/invocations", content=files["clip.mp4"].read_bytes(),
                       headers={"Content-Type": "video/mp4"}, timeout=120).json()  # fmt: skip
    np.testing.assert_allclose([got["lastResult"][k] for k in C.LABELS], [plain[k] for k in C.LABELS], atol=1e-4)
    assert {u.split("/")[2] for u in requested} == {frontend.split("/")[2]}  # no CDN, no egress
    page.close()


def test_long_clip_shows_its_timeline(browser: Browser, playground: str, frontend: str, files: dict[str, Path]) -> None:
    """Through ``fusion-emotion ui --url``: a 9 s clip gets one segment per window, drawn and listed."""
    page, requested = open_page(browser, playground)
    assert page.locator("#target").inner_text() == f"the front end at {frontend}"
    got = choose(page, files["long.mp4"])
    assert got["status"] == "done", got["error"]
    want = api(frontend, files["long.mp4"], "video/mp4").json()
    assert got["lastResult"] == want and got["timeline"] == want["segments"]
    windows = [(s["start"], s["end"]) for s in want["segments"]]
    np.testing.assert_allclose(windows, [(0, 4), (4, 8), (5, 9)], atol=0.05)  # back to back, the last ends at the end
    assert page.locator("#timeline").is_visible()
    rows = page.locator("#timeline-segments tbody tr")
    assert [rows.nth(i).locator("td").nth(2).inner_text() for i in range(rows.count())] == [
        s["dominant_emotion"] for s in want["segments"]
    ]
    bands = page.locator("#timeline-chart rect.band")
    assert [bands.nth(i).get_attribute("data-dominant") for i in range(bands.count())] == [
        s["dominant_emotion"] for s in want["segments"]
    ]
    for label in C.LABELS:  # one line per emotion, one point per segment
        points = page.locator(f'#timeline-chart polyline[data-label="{label}"]').get_attribute("points")
        assert len(points.split()) == 3
    assert {u.split("/")[2] for u in requested} == {playground.split("/")[2]}
    screenshot(page, "playground-file.png")
    page.close()


def test_bad_files_show_the_service_error(
    browser: Browser, playground: str, frontend: str, files: dict[str, Path]
) -> None:
    """Undecodable media (422) and an unsupported type (415), in the service's own words, through the ui server."""
    page, _ = open_page(browser, playground)
    for name, content_type, status in (("broken.mp4", "video/mp4", 422), ("notes.txt", "text/plain", 415)):
        if name == "notes.txt":  # dropped on the zone rather than chosen
            drop(page, files[name], content_type)
            wait_for(page, "['done', 'error'].includes(window.fusionEmotion.status)")
            got = state(page)
        else:
            got = choose(page, files[name])
        want = api(frontend, files[name], content_type)
        assert want.status_code == status, want.text
        message = f"HTTP {status}: {want.json()['error']}"
        assert got["status"] == "error" and got["error"] == message and got["lastResult"] is None
        assert page.get_by_role("alert").filter(has_text=message).is_visible()
        assert page.locator("#file-result").is_hidden()
    page.close()


def test_live_microphone_and_camera_stream_updates(browser: Browser, playground: str, files: dict[str, Path]) -> None:
    """Keyboard only: Live tab, camera on, Start; updates arrive over /stream; Stop sends {"end": true}."""
    page, _ = open_page(browser, playground)
    sent: list[str | bytes] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(frame)))
    page.get_by_role("tab", name="File").focus()
    page.keyboard.press("ArrowRight")
    assert page.get_by_role("tab", name="Live").get_attribute("aria-selected") == "true"
    assert page.locator("#view-live").is_visible() and page.locator("#view-file").is_hidden()
    page.get_by_label("Also send the camera").focus()
    page.keyboard.press("Space")
    page.get_by_role("button", name="Start").focus()
    page.keyboard.press("Enter")
    wait_for(page, "window.fusionEmotion.updates.length >= 3 || window.fusionEmotion.status === 'error'")
    assert state(page)["status"] == "busy", state(page)["error"]
    screenshot(page, "playground-live.png")
    page.get_by_role("button", name="Stop").focus()
    page.keyboard.press("Enter")
    wait_for(page, "['done', 'error'].includes(window.fusionEmotion.status)")
    got = state(page)
    assert got["status"] == "done", got["error"]  # the service closed with 1000 after the last update
    updates = got["updates"]
    assert len(updates) >= 3
    assert all(b["t_end"] > a["t_end"] for a, b in zip(updates, updates[1:]))
    for u in updates:
        assert sum(u[k] for k in C.LABELS) == pytest.approx(1.0, abs=1e-4)
        assert u["dominant_emotion"] == max(C.LABELS, key=lambda k: u[k])
        assert set(u["qa_flags"]) == set(C.QA_FLAG_NAMES)
    last = updates[-1]
    assert last["qa_flags"]["video_face_detection_confidence"] is not None  # the camera's frames were scored
    assert shown_flags(page, "live-flags") == expected_flags(last["qa_flags"])
    assert page.locator("#live-dominant").inner_text().startswith(last["dominant_emotion"])
    texts = [json.loads(m) for m in sent if isinstance(m, str)]
    assert texts[0]["encoding"] == "pcm_f32le" and texts[0]["channels"] == 1 and texts[0]["hop_s"] == 1
    assert any("frame_jpeg_b64" in m for m in texts) and any(isinstance(m, bytes) for m in sent)
    assert texts[-1] == {"end": True}
    points = page.locator('#live-chart polyline[data-label="happy"]').get_attribute("points")
    assert len(points.split()) == len(updates)
    page.close()
