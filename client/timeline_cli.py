"""``fusion-emotion timeline``: per-window emotions over a long file, as JSON (+ CSV, PNG plot).

Routes: ``--triton`` (the ``fusion_emotion_timeline`` model over gRPC), ``--url``
(the front end with ``?timeline=true``) or ``--local`` (the in-process
reference on an exported repository). The command needs the models extra (the
window rules live in ``core.timeline``); the plot needs the plots extra.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fusion_emotion.client.cli import add_media_arguments, read_inputs
from fusion_emotion.client.http import predict_url
from fusion_emotion.client.triton import timeline_grpc

from fusion_emotion import contract as C
from fusion_emotion.core.calls import add_call_arguments, call_from_args
from fusion_emotion.core.calls import pairs as call_pairs
from fusion_emotion.core.pipeline import ReferencePipeline
from fusion_emotion.core.timeline import timeline_local
from fusion_emotion.core.windows import MAX_WINDOW_S, MIN_HOP_S, MIN_WINDOW_S, TIMELINE_DEFAULTS, window_params
from fusion_emotion.errors import ServingError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("timeline", help="emotion timeline (overlapping windows) of a video or WAV file")
    add_media_arguments(p)
    route = p.add_mutually_exclusive_group(required=True)
    route.add_argument("--triton", metavar="HOST:PORT", help="Triton gRPC endpoint")
    route.add_argument("--url", metavar="URL", help="fusion-emotion front end, e.g. http://127.0.0.1:8080")
    route.add_argument("--local", metavar="DIR", type=Path, help="in-process reference on a model repository")
    p.add_argument(
        "--window",
        type=float,
        help=f"window length in s, {MIN_WINDOW_S:g}-{MAX_WINDOW_S:g} (default {TIMELINE_DEFAULTS.window_s:g})",
    )
    p.add_argument("--hop", type=float, help=f"hop in s, {MIN_HOP_S:g}-window (default {TIMELINE_DEFAULTS.hop_s:g})")
    add_call_arguments(p)
    p.add_argument("--plot", type=Path, metavar="PNG", help="write the six emotion curves over time")
    p.add_argument("--csv", type=Path, metavar="CSV", help="write one row per window")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    p.set_defaults(func=run)


def segments_csv(result: dict[str, Any]) -> str:
    """One row per window: start, end, the six probabilities, dominant_emotion."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    extra = [k for k in ("speaker", "speech") if any(k in seg for seg in result["segments"])]
    writer.writerow([*extra, "start", "end", *C.LABELS, "dominant_emotion"])
    for seg in result["segments"]:
        probs = [f"{seg[k]:.6f}" if k in seg else "" for k in C.LABELS]
        lead = [str(seg.get(k, "")).lower() for k in extra]
        writer.writerow([*lead, seg["start"], seg["end"], *probs, seg.get("dominant_emotion", "")])
    return out.getvalue()


def plot_timeline(result: dict[str, Any], path: Path, title: str = "") -> None:
    """Six probability curves at the window centres; the dominant emotion shaded around each centre."""
    import matplotlib  # optional: [plots]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: [plots]

    segs = [s for s in result["segments"] if s.get("speech") is not False]  # silent (vad) windows are gaps
    centres = np.array([(s["start"] + s["end"]) / 2 for s in segs], dtype=np.float64)
    probs = np.array([[s[k] for k in C.LABELS] for s in segs], dtype=np.float64).reshape(-1, C.NUM_CLASSES)
    colors = dict(zip(C.LABELS, plt.get_cmap("tab10").colors, strict=False))
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    try:
        if len(segs):
            edges = np.concatenate([[segs[0]["start"]], (centres[1:] + centres[:-1]) / 2, [segs[-1]["end"]]])
            for i, seg in enumerate(segs):
                ax.axvspan(edges[i], edges[i + 1], color=colors[seg["dominant_emotion"]], alpha=0.15, lw=0)
        for j, label in enumerate(C.LABELS):
            ax.plot(centres, probs[:, j], marker="o", ms=3, color=colors[label], label=label)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1)
        ax.set_title(title or f"emotion timeline (clip: {result.get('dominant_emotion', '?')}); shading = dominant")
        ax.legend(loc="upper right", ncol=3, fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def compute(args: argparse.Namespace, video: bytes | None, audio: bytes | None) -> dict[str, Any]:
    call = call_from_args(args)
    if args.local:
        return timeline_local(ReferencePipeline(args.local), video, audio, args.window, args.hop, call=call)
    if args.triton:
        return timeline_grpc(args.triton, video, audio, args.window, args.hop, args.timeout, call=call)

    # The front end with ?timeline=true (path defaults to /invocations).
    params = {"timeline": "true", **call_pairs(call)}
    params.update({k: repr(float(v)) for k, v in (("window_s", args.window), ("hop_s", args.hop)) if v is not None})
    return predict_url(args.url, video, audio, timeout=args.timeout, params=params)


def run(args: argparse.Namespace) -> int:
    try:
        window_params(args.window, args.hop)
        call_from_args(args)
        video, audio = read_inputs(args.file, args.audio)
        result = compute(args, video, audio)
    except (OSError, ValueError, ServingError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # server-side errors (tritonclient, HTTP) reach the user as one line
        log.error("timeline failed: %s", exc)
        return 1
    if args.csv:
        args.csv.write_text(segments_csv(result))
    if args.plot and "speakers" in result:
        log.warning("--plot draws one timeline; skipped for --speakers channels")
    elif args.plot:
        plot_timeline(result, args.plot, title=args.file.name)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0
