"""The import contracts of `make lint` (docs/architecture.md) see every module, and fail on a broken layer.

scripts/lint_imports.py lays the package out as it installs (client/ and export/ mapped in by pyproject's
package-dir) and runs lint-imports on that copy; these tests run it on a copy of their own, plant the
imports a later change could add, and check that each one is refused.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import lint_imports  # noqa: E402

PYPROJECT = ROOT / "pyproject.toml"


def _layers() -> list[str]:
    import tomllib

    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c for c in contracts if c["type"] == "layers"]
    return [name.strip() for layer in layers["layers"] for name in layer.replace(":", "|").split("|")]


def _installed_source(name: str) -> Path:
    """The file the installed package holds for module ``name``, found through its package's search path
    (not by importing it: an already imported alias would answer for the module it stands for)."""
    spec = importlib.util.find_spec(name) if name in lint_imports.package_folders(PYPROJECT) else None
    if spec is not None:  # a package (mapped ones through the editable install's finder)
        assert spec.origin is not None, name
        return Path(spec.origin)
    parent, leaf = name.rsplit(".", 1)
    spec = importlib.util.find_spec(parent)
    assert spec is not None and spec.submodule_search_locations, parent
    folder = Path(next(iter(spec.submodule_search_locations)))
    package = folder / leaf / "__init__.py"
    return package if package.exists() else folder / f"{leaf}.py"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    dest = tmp_path_factory.mktemp("layout")
    return dest, lint_imports.assemble(PYPROJECT, dest)


def test_the_layout_holds_every_installed_module_at_its_installed_name(layout: tuple[Path, list[str]]) -> None:
    dest, modules = layout
    assert "fusion_emotion.client.batch" in modules and "fusion_emotion.export.cli" in modules
    for name in modules:  # the same file the editable install imports under that name
        laid = dest.joinpath(*name.split(".")) / "__init__.py"
        laid = laid if laid.exists() else dest.joinpath(*name.split(".")).with_suffix(".py")
        assert laid.read_bytes() == _installed_source(name).read_bytes(), name
    sources = {p.resolve() for folder in lint_imports.package_folders(PYPROJECT).values() for p in folder.glob("*.py")}
    assert len(sources) == len(modules)  # nothing installed is left out of the check


def test_every_package_and_top_module_is_in_a_layer(layout: tuple[Path, list[str]]) -> None:
    _, modules = layout
    children = {m.split(".")[1] for m in modules if m.count(".") >= 1}
    assert children == set(_layers())


def test_the_contracts_hold_on_the_tree(layout: tuple[Path, list[str]]) -> None:
    dest, _ = layout
    result = lint_imports.lint(dest, PYPROJECT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 4 kept, 0 broken." in result.stdout


def _plant(path: Path, line: str) -> None:
    text = path.read_text()
    ast.parse(text + "\n" + line)
    path.write_text(text + "\n" + line + "\n")


def test_an_upward_import_a_circle_and_the_server_stack_in_a_client_are_refused(tmp_path: Path) -> None:
    lint_imports.assemble(PYPROJECT, tmp_path)
    pkg = tmp_path / "fusion_emotion"
    _plant(pkg / "contract.py", "import fusion_emotion.cli")  # the base layer importing the top
    _plant(pkg / "client" / "http.py", "from fusion_emotion.deploy import sagemaker")  # client/ (mapped) -> deploy
    _plant(pkg / "ops" / "targets.py", "import fusion_emotion.ops.bench")  # bench imports targets: a circle
    _plant(pkg / "client" / "search.py", "import fastapi")  # the server stack in a client install
    result = lint_imports.lint(tmp_path, PYPROJECT)
    assert result.returncode == 1
    out = result.stdout
    assert "Contracts: 1 kept, 3 broken." in out, out[-3000:]
    assert "fusion_emotion.contract -> fusion_emotion.cli" in out
    assert "fusion_emotion.client.http -> fusion_emotion.deploy.sagemaker" in out
    assert "No cycles are allowed in fusion_emotion.ops" in out
    assert "fusion_emotion.client.search -> fastapi" in out
