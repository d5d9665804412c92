"""``fusion-emotion evaluate``: RAVDESS / CREMA-D name parsing, numpy metrics, end-to-end reports."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.ops.evaluate import (
    LabelledFile,
    Progress,
    Skipped,
    classification_metrics,
    confusion_matrix,
    parse_name,
    per_group_accuracy,
)


@pytest.mark.parametrize(
    ("name", "label", "actor"),
    [
        ("01-01-05-01-01-01-12.mp4", "angry", "ravdess:12"),
        ("03-01-01-01-02-02-01.wav", "neutral", "ravdess:01"),
        ("02-01-07-02-01-01-24.mp4", "disgust", "ravdess:24"),
        ("01-02-03-01-01-01-05.MP4", "happy", "ravdess:05"),
        ("1001_DFA_ANG_XX.flv", "angry", "crema-d:1001"),
        ("1091_TIE_SAD_HI.wav", "sad", "crema-d:1091"),
        ("1002_IEO_FEA_LO.mp4", "fearful", "crema-d:1002"),
        ("1003_ITS_NEU_MD.avi", "neutral", "crema-d:1003"),
    ],
)
def test_parse_known_names(name: str, label: str, actor: str) -> None:
    item = parse_name(Path("x") / name)
    assert isinstance(item, LabelledFile) and (item.label, item.actor) == (label, actor)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("03-01-02-01-01-01-01.wav", "emotion_calm"),
        ("01-01-08-02-02-02-10.mp4", "emotion_surprised"),
        ("01-01-09-01-01-01-10.mp4", "unrecognised_name"),  # no emotion 09
        ("1001_DFA_XYZ_XX.wav", "unrecognised_name"),
        ("clip.mp4", "unrecognised_name"),
        ("03-01-05-01-01-01-12.txt", "unsupported_extension"),
    ],
)
def test_parse_skipped_names(name: str, reason: str) -> None:
    item = parse_name(Path(name))
    assert isinstance(item, Skipped) and item.reason == reason


def test_metrics_against_hand_computed_values() -> None:
    # 3 classes; true: a a a b b c ; pred: a a b b c c
    cm = confusion_matrix([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = classification_metrics(cm, ("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision a=2/2 b=1/2 c=1/2 ; recall a=2/3 b=1/2 c=1/1
    pa, pb, pc = 1.0, 0.5, 0.5
    ra, rb, rc = 2 / 3, 0.5, 1.0
    fa, fb, fc = 2 * pa * ra / (pa + ra), 0.5, 2 * pc * rc / (pc + rc)
    assert m["per_class"]["a"] == pytest.approx({"precision": pa, "recall": ra, "f1": fa, "support": 3})
    assert m["per_class"]["c"]["f1"] == pytest.approx(fc)
    assert m["macro_precision"] == pytest.approx((pa + pb + pc) / 3)
    assert m["macro_recall"] == pytest.approx((ra + rb + rc) / 3)
    assert m["macro_f1"] == pytest.approx((fa + fb + fc) / 3)


def test_metrics_absent_class_and_never_predicted() -> None:
    # class c absent from the truth; class b never predicted
    m = classification_metrics(confusion_matrix([0, 1], [0, 0], 3), ("a", "b", "c"))
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["a"]["precision"] == pytest.approx(0.5)
    assert m["macro_recall"] == pytest.approx(0.5)  # over a and b only
    assert classification_metrics(np.zeros((6, 6), int))["accuracy"] == 0.0


def test_per_actor_accuracy_and_progress() -> None:
    got = per_group_accuracy(["b", "a", "b", "b"], [True, False, False, True])
    assert got == {"a": {"accuracy": 0.0, "n": 1}, "b": {"accuracy": pytest.approx(2 / 3), "n": 3}}
    stream = io.StringIO()
    bar = Progress(3, stream)
    for failed in (False, True, False):
        bar.update(failed)
    assert stream.getvalue().splitlines()[-1] == "evaluated 3/3 (failed 1)"  # plain lines when not a TTY


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mixed folder: 4 evaluable files, 2 skipped emotions, 1 unknown name, 1 undecodable file."""
    root = tmp_path_factory.mktemp("dataset")
    tone = testmedia.tone(220, 1.0, 16_000)
    (root / "Actor_01").mkdir()
    (root / "crema" / "AudioWAV").mkdir(parents=True)
    (root / "Actor_01" / "03-01-05-01-01-01-01.wav").write_bytes(testmedia.wav(tone, 16_000))
    (root / "Actor_01" / "03-01-02-01-01-01-01.wav").write_bytes(testmedia.wav(tone, 16_000))  # calm
    (root / "Actor_01" / "01-01-08-01-01-01-01.mp4").write_bytes(b"never decoded")  # surprised
    (root / "Actor_01" / "01-01-04-01-01-01-01.mp4").write_bytes(
        testmedia.mp4(width=160, height=120, fps=10, seconds=1.0, audio=testmedia.tone(300, 1.0, 48_000))
    )
    (root / "crema" / "1001_DFA_HAP_XX.flv").write_bytes(
        testmedia.flv(
            width=160, height=120, fps=10, seconds=1.0, audio=testmedia.tone(250, 1.0, 44_100), audio_rate=44_100
        )
    )
    (root / "crema" / "AudioWAV" / "1002_IEO_NEU_LO.wav").write_bytes(testmedia.wav(tone * 0.3, 16_000))
    (root / "crema" / "AudioWAV" / "1002_IEO_SAD_HI.wav").write_bytes(b"RIFF garbage")  # fails to decode
    (root / "notes.wav").write_bytes(testmedia.wav(tone, 16_000))  # unknown name
    return root


