"""Fuzzing the decoders: mutated MP4/FLV/AVI/WAV bytes give a MediaError or a sane result, nothing else.

The hypothesis loop runs in a child process (this file run as a script) so a
native crash in FFmpeg fails the test instead of killing pytest. Before each
example the child writes the input to ``last_input.bin``; on a crash, a hang
(``faulthandler`` ends the child past the per-example deadline) or an
unexpected exception the input is kept as a reproducer next to the run's report.

Sizes: ``FUSION_EMOTION_FUZZ_EXAMPLES`` examples per seed format (default 40,
i.e. 200 in all over five seeds). ``derandomize=True``: the same inputs every run.
The accepted corpus (a deterministic sample of the mutated inputs) then goes
through the live Triton ensemble: every request is answered (success or
INVALID_ARG) and the server is still healthy and still right afterwards.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core.audio import decode_audio
from fusion_emotion.core.probe import MediaError
from fusion_emotion.core.rows import decode_row
from fusion_emotion.core.video import decode_video
from fusion_emotion.tensors import build_inputs, parse_result, requested_outputs

ROOT = Path(__file__).resolve().parents[1]
SEED_KINDS = ("mp4", "flv", "avi", "wav", "wav_f32")
VIDEO_KINDS = ("mp4", "flv", "avi")
DEFAULT_EXAMPLES_PER_SEED = 40
EXAMPLE_DEADLINE_S = 30.0  # one decode of a <100 KiB input; generous for a loaded 2-core machine
MAX_RSS_GROWTH_MB = 512  # max-RSS growth of the fuzz child over its warm-up
CORPUS_EVERY = 4  # keep every 4th mutated input for the live-server pass


def examples_per_seed() -> int:
    raw = os.environ.get("FUSION_EMOTION_FUZZ_EXAMPLES", "").strip()
    if not raw:
        return DEFAULT_EXAMPLES_PER_SEED
    return max(1, int(raw) // len(SEED_KINDS))


# --------------------------------------------------------------------------- seeds and mutations
def make_seeds() -> dict[str, bytes]:
    """Small but real files of every accepted container (with audio tracks) and two WAV codings."""

    tone22 = testmedia.tone(330, 1.0, 22_050)
    tone16 = testmedia.tone(440, 0.5, 16_000)
    return {
        "mp4": testmedia.mp4(width=160, height=120, fps=10, seconds=1.0, audio=testmedia.tone(330, 1.0, 16_000), audio_rate=16_000, video_bitrate=200_000),
        "flv": testmedia.flv(width=160, height=120, fps=10, seconds=1.0, audio=tone22, audio_rate=22_050, video_bitrate=200_000),
        "avi": testmedia.avi(width=160, height=120, fps=10, seconds=1.0, audio=tone22, audio_rate=22_050, video_bitrate=200_000),
        "wav": testmedia.wav(np.stack([tone16, 0.5 * tone16], axis=1), 16_000, "s16"),
        "wav_f32": testmedia.wav(tone16, 16_000, "f32"),
    }  # fmt: skip


INTERESTING_U32 = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE)


def mutate(data: bytes, ops: list[tuple[str, int, int]], other: bytes) -> bytes:
    """Apply (kind, position, value) operations: bit flips, truncation, splices, header fields."""
    buf = bytearray(data)
    for kind, pos, value in ops:
        if not buf:
            break
        at = pos % len(buf)
        if kind == "flip":
            buf[at] ^= 1 << (value % 8)
        elif kind == "byte":
            buf[at] = value % 256
        elif kind == "truncate":
            del buf[max(1, at) :]
        elif kind == "splice":  # a piece of another seed (same or different container) dropped in
            start = value % max(1, len(other))
            piece = other[start : start + 1 + value % 512]
            buf[at:at] = piece
        elif kind == "delete":
            del buf[at : at + 1 + value % 256]
        elif kind == "duplicate":
            piece = bytes(buf[at : at + 1 + value % 1024])
            buf[at:at] = piece
        elif kind == "field":  # a 32-bit header field (sizes, counts, rates) set to an edge value
            hdr = pos % min(len(buf), 512)
            word = INTERESTING_U32[value % len(INTERESTING_U32)]
            order = "little" if value % 2 else "big"  # RIFF/AVI little-endian, MP4/FLV big-endian
            buf[hdr : hdr + 4] = word.to_bytes(4, order)
    return bytes(buf)


# --------------------------------------------------------------------------- the child process
def _check_result(feats: Any) -> None:

    assert feats.frames is not None or feats.waveform is not None
    if feats.frames is not None:
        assert feats.frames.shape == (3, C.NUM_FRAMES, *C.CROP_HW) and feats.frames.dtype == np.float32
        assert np.isfinite(feats.frames).all()
    if feats.waveform is not None:
        assert feats.waveform.shape == (C.AUDIO_SAMPLES,) and feats.waveform.dtype == np.float32
        assert np.isfinite(feats.waveform).all(), "non-finite audio samples reached the model input"
    assert feats.media_qa.shape == (len(C.MEDIA_QA_NAMES),)


class _Worker:
    """The child process's hypothesis run over every seed: counts, the slowest example, the kept corpus."""

    def __init__(self, out_dir: Path, per_seed: int) -> None:
        self.out_dir, self.per_seed = out_dir, per_seed
        self.seeds = make_seeds()
        self.corpus = out_dir / "corpus"
        self.corpus.mkdir(parents=True, exist_ok=True)
        self.last = out_dir / "last_input.bin"
        for kind, data in self.seeds.items():  # warm-up: codecs loaded, seeds decode
            decode_row(data if kind in VIDEO_KINDS else None, None if kind in VIDEO_KINDS else data)
        self.base_rss = self.maxrss_mb()
        self.stats: dict[str, Any] = {"examples": 0, "media_errors": 0, "accepted": 0, "too_large": 0, "by_seed": {}}
        self.slowest = (0.0, "")
        self.saved = 0

    @staticmethod
    def maxrss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _decode(self, kind: str, video: bytes | None, audio: bytes | None) -> None:
        """The serving path under the per-example deadline: a MediaError or a sane row, nothing else."""
        faulthandler.dump_traceback_later(EXAMPLE_DEADLINE_S, exit=True)
        t0 = time.monotonic()
        try:
            _check_result(decode_row(video, audio))
            self.stats["accepted"] += 1
        except MediaError as exc:
            self.stats["media_errors"] += 1
            self.stats["too_large"] += int(exc.too_large)
        except BaseException:
            shutil.copy(self.last, self.out_dir / "reproducer.bin")  # hypothesis shrinks: the last kept is smallest
            raise
        finally:
            faulthandler.cancel_dump_traceback_later()
        self.slowest = max(self.slowest, (time.monotonic() - t0, kind))

    def one(self, kind: str, ops: list[tuple[str, int, int]], other_kind: str, with_wav: bool) -> None:
        data = mutate(self.seeds[kind], ops, self.seeds[other_kind])
        self.last.write_bytes(json.dumps({"kind": kind, "with_wav": with_wav}).encode() + b"\n" + data)
        is_video = kind in VIDEO_KINDS
        audio = (self.seeds["wav"] if with_wav else None) if is_video else data
        self._decode(kind, data if is_video else None, audio)
        try:  # the wrong decoder too: a WAV handed to decode_video and a video to decode_audio
            (decode_audio if is_video else decode_video)(data)
        except MediaError:
            pass
        self.stats["examples"] += 1
        self.stats["by_seed"][kind] = self.stats["by_seed"].get(kind, 0) + 1
        if self.stats["examples"] % CORPUS_EVERY == 0:
            (self.corpus / f"{self.saved:05d}.{kind}").write_bytes(data)
            self.saved += 1

    def test_for(self, kind: str) -> Any:
        op = st.tuples(
            st.sampled_from(
                ["flip", "flip", "flip", "byte", "truncate", "splice", "delete", "duplicate", "field", "field"]
            ),
            st.integers(0, 2**20),
            st.integers(0, 2**16),
        )

        @settings(
            max_examples=self.per_seed,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(ops=st.lists(op, min_size=1, max_size=6), other_kind=st.sampled_from(SEED_KINDS), with_wav=st.booleans())
        def fuzz_one(ops: list[tuple[str, int, int]], other_kind: str, with_wav: bool) -> None:
            self.one(kind, ops, other_kind, with_wav)

        return fuzz_one

    def report(self) -> dict[str, Any]:
        return {
            **self.stats,
            "max_rss_mb": round(self.maxrss_mb(), 1),
            "rss_growth_mb": round(self.maxrss_mb() - self.base_rss, 1),
            "slowest_example_s": round(self.slowest[0], 3),
            "slowest_seed": self.slowest[1],
            "corpus_files": self.saved,
        }


def run_worker(out_dir: Path, per_seed: int) -> int:
    """Hypothesis over every seed; writes report.json and corpus/ into ``out_dir``."""
    worker = _Worker(out_dir, per_seed)
    for kind in SEED_KINDS:
        try:
            worker.test_for(kind)()
        except Exception:
            (out_dir / "failure.txt").write_text(traceback.format_exc())
            if worker.last.exists() and not (out_dir / "reproducer.bin").exists():
                shutil.copy(worker.last, out_dir / "reproducer.bin")
            return 1
    (out_dir / "report.json").write_text(json.dumps(worker.report(), indent=2))
    return 0


# --------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("fuzz")
    per_seed = examples_per_seed()
    # the child ends itself past EXAMPLE_DEADLINE_S per example; this only catches a wedged interpreter
    budget = 120 + per_seed * len(SEED_KINDS) * 5
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "worker", str(out), str(per_seed)],
            capture_output=True,
            text=True,
            timeout=budget,
            env=env,
            cwd=out,  # hypothesis keeps its .hypothesis/ directory in the working directory
        )
    except subprocess.TimeoutExpired:
        _keep_reproducer(out)
        pytest.fail(f"fuzz child hung past {budget} s; last input kept as {out / 'reproducer.bin'}")
    if proc.returncode != 0:
        _keep_reproducer(out)
        detail = (out / "failure.txt").read_text() if (out / "failure.txt").exists() else proc.stderr[-4000:]
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        pytest.fail(f"fuzz child failed ({how}); reproducer: {out / 'reproducer.bin'}\n{detail}")
    report = json.loads((out / "report.json").read_text())
    print("fuzz report:", json.dumps(report))
    return out, report


