"""``fusion-emotion evaluate``: accuracy and F1 of a deployment on a labelled RAVDESS / CREMA-D folder.

File names carry the labels, so any folder holding RAVDESS
(``MM-VC-EE-II-SS-RR-AA.ext``) and/or CREMA-D (``AAAA_SSS_EMO_LL.ext``) files,
at any depth, is a dataset. Emotions outside the model's six (RAVDESS calm and
surprised) are skipped and counted, as are names neither scheme recognises.
Metrics are computed with numpy here, so the report needs no scikit-learn.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import tritonclient.grpc as grpcclient

from fusion_emotion import contract as C
from fusion_emotion.client.http import predict_url
from fusion_emotion.client.triton import infer_grpc

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".flv", ".avi"}
AUDIO_SUFFIXES = {".wav"}

RAVDESS_EMOTIONS: dict[str, str | None] = {
    "01": "neutral",
    "02": None,  # calm: not one of the model's classes
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": None,  # surprised
}
RAVDESS_SKIPPED_NAMES = {"02": "calm", "08": "surprised"}
CREMA_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}

_RAVDESS_RE = re.compile(r"^(0[1-3])-(0[12])-(\d{2})-(0[12])-(0[12])-(0[12])-(\d{2})$")
_CREMA_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")

PredictFn = Callable[[bytes | None, bytes | None], np.ndarray]


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    label: str  # one of contract.LABELS
    actor: str  # "ravdess:AA" or "crema-d:AAAA"
    dataset: str


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str  # e.g. "emotion_calm", "unrecognised_name", "unsupported_extension"


def parse_name(path: Path) -> LabelledFile | Skipped:
    """Label and actor from a RAVDESS or CREMA-D file name, or why the file is skipped."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES | AUDIO_SUFFIXES:
        return Skipped(path, "unsupported_extension")
    stem = path.stem
    m = _RAVDESS_RE.match(stem)
    if m:
        emotion_code, actor = m.group(3), m.group(7)
        if emotion_code not in RAVDESS_EMOTIONS or actor == "00":
            return Skipped(path, "unrecognised_name")
        label = RAVDESS_EMOTIONS[emotion_code]
        if label is None:
            return Skipped(path, f"emotion_{RAVDESS_SKIPPED_NAMES[emotion_code]}")
        return LabelledFile(path, label, f"ravdess:{actor}", "ravdess")
    m = _CREMA_RE.match(stem)
    if m and m.group(3) in CREMA_EMOTIONS and m.group(4) in {"LO", "MD", "HI", "XX"}:
        return LabelledFile(path, CREMA_EMOTIONS[m.group(3)], f"crema-d:{m.group(1)}", "crema-d")
    return Skipped(path, "unrecognised_name")


def scan(root: Path) -> tuple[list[LabelledFile], list[Skipped]]:
    """Every file under ``root`` (recursive, hidden entries ignored), in a stable order."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    found: list[LabelledFile] = []
    skipped: list[Skipped] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        item = parse_name(path)
        (found if isinstance(item, LabelledFile) else skipped).append(item)
    return found, skipped


# --------------------------------------------------------------------------- metrics
def confusion_matrix(y_true: Iterable[int], y_pred: Iterable[int], num_classes: int = C.NUM_CLASSES) -> np.ndarray:
    """int64 [true, predicted] counts."""
    t = np.asarray(list(y_true), dtype=np.int64)
    p = np.asarray(list(y_pred), dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (undefined precision/recall counts as 0)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_metrics(cm: np.ndarray, labels: tuple[str, ...] = C.LABELS) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and their macro averages.

    Macro averages are over the classes present in the ground truth (support > 0),
    so a dataset without, say, disgust is not penalised for it.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    total = cm.sum()
    present = support > 0
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
    }


def per_group_accuracy(groups: list[str], correct: list[bool]) -> dict[str, dict[str, float | int]]:
    """``{group: {"accuracy": a, "n": n}}`` sorted by group."""
    n: Counter[str] = Counter()
    ok: Counter[str] = Counter()
    for g, c in zip(groups, correct, strict=True):
        n[g] += 1
        ok[g] += int(c)
    return {g: {"accuracy": ok[g] / n[g], "n": n[g]} for g in sorted(n)}


# --------------------------------------------------------------------------- running
@dataclass
class Outcome:
    item: LabelledFile
    predicted: str | None = None
    error: str | None = None


@dataclass
class EvaluationRun:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0


class Progress:
    """A progress bar on a terminal; plain lines (about every 10 %) otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = total
        self.stream = stream
        self.width = width
        self.done = 0
        self.failed = 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._step = max(1, total // 10)

    def update(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += int(failed)
        if self.tty:
            filled = int(self.width * self.done / max(1, self.total))
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} failed={self.failed}")
            if self.done == self.total:
                self.stream.write("\n")
        elif self.done % self._step == 0 or self.done == self.total:
            self.stream.write(f"evaluated {self.done}/{self.total} (failed {self.failed})\n")
        self.stream.flush()


def read_media(item: LabelledFile) -> tuple[bytes | None, bytes | None]:
    data = item.path.read_bytes()
    return (None, data) if item.path.suffix.lower() in AUDIO_SUFFIXES else (data, None)


def evaluate_files(
    items: list[LabelledFile], predict: PredictFn, concurrency: int = 1, progress: Progress | None = None
) -> list[Outcome]:
    """Predict every file (``concurrency`` at a time); a failing file is recorded, never fatal."""

    def one(item: LabelledFile) -> Outcome:
        try:
            probs = np.asarray(predict(*read_media(item)), dtype=np.float64).reshape(-1)
            return Outcome(item, predicted=C.LABELS[int(np.argmax(probs))])
        except Exception as exc:  # reported per file
            message = " ".join(str(exc).split())[:300] or type(exc).__name__
            log.debug("%s failed: %s", item.path, message)
            return Outcome(item, error=message)

    outcomes: list[Outcome | None] = [None] * len(items)
    with cf.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(one, item): i for i, item in enumerate(items)}
        for fut in cf.as_completed(futures):
            out = fut.result()
            outcomes[futures[fut]] = out
            if progress is not None:
                progress.update(failed=out.error is not None)
    return [o for o in outcomes if o is not None]


