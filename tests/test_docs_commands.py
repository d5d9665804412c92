"""Every command the docs show must run as shown: flags checked against the real CLIs.

Commands are taken from the fenced code blocks of README.md, every page of the
documentation site (docs/**/*.md) and perf/README.md. `fusion-emotion …` lines are parsed by the real argument parser
(a wrong flag or value fails); `docker/build-and-push.sh` flags must be in its
--help; `make X` targets must exist. Synopsis lines (with `(a | b)` or `[opt]`)
and elided ones (`...`) are not commands. No command may serve or package the
weight-less templates in model_repository/.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from fusion_emotion.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "perf" / "README.md"]


def code_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for each shell line in the file's fenced code blocks, continuations joined."""
    commands: list[tuple[int, str]] = []
    in_block, pending, start = False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append((start, (pending + line).strip()))
        pending = ""
    return commands


def _strip(command: str) -> str:
    command = re.sub(r"\s+#.*$", "", command)  # trailing comment
    return command.rstrip("&").strip()


def _is_synopsis(tokens: list[str]) -> bool:
    return any(t.startswith(("(", "[")) or t in ("|", "...") or t.endswith("...") for t in tokens)


def documented(prefix: str) -> list[tuple[str, int, list[str]]]:
    found = []
    for path in DOCS:
        for number, command in code_commands(path):
            command = _strip(command)
            for part in re.split(r"\s*(?:&&|\|\||;)\s*", command):
                part = re.sub(r"^(\.venv/bin/|\S+=\S+\s+)+", "", part)
                if part.startswith(prefix + " ") or part == prefix:
                    tokens = shlex.split(part.split(" | ")[0])
                    if not _is_synopsis(tokens):
                        found.append((f"{path.relative_to(ROOT)}:{number}", number, tokens))
    return found


FUSION = documented("fusion-emotion")


def test_docs_show_fusion_emotion_commands() -> None:
    assert len(FUSION) > 30  # the extraction works: README, docs and perf all have commands
    pages = {where.split(":")[0] for where, _, _ in FUSION}
    assert "README.md" in pages and any(p.startswith("docs/deploy/") for p in pages)  # subfolders are read
    shown = {tokens[1] for _, _, tokens in FUSION}
    assert {"export", "triton", "predict", "serve", "package", "deploy", "undeploy", "bench", "timeline"} <= shown


@pytest.mark.parametrize("where,tokens", [(w, t) for w, _, t in FUSION], ids=[w for w, _, _ in FUSION])
def test_documented_command_parses(where: str, tokens: list[str]) -> None:
    args = [re.sub(r"^\$\w+$", "1", t) for t in tokens[1:]]  # shell variables stand for numbers (PIDs)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{where}: `{' '.join(tokens)}` is refused by the CLI: {err.getvalue().strip()} ({exc.code})")


def test_no_documented_command_serves_or_packages_the_templates() -> None:
    offenders = []
    for path in DOCS:
        for number, command in code_commands(path):
            if re.search(
                r"(--repository|--local|--checkpoint-dir)[ =]model_repository\b|model_repository:/opt/ml", command
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {command}")
    assert not offenders, "the templates have no weights: " + "; ".join(offenders)


def test_documented_build_and_push_flags_exist() -> None:
    script = ROOT / "docker" / "build-and-push.sh"
    usage = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    commands = documented("docker/build-and-push.sh")
    assert commands
    for where, _, tokens in commands:
        for flag in (t for t in tokens[1:] if t.startswith("-")):
            if flag == "--":
                break
            assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", usage), (
                f"{where}: {flag} is not an option of {script.name}"
            )


def test_documented_make_targets_exist() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    for path in DOCS:
        for number, command in code_commands(path):
            match = re.match(r"^make ([\w-]+)", command)
            if match:
                assert match.group(1) in targets, f"{path.name}:{number}: make {match.group(1)} is not a target"


def _python_commands() -> list[tuple[str, list[str]]]:
    """Every documented `python …` invocation (venv or not), as tokens after the interpreter."""
    found = []
    for path in DOCS:
        for number, command in code_commands(path):
            lexer = shlex.shlex(_strip(command), posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            try:
                tokens = list(lexer)
            except ValueError:
                continue
            part: list[str] = []
            for token in [*tokens, ";"]:
                if token not in (";", "&&", "||", "|", "&"):
                    part.append(token)
                    continue
                while part and re.match(r"^\w+=", part[0]):  # VAR=value prefixes
                    part.pop(0)
                if part and re.match(r"^(\.venv/bin/)?python3?$", part[0]) and len(part) > 1:
                    found.append((f"{path.relative_to(ROOT)}:{number}", part[1:]))
                part = []
    return found


PYTHON = _python_commands()


def test_documented_python_scripts_modules_and_imports_exist() -> None:
    """`python path.py`, `python -m module` and the imports inside `python -c "…"` resolve as shown."""
    import importlib

    assert any(t[0] == "-c" for _, t in PYTHON) and any(t[0] == "-m" for _, t in PYTHON)
    for where, tokens in PYTHON:
        if tokens[0] == "-m":
            assert importlib.util.find_spec(tokens[1]) is not None, f"{where}: no module {tokens[1]}"
        elif tokens[0] == "-c":
            for stmt in re.findall(r"(?:^|;)\s*((?:from \S+ import [\w, ]+)|(?:import [\w., ]+))", tokens[1]):
                try:
                    exec(stmt, {})  # an import statement only
                except ImportError as exc:
                    pytest.fail(f"{where}: `{stmt}` fails: {exc}")
        elif tokens[0].endswith(".py"):
            assert (ROOT / tokens[0]).is_file(), f"{where}: no script {tokens[0]}"


@pytest.mark.parametrize(
    "script", sorted({t[0] for _, t in PYTHON if t[0].endswith(".py")}), ids=lambda s: s.replace("/", "_")
)
def test_documented_python_script_starts(script: str) -> None:
    """Each documented script gets as far as its --help (its imports resolve: a removed helper fails here)."""
    import sys

    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} --help: {done.stderr[-2000:]}"
