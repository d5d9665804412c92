"""Alert rules on a live stream: "angry at 0.6 or more for 5 s" starts an alert, dropping below ends it.

A contact centre routes a call when the customer has been angry for a while, not on one noisy update; the
smoothing every integrator would otherwise write lives here, once. Rules come in a stream's config
(``{"alerts": [{"emotion": "angry", "min_p": 0.6, "for_s": 5, "speaker": "customer"}]}``), are checked
there (a bad rule refuses the stream with its reason), and are evaluated on each update the stream sends.
Pure functions and one small state machine: no I/O, tested without a server.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fusion_emotion import contract as C
from fusion_emotion.errors import ErrorKind, ServingError

# Bounds: a stream's rules are evaluated on every update, so their number is capped.
MAX_RULES = 8
MAX_FOR_S = 600.0
_RULE_KEYS = {"emotion", "min_p", "for_s", "speaker"}
_SPEAKER_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


@dataclass(frozen=True)
class AlertRule:
    emotion: str
    min_p: float
    for_s: float
    speaker: str | None = None  # None: every speaker, each on its own


def _bad(reason: str) -> ServingError:
    return ServingError(ErrorKind.BAD_REQUEST, "alerts", reason)


def _number(rule: Mapping[str, Any], key: str, index: int, default: float | None = None) -> float:
    value = rule.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"rule {index}: {key} must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise _bad(f"rule {index}: {key} is out of range") from None
    if not math.isfinite(number):
        raise _bad(f"rule {index}: {key} must be finite")
    return number


def parse_rule(raw: Any, index: int) -> AlertRule:
    if not isinstance(raw, dict):
        raise _bad(f'rule {index} must be an object like {{"emotion": "angry", "min_p": 0.6, "for_s": 5}}')
    unknown = sorted(str(k)[:32] for k in set(raw) - _RULE_KEYS)
    if unknown:
        raise _bad(f"rule {index}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(_RULE_KEYS))}")
    emotion = raw.get("emotion")
    if emotion not in C.LABELS:
        raise _bad(f"rule {index}: emotion must be one of {', '.join(C.LABELS)}")
    min_p = _number(raw, "min_p", index)
    if not 0.0 < min_p <= 1.0:
        raise _bad(f"rule {index}: min_p must be in (0, 1], got {min_p:g}")
    for_s = _number(raw, "for_s", index, 0.0)
    if not 0.0 <= for_s <= MAX_FOR_S:
        raise _bad(f"rule {index}: for_s must be 0..{MAX_FOR_S:g} seconds, got {for_s:g}")
    speaker = raw.get("speaker")
    if speaker is not None and not (isinstance(speaker, str) and _SPEAKER_RE.fullmatch(speaker)):
        raise _bad(f"rule {index}: speaker must be a name of 1-32 letters, digits, '_', '-' or '.'")
    return AlertRule(emotion, min_p, for_s, speaker)


def parse_rules(raw: Any) -> tuple[AlertRule, ...]:
    """A config's ``alerts`` list -> rules; a ServingError (bad_request, subject ``alerts``) naming the fault."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad("alerts must be a list of rules")
    if len(raw) > MAX_RULES:
        raise _bad(f"{len(raw)} rules, over the limit of {MAX_RULES} per stream")
    return tuple(parse_rule(rule, i) for i, rule in enumerate(raw))


@dataclass
class _Run:
    """One rule's state for one speaker: when it began to hold, and whether its alert has started."""

    since: float | None = None
    started: bool = False
    peak: float = 0.0


@dataclass
class AlertTracker:
    """Feeds each update to every rule; returns the ``{"alert": …}`` messages to send after it."""

    rules: tuple[AlertRule, ...]
    _runs: dict[tuple[int, str | None], _Run] = field(default_factory=dict)
    _last_t: float = 0.0

    def update(self, t_end: float, probabilities: Mapping[str, float], speaker: str | None = None) -> list[dict]:
        self._last_t = t_end
        out = []
        for i, rule in enumerate(self.rules):
            if rule.speaker is not None and rule.speaker != speaker:
                continue
            p = float(probabilities[rule.emotion])
            run = self._runs.setdefault((i, speaker), _Run())
            if p >= rule.min_p:
                run.since = t_end if run.since is None else run.since
                run.peak = max(run.peak, p)
                if not run.started and t_end - run.since >= rule.for_s - 1e-9:
                    run.started = True
                    out.append(self._message(i, rule, "start", t_end, run, speaker, p))
            elif run.since is not None:
                if run.started:
                    out.append(self._message(i, rule, "end", t_end, run, speaker, p))
                self._runs[(i, speaker)] = _Run()
        return out

    def finish(self) -> list[dict]:
        """The stream ended: every started alert ends at the last update's time."""
        out = []
        for (i, speaker), run in sorted(self._runs.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if run.started:
                out.append(self._message(i, self.rules[i], "end", self._last_t, run, speaker, None))
        self._runs.clear()
        return out

    @staticmethod
    def _message(
        index: int, rule: AlertRule, state: str, t: float, run: _Run, speaker: str | None, p: float | None
    ) -> dict:
        """The evidence: since when the rule held, for how long, its peak and the probability now."""
        since = run.since if run.since is not None else t
        alert: dict[str, Any] = {
            "rule": index,
            "state": state,
            "t": round(t, 6),
            "emotion": rule.emotion,
            "min_p": rule.min_p,
            "since": round(since, 6),
            "held_s": round(t - since, 6),
            "peak": round(run.peak, 6),
            "p": None if p is None else round(p, 6),
        }
        if speaker is not None:
            alert["speaker"] = speaker
        return {"alert": alert}