def build_report(run: EvaluationRun, dataset: Path) -> dict[str, Any]:
    """The JSON report (labels in contract order)."""
    done = [o for o in run.outcomes if o.error is None]
    index = {label: i for i, label in enumerate(C.LABELS)}
    cm = confusion_matrix([index[o.item.label] for o in done], [index[o.predicted or ""] for o in done])
    metrics = classification_metrics(cm)
    failed = [o for o in run.outcomes if o.error is not None]
    return {
        "dataset": str(dataset),
        "labels": list(C.LABELS),
        **metrics,
        "confusion_matrix": cm.tolist(),
        "counts": {
            "files": len(run.outcomes) + len(run.skipped),
            "evaluated": len(done),
            "skipped": dict(sorted(Counter(s.reason for s in run.skipped).items())),
            "failed": len(failed),
            "by_dataset": dict(sorted(Counter(o.item.dataset for o in done).items())),
        },
        "failures": [{"file": str(o.item.path.relative_to(dataset)), "error": o.error} for o in failed],
        "per_actor_accuracy": per_group_accuracy(
            [o.item.actor for o in done], [o.predicted == o.item.label for o in done]
        ),
        "seconds": round(run.seconds, 3),
    }


def plot_confusion(cm: np.ndarray, path: Path, labels: tuple[str, ...] = C.LABELS) -> None:
    """Counts with row-normalised shading (recall per true class)."""
    import matplotlib  # optional: [plots]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: [plots]

    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    try:
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
        fig.colorbar(im, ax=ax, label="share of true class")
        ax.set_title("confusion matrix")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def summary_table(report: dict[str, Any]) -> str:
    """Plain-text summary for the terminal."""
    lines = [f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for label in C.LABELS:
        m = report["per_class"][label]
        lines.append(f"{label:<10}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    lines.append(
        f"{'macro':<10}{report['macro_precision']:>10.3f}{report['macro_recall']:>10.3f}{report['macro_f1']:>10.3f}"
        f"{report['counts']['evaluated']:>10d}"
    )
    counts = report["counts"]
    skipped = ", ".join(f"{k}={v}" for k, v in counts["skipped"].items()) or "none"
    lines.append(
        f"accuracy {report['accuracy']:.3f} on {counts['evaluated']} files; failed {counts['failed']}; skipped {skipped}"
    )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- predictors
def make_predictor(args: argparse.Namespace) -> PredictFn:
    """A thread-safe ``predict(video, audio) -> probabilities`` for the chosen route."""
    if args.local:
        from fusion_emotion.core.pipeline import ReferencePipeline  # optional: [models]

        pipeline = ReferencePipeline(args.local)
        return lambda video, audio: pipeline.predict(video, audio)[0]
    if args.triton:
        local = threading.local()

        def predict_triton(video: bytes | None, audio: bytes | None) -> np.ndarray:
            if not hasattr(local, "client"):
                local.client = grpcclient.InferenceServerClient(args.triton)
            return infer_grpc(args.triton, video, audio, timeout_s=args.timeout, client=local.client)[0]

        return predict_triton

    def predict_http(video: bytes | None, audio: bytes | None) -> np.ndarray:
        result = predict_url(args.url, video, audio, timeout=args.timeout)
        return np.array([result[label] for label in C.LABELS], dtype=np.float64)

    return predict_http


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy/F1 report on a labelled RAVDESS / CREMA-D folder")
    p.add_argument("dataset", type=Path, metavar="DATASET_DIR", help="folder searched recursively for labelled files")
    route = p.add_mutually_exclusive_group(required=True)
    route.add_argument("--triton", metavar="HOST:PORT", help="Triton gRPC endpoint")
    route.add_argument("--url", metavar="URL", help="fusion-emotion front end, e.g. http://127.0.0.1:8080")
    route.add_argument("--local", metavar="DIR", type=Path, help="in-process reference on a model repository")
    p.add_argument("--output", required=True, type=Path, metavar="REPORT_DIR", help="where report.json and PNG go")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        log.error("--concurrency must be >= 1")
        return 2
    try:
        items, skipped = scan(args.dataset)
    except OSError as exc:
        log.error("%s", exc)
        return 2
    log.info("%d labelled files, %d skipped", len(items), len(skipped))
    try:
        predict = make_predictor(args)
    except Exception as exc:  # e.g. a repository that cannot be loaded
        log.error("cannot start the predictor: %s", exc)
        return 2
    start = time.perf_counter()
    outcomes = evaluate_files(items, predict, args.concurrency, Progress(len(items)) if items else None)
    evaluation = EvaluationRun(outcomes, skipped, time.perf_counter() - start)
    report = build_report(evaluation, args.dataset)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(np.asarray(report["confusion_matrix"]), args.output / "confusion_matrix.png")
    sys.stdout.write(summary_table(report))
    sys.stdout.write(f"report: {args.output / 'report.json'}\n")
    return 0 if report["counts"]["evaluated"] else 1
