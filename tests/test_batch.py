"""``fusion-emotion batch``, ``search`` and ``batch --transform-job``.

Unit tests: input enumeration, the resumable results file, the runner's stop
path, the search index against a brute-force answer. CLI tests run the real
``--local`` route on the ``demo_repository`` weights (error lines, resume,
``--retry-failed``, CSV, Ctrl-C in a child process). The transform job is
checked against moto (the calls and their parameters, recorded with botocore
event hooks; moto runs no container), and, in the integration test, the
container side: this test plays Batch Transform's agent, posting each object's
bytes with the job's content type to the real front end over the real Triton,
then ``batch --attach`` gathers the ``.out`` objects.
"""

# ruff: noqa: F811 - test arguments named like the moto fixtures imported from test_deploy_sagemaker

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fusion_emotion.client.batch_inputs import InputError, InputStats, iter_sources
from fusion_emotion.client.batch_runner import run_batch
from fusion_emotion.client.results import ResultsFile
from fusion_emotion.client.search import SegmentIndex, index_path_for
from test_deploy_sagemaker import BUCKET, IMAGE, ROLE, aws, moto_endpoint  # noqa: F401 - the moto fixtures

from fusion_emotion import contract as C
from fusion_emotion.cli import main


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


def by_source(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {Path(r["source"]).name if not r["source"].startswith("s3://") else r["source"]: r for r in records}


# --------------------------------------------------------------------------- inputs
def test_media_types_and_sniffing() -> None:
    assert C.media_type_for("a/b.MP4") == "video/mp4" and C.media_type_for("x.wave") == "audio/wav"
    assert C.media_type_for("dir.mp4/readme") is None and C.media_type_for(".mp4") is None
    assert C.media_type_for("clip.mkv") == "video/x-matroska" and C.media_type_for("clip.webm") == "video/webm"
    assert C.sniff_input(b"RIFF\0\0\0\0WAVEfmt ") == "audio"
    assert C.sniff_input(b"RIFF\0\0\0\0AVI LIST") == "video"
    assert C.sniff_input(b"\0\0\0\x18ftypmp42") == "video"


def test_iter_sources_folder_glob_manifest_single(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "b" / "deep").mkdir(parents=True)
    (lib / ".hidden").mkdir()
    for rel in ("a.mp4", "b/c.WAV", "b/deep/d.flv", "b/notes.txt", ".hidden/e.mp4", "b/.f.avi"):
        (lib / rel).write_bytes(b"x")
    stats = InputStats()
    found = list(iter_sources(str(lib), stats))
    assert found == [str((lib / r).resolve()) for r in ("a.mp4", "b/c.WAV", "b/deep/d.flv")]
    assert stats.ignored == 1

    stats = InputStats()
    assert sorted(iter_sources(str(lib / "**" / "*"), stats)) == sorted(found)
    assert stats.ignored == 1

    manifest = lib / "b" / "list.txt"
    manifest.write_text("# clips\n../a.mp4\n\n  deep/d.flv  \ns3://bucket-1/k/e.mp4\nnotes.txt\n")
    assert list(iter_sources(str(manifest))) == [
        str((lib / "a.mp4").resolve()),
        str((lib / "b/deep/d.flv").resolve()),
        "s3://bucket-1/k/e.mp4",
        str((lib / "b/notes.txt").resolve()),  # listed explicitly: sent, its bytes decide
    ]
    assert list(iter_sources(str(lib / "a.mp4"))) == [str((lib / "a.mp4").resolve())]
    with pytest.raises(InputError, match="not a folder, file, glob"):
        list(iter_sources(str(tmp_path / "missing")))


def test_iter_sources_s3_prefix(aws) -> None:
    s3 = aws.client("s3")
    for key in ("lib/x/a.mp4", "lib/x/sub/b.wav", "lib/x/readme.md", "lib/xy/c.mp4", "lib/x/dir/"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"1")
    stats = InputStats()
    found = list(iter_sources(f"s3://{BUCKET}/lib/x/", stats, lambda: s3))
    assert found == [f"s3://{BUCKET}/lib/x/a.mp4", f"s3://{BUCKET}/lib/x/sub/b.wav"]
    assert stats.ignored == 1


# --------------------------------------------------------------------------- results file + runner
def test_results_file_resume_and_half_written_line(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with ResultsFile(out) as results:
        results.write({"source": "a", "status": "ok", "result": {}})
        results.write({"source": "b", "status": "error", "error": "bad"})
    with out.open("ab") as fh:
        fh.write(b'{"source": "c", "status": "o')  # a crash mid-line
    again = ResultsFile(out)
    again.load()
    assert out.read_bytes().endswith(b"\n") and len(lines(out)) == 2
    assert (again.state("a"), again.state("b"), again.state("c")) == ("ok", "failed", None)
    retry = ResultsFile(out, retry_failed=True)
    retry.load()
    assert (retry.state("a"), retry.state("b")) == ("ok", None)
    with retry:
        retry.write({"source": "b", "status": "ok", "result": {}})
    last = ResultsFile(out)
    last.load()
    assert last.state("b") == "ok"


def test_run_batch_stop_keeps_whole_lines_and_resumes(tmp_path: Path) -> None:
    """A stop mid-run writes only finished records; the next run answers exactly the rest."""
    out = tmp_path / "r.jsonl"
    sources = [f"src-{i:02d}" for i in range(40)]

    def handle(source: str) -> dict[str, Any]:
        time.sleep(0.05)
        if source.endswith("7"):
            return {"source": source, "status": "error", "error": "planted failure"}
        return {"source": source, "status": "ok", "duration_s": 2.0, "result": {"n": int(source[-2:])}}

    stop = threading.Event()
    threading.Timer(0.4, stop.set).start()
    results = ResultsFile(out)
    with results:
        first = run_batch(iter(sources), handle, results, concurrency=3, stop=stop)
    assert first.interrupted and not first.all_ok
    done = lines(out)
    assert 0 < len(done) < len(sources)
    assert len({r["source"] for r in done}) == len(done)

    results = ResultsFile(out)
    results.load()
    with results:
        second = run_batch(iter(sources), handle, results, concurrency=3)
    assert not second.interrupted
    assert second.skipped_ok + second.skipped_failed == len(done)
    records = lines(out)
    assert sorted(r["source"] for r in records) == sources
    failed = sorted(r["source"] for r in records if r["status"] == "error")
    assert failed == ["src-07", "src-17", "src-27", "src-37"]
    assert not second.all_ok  # a failure, this run or before, is never exit 0
    assert second.media_s == 2.0 * second.ok


def test_streaming_stays_bounded(tmp_path: Path) -> None:
    """A 100,000-line manifest is read lazily, and the runner never pulls more than it can hold in flight."""
    import tracemalloc

    def peak_bytes(lines: int) -> int:
        manifest = tmp_path / f"big{lines}.txt"
        with manifest.open("w") as fh:
            for i in range(lines):
                fh.write(f"s3://media-library/clips/{i // 1000:03d}/clip{i:06d}.mp4\n")
        tracemalloc.start()
        count = sum(1 for _ in iter_sources(str(manifest)))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == lines
        return peak

    small, large = peak_bytes(10_000), peak_bytes(100_000)
    # 100,000 URIs held at once would be ~10 MB; streamed, ten times the input costs no more memory
    assert large < 1024 * 1024 and large < 2 * small + 64 * 1024

    pulled, started, concurrency = [0], [0], 3
    lock = threading.Lock()

    def sources():
        for i in range(2_000):
            with lock:
                pulled[0] += 1
            yield f"s{i}"

    def handle(source: str) -> dict[str, Any]:
        with lock:
            started[0] += 1
            # queued (2 x concurrency) + one per worker + the one the feeder holds
            assert pulled[0] - started[0] <= 2 * concurrency + concurrency + 1
        return {"source": source, "status": "ok", "result": {}}

    with ResultsFile(tmp_path / "r.jsonl") as results:
        summary = run_batch(sources(), handle, results, concurrency=concurrency)
    assert summary.ok == 2_000 and summary.all_ok


def test_progress_line_counts_rate_and_eta() -> None:
    import io

    from fusion_emotion.client.progress import Progress, format_seconds

    stream = io.StringIO()
    bar = Progress("batch", total=10, stream=stream, tty=True)
    bar.skip()
    bar.update(True, media_s=30.0)
    bar.update(False)
    line = bar.line()
    assert line.startswith("batch: 3/10, ok 1, failed 1, skipped 1") and "ETA " in line and "media 0.01 h" in line
    bar.close()
    assert "[#######" in stream.getvalue() and stream.getvalue().endswith("\n")
    assert (format_seconds(42), format_seconds(125), format_seconds(3725)) == ("42s", "2m05s", "1h02m")


# --------------------------------------------------------------------------- CLI, --local route
@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, media: dict[str, bytes]) -> Path:
    lib = tmp_path_factory.mktemp("library")
    (lib / "sub").mkdir()
    (lib / "talk.mp4").write_bytes(media["mp4"])
    (lib / "sub" / "voice.wav").write_bytes(media["wav16k"])
    (lib / "sub" / "broken.mp4").write_bytes(media["garbage"])
    (lib / "sub" / "empty.wav").write_bytes(b"")
    (lib / "readme.txt").write_text("not media")
    return lib


def test_batch_local_error_lines_resume_retry_and_csv(library: Path, demo_repository: Path, tmp_path: Path) -> None:
    out, csv_path = tmp_path / "results.jsonl", tmp_path / "segments.csv"
    argv = ["batch", str(library), "--output", str(out), "--local", str(demo_repository), "--concurrency", "2"]
    assert main([*argv, "--csv", str(csv_path)]) == 1  # two inputs fail
    records = by_source(lines(out))
    assert set(records) == {"talk.mp4", "voice.wav", "broken.mp4", "empty.wav"}
    talk, voice = records["talk.mp4"], records["voice.wav"]
    assert talk["status"] == voice["status"] == "ok"
    assert (talk["media"], voice["media"]) == ("video", "audio")
    assert talk["duration_s"] == pytest.approx(3.5, abs=0.1)
    assert set(talk["result"]) == {*C.LABELS, "qa_flags", "dominant_emotion"}
    assert sum(talk["result"][k] for k in C.LABELS) == pytest.approx(1.0, abs=1e-5)
    assert "segments" not in talk
    assert records["broken.mp4"]["error"] == "video: not a decodable media file (InvalidDataError)"
    assert "empty" in records["empty.wav"]["error"]
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("source,start,end,angry") and len(rows) == 3  # header + one row per ok clip

    # Rerun: everything is answered; nothing is sent, nothing appended; failures still make it exit 1.
    size = out.stat().st_size
    assert main(argv) == 1
    assert out.stat().st_size == size
    # --retry-failed sends the two failures again (and only them).
    assert main([*argv, "--retry-failed"]) == 1
    assert len(lines(out)) == 6
    assert [r["source"] for r in lines(out)[4:]].count(records["broken.mp4"]["source"]) == 1


def test_batch_local_timeline_and_search(library: Path, demo_repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "timeline.jsonl"
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{library / 'talk.mp4'}\n{library / 'sub' / 'voice.wav'}\n")
    argv = ["batch", str(manifest), "--output", str(out), "--local", str(demo_repository), "--timeline"]
    assert main([*argv, "--window", "2", "--hop", "1"]) == 0
    talk = by_source(lines(out))["talk.mp4"]
    starts = [s["start"] for s in talk["segments"]]
    assert starts == sorted(starts) and len(starts) >= 3 and talk["segments"][-1]["end"] == pytest.approx(3.5, 0.05)
    with SegmentIndex(out) as index:
        index.refresh()
        best = index.search("happy", top=3)
    everything = [(s["happy"], r["source"]) for r in lines(out) for s in r["segments"]]
    assert [h.score for h in best] == pytest.approx(sorted((x for x, _ in everything), reverse=True)[:3])
    assert main(["batch", "x", "--output", str(out), "--local", str(demo_repository), "--window", "2"]) == 2


def test_batch_ctrl_c_stops_cleanly_and_resumes(demo_repository: Path, media: dict[str, bytes], tmp_path: Path) -> None:
    """SIGINT to the real CLI: exit 130, only whole lines; the rerun finishes exactly the rest."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(12):
        (lib / f"clip{i:02d}.wav").write_bytes(media["wav16k"])
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "fusion_emotion.cli", "batch", str(lib), "--output", str(out)]
    cmd += ["--local", str(demo_repository), "--concurrency", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out.exists() and out.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    first = lines(out)  # every line parses: nothing half-written
    assert 1 <= len(first) < 12 and all(r["status"] == "ok" for r in first)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"answered before: {len(first)} ok" in rerun.stdout
    sources = [r["source"] for r in lines(out)]
    assert len(sources) == len(set(sources)) == 12


# --------------------------------------------------------------------------- search
def _record(source: str, confidence: float | None, segs: list[list[float]] | None, clip: list[float]) -> dict:
    result = {k: v for k, v in zip(C.LABELS, clip, strict=True)} | {
        "qa_flags": {"overall_confidence": confidence},
        "dominant_emotion": C.LABELS[int(np.argmax(clip))],
    }
    record: dict[str, Any] = {"source": source, "status": "ok", "duration_s": 8.0, "result": result}
    if segs is not None:
        record["segments"] = [
            {"start": 4.0 * i, "end": 4.0 * i + 4.0, **dict(zip(C.LABELS, p, strict=True))} for i, p in enumerate(segs)
        ]
    return record


def test_search_index_matches_brute_force_and_stays_current(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    out = tmp_path / "r.jsonl"

    def add(records: list[dict]) -> None:
        with out.open("a") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")

    def expected(emotion: str, top: int, min_conf: float | None) -> list[tuple[str, float, float]]:
        latest: dict[str, dict] = {}
        for r in lines(out):
            if r.get("status") == "ok":
                latest[r["source"]] = r
        rows = []
        for r in latest.values():
            conf = r["result"]["qa_flags"]["overall_confidence"]
            if min_conf is not None and (conf is None or conf < min_conf):
                continue
            segs = r.get("segments") or [{"start": 0.0, "end": r["duration_s"], **r["result"]}]
            rows += [(r["source"], s["start"], s[emotion]) for s in segs]
        return sorted(rows, key=lambda x: -x[2])[:top]

    def got(index: SegmentIndex, emotion: str, top: int, min_conf: float | None) -> list[tuple[str, float, float]]:
        return [(h.source, h.t_start, h.score) for h in index.search(emotion, top, min_conf)]

    add(
        [
            _record(f"clip{i}", float(rng.uniform()), rng.dirichlet(np.ones(6), 3).tolist(), [1 / 6] * 6)
            for i in range(50)
        ]
    )
    add([_record("whole", 0.9, None, [0.01, 0.01, 0.01, 0.95, 0.01, 0.01])])  # no timeline: one segment
    add([{"source": "bad", "status": "error", "error": "x"}, _record("noconf", None, None, [0.9] + [0.02] * 5)])
    with SegmentIndex(out) as index:
        assert index.refresh() == 52
        for emotion in C.LABELS:
            for min_conf in (None, 0.5):
                assert got(index, emotion, 7, min_conf) == expected(emotion, 7, min_conf)
        assert index.search("happy", 1)[0].source == "whole" and index.search("happy", 1)[0].t_end == 8.0
        assert "noconf" not in {h.source for h in index.search("angry", 60, 0.0)}

        # Appended lines (one re-answers clip3) are indexed incrementally; a later answer replaces an earlier one.
        add([_record("clip3", 0.99, [[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]], [0.0] * 5 + [1.0])])
        with out.open("a") as fh:
            fh.write('{"source": "half", "status": "o')  # being written: not indexed yet
        assert index.refresh() == 1
        assert got(index, "sad", 1, None) == [("clip3", 0.0, 1.0)]
        assert index.counts() == (52, 50 * 3 - 3 + 1 + 2)
    # A results file replaced by another one is indexed from scratch.
    out.write_text(json.dumps(_record("other", 0.5, None, [0, 0, 0, 0, 1, 0])) + "\n")
    with SegmentIndex(out) as index:
        assert index.refresh() == 1 and index.counts() == (1, 1)


def test_search_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text(
        "\n".join(
            json.dumps(_record(f"c{i}", i / 10, [[0.1 * i, 0, 0, 0, 0, 1 - 0.1 * i]], [1 / 6] * 6)) for i in range(10)
        )
        + "\n"
    )
    assert main(["search", str(out), "--emotion", "angry", "--top", "2", "--min-confidence", "0.5", "--json"]) == 0
    hits = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [h["source"] for h in hits] == ["c9", "c8"] and hits[0]["overall_confidence"] == 0.9
    assert index_path_for(out).exists()
    assert main(["search", str(out), "--emotion", "sad"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["score", "conf", "t_start", "t_end", "source"] and table[1].endswith("c0")
    assert main(["search", str(tmp_path / "missing.jsonl"), "--emotion", "sad"]) == 2


def test_search_bench_tool_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fusion_emotion.ops import search_bench

    assert search_bench.main(["--files", "300", "--segments", "4", "--dir", str(tmp_path), "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "index build: 300 clips, 1200 segments" in text and "query top 10, no filter: median" in text


@pytest.mark.integration
def test_batch_triton_and_url_routes_agree(library: Path, triton, tmp_path: Path) -> None:
    from test_frontend import run_frontend

    from fusion_emotion.frontend.settings import Settings

    grpc_out, url_out = tmp_path / "grpc.jsonl", tmp_path / "url.jsonl"
    assert main(["batch", str(library), "--output", str(grpc_out), "--triton", triton.grpc_url]) == 1
    with run_frontend(Settings(triton_url=triton.grpc_url, request_timeout_s=120)) as base:
        assert main(["batch", str(library), "--output", str(url_out), "--url", base, "--timeline"]) == 1
    a, b = by_source(lines(grpc_out)), by_source(lines(url_out))
    assert a.keys() == b.keys() == {"talk.mp4", "voice.wav", "broken.mp4", "empty.wav"}
    for name in ("talk.mp4", "voice.wav"):
        for label in C.LABELS:  # the clip-level answer of a timeline equals the ensemble's
            assert a[name]["result"][label] == pytest.approx(b[name]["result"][label], abs=1e-4)
        assert b[name]["segments"] and "segments" not in a[name]
    assert b["broken.mp4"]["error"].startswith("HTTP 422: body: not a decodable media file")
    assert "video: not a decodable media file" in a["broken.mp4"]["error"]
