"""``make lint``'s import contracts (pyproject ``[tool.importlinter]``), checked on the package as it installs.

pyproject maps ``fusion_emotion.client`` and ``fusion_emotion.export`` to the top-level folders ``client/`` and
``export/`` (``[tool.setuptools.package-dir]``), while grimp reads a package from one folder only. So this
lays the installed tree out under ``build/import-layout/`` (copies of the ``.py`` files, placed by pyproject's
own mapping: no second list of folders) and runs ``lint-imports`` there; its exit status is this script's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "build" / "import-layout"


def package_folders(pyproject: Path) -> dict[str, Path]:
    """Every package setuptools installs, and the source folder it comes from (package-dir, else its dotted path)."""
    tool = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    mapping = tool.get("package-dir", {})
    out = {}
    for package in tool["packages"]:
        parent, folder = package, None
        while parent:  # the nearest mapped ancestor decides, as setuptools does
            if parent in mapping:
                rest = package[len(parent) :].lstrip(".")
                folder = Path(mapping[parent], *rest.split(".")) if rest else Path(mapping[parent])
                break
            parent = parent.rpartition(".")[0]
        out[package] = pyproject.parent / (folder or Path(*package.split(".")))
    return out


def assemble(pyproject: Path, dest: Path) -> list[str]:
    """Copy each package's modules to ``dest/<dotted path>/``; returns the module names laid out."""
    if dest.exists():
        shutil.rmtree(dest)
    modules = []
    for package, folder in sorted(package_folders(pyproject).items()):
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(folder.glob("*.py")):  # subpackages are listed in packages themselves
            shutil.copy2(source, target / source.name)
            modules.append(package if source.stem == "__init__" else f"{package}.{source.stem}")
    return modules


def lint(dest: Path, config: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the layout in ``dest`` (found first on sys.path, ahead of the editable install)."""
    env = {**os.environ, "PYTHONPATH": str(dest)}
    command = [str(Path(sys.executable).with_name("lint-imports")), "--config", str(config), "--no-cache", "--no-logo"]
    return subprocess.run(command, cwd=dest, env=env, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", type=Path, default=LAYOUT, help=f"where to lay the package out (default {LAYOUT})")
    parser.add_argument(
        "--layout-only",
        action="store_true",
        help="only lay the package out (an importable copy, e.g. for perf/gpu_check.sh)",
    )
    args = parser.parse_args(argv)
    pyproject = ROOT / "pyproject.toml"
    assemble(pyproject, args.layout)
    if args.layout_only:
        return 0
    result = lint(args.layout, pyproject)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
