"""The `fusion-emotion` command as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_emotion import contract as C


def fe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fusion_emotion.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_the_subcommands():
    out = fe("--help").stdout
    for command in ("export", "triton", "predict", "serve", "package", "deploy", "undeploy"):
        assert command in out


def test_serve_and_triton_flags_fill_their_settings():
    """serve/triton build their settings from the flags named after the fields: none may go missing."""
    from dataclasses import fields

    from fusion_emotion.arguments import field_args
    from fusion_emotion.cli import build_parser
    from fusion_emotion.frontend.settings import Settings
    from fusion_emotion.server.launcher import ServerOptions

    serve = build_parser().parse_args(["serve", "--port", "9000", "--request-timeout", "3"])
    values = field_args(Settings, serve)
    assert set(values) == {f.name for f in fields(Settings)}
    assert (values["port"], values["request_timeout_s"], values["host"]) == (9000, 3.0, None)
    triton = build_parser().parse_args(["triton", "--repository", "r", "--grpc-port", "7001", "--", "--x=1"])
    opts = ServerOptions(**field_args(ServerOptions, triton, repository=Path("r"), extra_args=list(triton.extra)))
    assert (opts.grpc_port, opts.http_port, opts.extra_args, opts.profile) == (7001, 8000, ["--x=1"], "cpu")
    # every option but these two has its flag: extra_args are the words after --, dev_shm is for tests
    assert set(field_args(ServerOptions, triton)) == {f.name for f in fields(ServerOptions)} - {"extra_args", "dev_shm"}


@pytest.fixture(scope="module")
def files(tmp_path_factory, media) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    paths = {}
    for name, ext in (("mp4", "mp4"), ("wav", "wav"), ("garbage", "mp4")):
        paths[name] = d / f"{name}.{ext}"
        paths[name].write_bytes(media[name])
    return paths


@pytest.mark.integration
def test_predict_local_and_triton_print_the_same_json(files, demo_repository, triton):
    local = fe("predict", str(files["mp4"]), "--audio", str(files["wav"]), "--local", str(demo_repository))
    assert local.returncode == 0, local.stderr
    assert "UNTRAINED" in local.stderr
    remote = fe("predict", str(files["mp4"]), "--audio", str(files["wav"]), "--triton", triton.grpc_url)
    assert remote.returncode == 0, remote.stderr
    assert "UNTRAINED" in remote.stderr
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert list(a) == [*C.LABELS, "qa_flags", "dominant_emotion"] == list(b)
    for label in C.LABELS:
        assert a[label] == pytest.approx(b[label], abs=1e-4)
    assert a["dominant_emotion"] == b["dominant_emotion"]
    assert sum(a[label] for label in C.LABELS) == pytest.approx(1.0, abs=1e-5)


def test_predict_wav_alone_and_bad_file(files, demo_repository):
    ok = fe("predict", str(files["wav"]), "--local", str(demo_repository))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["qa_flags"]["video_blur_level"] is None
    bad = fe("predict", str(files["garbage"]), "--local", str(demo_repository))
    assert bad.returncode == 2
    assert "video: not a decodable media file" in bad.stderr