def _check_report(out: Path, stdout: str) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == list(C.LABELS)
    counts = report["counts"]
    assert counts["evaluated"] == 4 and counts["failed"] == 1
    assert counts["skipped"] == {"emotion_calm": 1, "emotion_surprised": 1, "unrecognised_name": 1}
    assert counts["by_dataset"] == {"crema-d": 2, "ravdess": 2}
    assert report["failures"][0]["file"].endswith("1002_IEO_SAD_HI.wav") and report["failures"][0]["error"]
    cm = np.asarray(report["confusion_matrix"])
    assert cm.shape == (6, 6) and cm.sum() == 4
    for label in ("angry", "sad", "happy", "neutral"):
        assert cm[C.LABELS.index(label)].sum() == 1
    assert report["accuracy"] == pytest.approx(np.trace(cm) / 4)
    assert set(report["per_actor_accuracy"]) == {"ravdess:01", "crema-d:1001", "crema-d:1002"}
    assert report["per_actor_accuracy"]["ravdess:01"]["n"] == 2
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "macro" in stdout and "accuracy" in stdout
    return report


def test_evaluate_local(dataset: Path, demo_repository: Path, tmp_path: Path, capsys) -> None:
    from fusion_emotion.cli import main

    out = tmp_path / "report_local"
    assert (
        main(["evaluate", str(dataset), "--local", str(demo_repository), "--output", str(out), "--concurrency", "2"])
        == 0
    )
    _check_report(out, capsys.readouterr().out)


@pytest.mark.integration
def test_evaluate_triton_matches_local(dataset: Path, demo_repository: Path, triton, tmp_path: Path, capsys) -> None:
    from fusion_emotion.cli import main

    assert main(["evaluate", str(dataset), "--triton", triton.grpc_url, "--output", str(tmp_path / "t")]) == 0
    via_triton = _check_report(tmp_path / "t", capsys.readouterr().out)
    assert main(["evaluate", str(dataset), "--local", str(demo_repository), "--output", str(tmp_path / "l")]) == 0
    local = _check_report(tmp_path / "l", capsys.readouterr().out)
    assert via_triton["confusion_matrix"] == local["confusion_matrix"]
