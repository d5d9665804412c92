"""Recorded-call options shared by every route and client: who the speakers are, and whether to gate on speech.

The names and values live in :mod:`fusion_emotion.contract` (``speakers``, ``speaker_names``, ``vad``); the
rules that turn a request's raw values into settings live here, so the front end, the CLI and batch agree.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fusion_emotion import contract as C
from fusion_emotion.core.result import speakers_result
from fusion_emotion.core.summary import call_summary, summary_json
from fusion_emotion.errors import ErrorKind, ServingError

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class CallOptions:
    """Validated call settings: ``names`` is empty unless ``speakers == "channels"`` (channel i = names[i])."""

    speakers: str = C.SPEAKERS_MIXED
    names: tuple[str, ...] = ()
    vad: bool = False
    summary: bool = False  # add "summary": per speaker (core.summary)

    @property
    def per_channel(self) -> bool:
        return self.speakers == C.SPEAKERS_CHANNELS


def _bad(subject: str, reason: str) -> ServingError:
    return ServingError(ErrorKind.BAD_REQUEST, subject, reason)


def parse_names(raw: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"agent,customer"`` (or a list) -> names, one per channel; None or empty -> ``channel_0, channel_1``."""
    if raw is None or raw == "" or (not isinstance(raw, str) and len(raw) == 0):
        return C.default_speaker_names()
    if not isinstance(raw, str) and not all(isinstance(x, str) for x in raw):
        raise _bad("speaker_names", "must be names separated by commas")
    parts = [p.strip() for p in (raw.split(",") if isinstance(raw, str) else raw)]
    if not 1 <= len(parts) <= C.MAX_SPEAKER_CHANNELS:
        raise _bad("speaker_names", f"gives {len(parts)} names; 1 to {C.MAX_SPEAKER_CHANNELS} are allowed")
    for name in parts:
        if not _NAME_RE.match(name):
            raise _bad("speaker_names", "each name is 1-32 letters, digits, '_', '.' or '-'")
    if len(set(parts)) != len(parts):
        raise _bad("speaker_names", "names must differ")
    return tuple(parts)


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(name, "must be true or false")


def call_options(
    speakers: object = None, speaker_names: object = None, vad: object = None, summary: object = None
) -> CallOptions:
    """Raw option values (None: not given) -> settings; vad defaults to on exactly with ``speakers=channels``."""
    mode = C.SPEAKERS_MIXED if speakers in (None, "") else speakers
    if mode not in C.SPEAKER_MODES:
        raise _bad("speakers", f"must be one of {', '.join(C.SPEAKER_MODES)}")
    per_channel = mode == C.SPEAKERS_CHANNELS
    if speaker_names not in (None, "") and not per_channel:
        raise _bad("speaker_names", "needs speakers=channels")
    names = parse_names(speaker_names) if per_channel else ()  # type: ignore[arg-type]
    gate = per_channel if vad in (None, "") else _flag(vad, "vad")
    return CallOptions(str(mode), names, gate, summary not in (None, "") and _flag(summary, "summary"))


def pairs(options: CallOptions) -> dict[str, str]:
    """As query parameters / custom attributes; only what differs from the defaults."""
    out: dict[str, str] = {}
    if options.per_channel:
        out["speakers"] = C.SPEAKERS_CHANNELS
        if options.names != C.default_speaker_names():
            out["speaker_names"] = ",".join(options.names)
    if options.vad != options.per_channel:
        out["vad"] = "true" if options.vad else "false"
    if options.summary:
        out["summary"] = "true"
    return out


def run_per_speaker(options: CallOptions, one: Callable[[int | None], dict[str, Any]]) -> dict[str, Any]:
    """``one(channel)`` is one timeline (None: the channels mixed); per speaker: one per channel, merged.

    The synchronous routes (gRPC, in-process) share this; the front end runs the same calls concurrently and
    merges them with the same :func:`core.result.speakers_result`.
    """
    if not options.per_channel:
        return finish(options, one(None))
    return finish(options, speakers_result({name: one(i) for i, name in enumerate(options.names)}))


def finish(options: CallOptions, result: dict[str, Any]) -> dict[str, Any]:
    """The finished timeline result: with ``"summary"`` when asked for (every route adds it here)."""
    if options.summary:
        result["summary"] = summary_json(call_summary(result))
    return result


def add_call_arguments(p: argparse.ArgumentParser) -> None:
    """``--speakers``, ``--speaker-names`` and ``--vad/--no-vad`` for the commands that make timelines."""
    p.add_argument(
        "--speakers",
        choices=C.SPEAKER_MODES,
        help="channels: each audio channel is one speaker, analysed alone (default mixed: channels averaged)",
    )
    p.add_argument("--speaker-names", metavar="A,B", help="one name per channel (default channel_0,channel_1)")
    p.add_argument(
        "--vad",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score only windows holding speech (default: on with --speakers channels, else off)",
    )
    p.add_argument(
        "--summary", action="store_true", default=None, help='add "summary": per speaker, shares, means, top moments'
    )


def call_from_args(args: argparse.Namespace) -> CallOptions:
    """The CLI flags of :func:`add_call_arguments` -> settings (a BAD_REQUEST ServingError when wrong)."""
    return call_options(args.speakers, args.speaker_names, args.vad, args.summary)
