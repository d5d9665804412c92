"""The playground's Starlette app: the page, its assets and ``config.json``, with a CSP allowing only its origin.

Whoever mounts it (the front end at ``/ui``, ``fusion-emotion ui``) answers the page's ``POST /invocations``
and ``GET /stream`` (the paths in :class:`PageConfig`). Every asset is in ``static/`` and read once; the
Content-Security-Policy keeps the page from loading or sending anything to another origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fusion_emotion import contract as C
from fusion_emotion.core.windows import STREAM_DEFAULTS, TIMELINE_DEFAULTS
from fusion_emotion.playground.guide import NOT_AVAILABLE, guide_json

ASSET_DIR = Path(__file__).with_name("static")
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# 'self' only: no CDN, no web fonts, no egress. connect-src 'self' covers the page's own ws:// origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class PageConfig:
    """What the page needs to know about where it runs."""

    target: str
    """What the page talks to, in words (shown in its header)."""
    live_unavailable: str | None = None
    """Why the Live view cannot run against this target; None when it can."""
    invocations: str = "/invocations"
    stream: str = "/stream"

    def json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "live_unavailable": self.live_unavailable,
            "invocations": self.invocations,
            "stream": self.stream,
            "labels": list(C.LABELS),
            "qa_flags": guide_json(),
            "not_available": NOT_AVAILABLE,
            "media_types": {**C.VIDEO_MEDIA_TYPES, **C.AUDIO_MEDIA_TYPES},
            "window_s": TIMELINE_DEFAULTS.window_s,
            "stream_window_s": STREAM_DEFAULTS.window_s,
            "stream_hop_s": STREAM_DEFAULTS.hop_s,
            "attributes_header": C.RESPONSE_ATTRIBUTES_HEADER,
            "untrained_attribute": C.UNTRAINED_ATTRIBUTE,
        }


def load_assets(folder: Path = ASSET_DIR) -> dict[str, tuple[bytes, str]]:
    """Every file of the page: name -> (bytes, media type); nothing else is ever served."""
    return {
        p.name: (p.read_bytes(), MEDIA_TYPES[p.suffix]) for p in sorted(folder.iterdir()) if p.suffix in MEDIA_TYPES
    }


def playground_app(config: PageConfig) -> Starlette:
    """The page at ``/`` (mount it at ``/ui``), its assets by name, and ``config.json``."""
    assets = load_assets()
    settings = config.json()

    async def index(request: Request) -> Response:
        body, media_type = assets["index.html"]
        return Response(body, media_type=media_type, headers=HEADERS)

    async def page_config(request: Request) -> Response:
        return JSONResponse(settings, headers=HEADERS)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(found[0], media_type=found[1], headers=HEADERS)

    return Starlette(
        routes=[Route("/", index), Route("/config.json", page_config), Route("/{name:str}", asset)],
    )
