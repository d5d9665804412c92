"""Command-line helpers the command modules share (kept below them all: ``fusion_emotion.cli`` only composes)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def field_args(cls: type, args: argparse.Namespace, **explicit: Any) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls``: each field whose flag has the same dest, then ``explicit``.

    Flags named after the fields they set need no hand-written ``field=args.field`` list to drift.
    """
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return {**values, **explicit}


def env_pair(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (an ``--env`` flag) -> ``(KEY, VALUE)``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value