def _keep_reproducer(out: Path) -> None:
    if (out / "last_input.bin").exists() and not (out / "reproducer.bin").exists():
        shutil.copy(out / "last_input.bin", out / "reproducer.bin")


def test_mutate_is_deterministic_and_changes_bytes() -> None:
    data = bytes(range(256)) * 4
    ops = [("flip", 3, 1), ("field", 8, 7), ("splice", 100, 50), ("truncate", 900, 0)]
    a, b = mutate(data, ops, b"xyz" * 100), mutate(data, ops, b"xyz" * 100)
    assert a == b and a != data and len(a) < len(data) + 600


def test_fuzz_decoders_only_raise_media_error(fuzz_run: tuple[Path, dict[str, Any]]) -> None:
    _, report = fuzz_run
    assert report["examples"] == examples_per_seed() * len(SEED_KINDS)
    assert report["media_errors"] + report["accepted"] == report["examples"]
    assert report["media_errors"] > 0 and report["accepted"] > 0  # the mutations reach both outcomes
    assert report["rss_growth_mb"] < MAX_RSS_GROWTH_MB, report


@pytest.mark.integration
def test_fuzz_corpus_through_live_ensemble(
    fuzz_run: tuple[Path, dict[str, Any]], triton: Any, reference: Any, media: dict[str, bytes]
) -> None:

    out, _ = fuzz_run
    files = sorted((out / "corpus").iterdir())
    assert files
    outcomes: dict[str, int] = {}

    def send(path: Path) -> str:
        data = path.read_bytes()
        is_video = path.suffix.lstrip(".") in VIDEO_KINDS
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            result = client.infer(
                C.ENSEMBLE,
                build_inputs(data if is_video else None, None if is_video else data, grpcclient),
                outputs=requested_outputs(grpcclient),
                client_timeout=120,
            )
            probs, _ = parse_result(result)
            assert np.isfinite(probs).all() and abs(float(probs.sum()) - 1.0) < 1e-4
            return "ok"
        except InferenceServerException as exc:
            status = str(exc.status())
            assert status.endswith("INVALID_ARGUMENT"), f"{path.name}: {status} {exc.message()}"
            return "invalid_arg"
        finally:
            client.close()

    with ThreadPoolExecutor(4) as pool:
        for outcome in pool.map(send, files):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print("fuzz corpus through triton:", len(files), outcomes)
    assert sum(outcomes.values()) == len(files)

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    for model in C.MODEL_NAMES:
        assert client.is_model_ready(model), model
    result = client.infer(
        C.ENSEMBLE, build_inputs(media["mp4"], media["wav"], grpcclient), outputs=requested_outputs(grpcclient)
    )
    probs, _ = parse_result(result)
    np.testing.assert_allclose(probs, reference.predict(media["mp4"], media["wav"])[0], atol=1e-4)
    client.close()


if __name__ == "__main__":  # the child: python tests/test_fuzz.py worker OUT_DIR EXAMPLES_PER_SEED
    if len(sys.argv) != 4 or sys.argv[1] != "worker":
        sys.exit("usage: test_fuzz.py worker OUT_DIR EXAMPLES_PER_SEED")
    sys.exit(run_worker(Path(sys.argv[2]), int(sys.argv[3])))
