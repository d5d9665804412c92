"""Dependency roles, hashed locks, the image's build context and SBOM (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
LOCKS = {  # lock -> (Python version it is for, pyproject extras it covers, extra .in files)
    "models-py310.lock": ("3.10", ["models"], []),
    "models-py312.lock": ("3.12", ["models"], []),
    "serving-py310.lock": ("3.10", ["serving", "dali"], ["build-tools.in"]),
    "sbom-py310.lock": ("3.10", [], ["sbom-tools.in"]),
}
SERVER_STACK = {"nvidia-pytriton", "tritonserver", "torch", "torchvision", "transformers", "matplotlib"}


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from a `uv pip compile --generate-hashes` file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if match:
            current = canonicalize_name(match.group(1))
            entries[current] = (match.group(2), [])
        elif current and "--hash=sha256:" in line:
            entries[current][1].append(line.split("--hash=sha256:")[1].rstrip(" \\"))
    return entries


def constraints_for(python: str) -> dict[str, str]:
    """name -> pinned version for that Python (markers evaluated)."""
    pins: dict[str, str] = {}
    for line in (REQ / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"python_version": python, "python_full_version": python + ".0"}):
            (spec,) = req.specifier
            assert spec.operator == "==", line
            assert canonicalize_name(req.name) not in pins, f"two pins for {req.name} on Python {python}"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def extra_requirements(extras: list[str]) -> set[str]:
    """Top-level names an install of the given extras asks for (self-references expanded)."""
    project = pyproject()["project"]
    names = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    todo = list(extras)
    while todo:
        for raw in project["optional-dependencies"][todo.pop()]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == "fusion-emotion":
                todo += sorted(req.extras)
            else:
                names.add(canonicalize_name(req.name))
    return names


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_is_hashed_and_agrees_with_constraints(lock: str) -> None:
    python, extras, ins = LOCKS[lock]
    entries = parse_lock(REQ / lock)
    pins = constraints_for(python)
    assert entries, lock
    for name, (version, hashes) in entries.items():
        assert hashes, f"{lock}: {name} has no hash"
        assert pins.get(name) == version, f"{lock}: {name}=={version}, constraints.txt pins {pins.get(name)}"
    wanted = extra_requirements(extras) if extras else set()
    for path in ins:
        wanted |= {
            canonicalize_name(Requirement(r).name)
            for r in (REQ / path).read_text().splitlines()
            if r and r[0].isalpha()
        }
    missing = wanted - set(entries)
    assert not missing, f"{lock} lacks {sorted(missing)}: run `make lock`"


def test_lock_script_makes_every_lock() -> None:
    script = (ROOT / "scripts" / "lock.sh").read_text()
    for lock in LOCKS:
        assert f'"$REQ/{lock}"' in script
    assert "--generate-hashes" in script and "--constraint requirements/constraints.txt" in script
    assert "lock:" in (ROOT / "Makefile").read_text()


def test_setup_installs_every_role_and_the_dali_pin() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert '".[serving,triton,plots,dali,export,dev]"' in makefile
    assert "nvidia-dali-cuda120==1.53.0" in (REQ / "constraints.txt").read_text().splitlines()
    assert metadata.version("nvidia-dali-cuda120") == "1.53.0"  # the real wheel, installed by make setup


def _closure(requirements: list[Requirement], extras_env: str = "") -> set[str]:
    """Installed distributions an install of ``requirements`` pulls in (from the installed metadata)."""
    seen: set[str] = set()
    todo = [(r, extras_env) for r in requirements]
    while todo:
        req, _ = todo.pop()
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform or Python
        for raw in dist.requires or []:
            sub = Requirement(raw)
            envs = [{"extra": e} for e in (req.extras or {""})]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append((sub, ""))
    return {k.split("[")[0] for k in seen}


def test_client_extra_pulls_in_no_server_or_training_stack() -> None:
    reqs = [Requirement(r) for r in metadata.distribution("fusion-emotion").requires or []]
    client = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": "client"})]
    closure = _closure(client)
    assert {"tritonclient", "httpx", "boto3", "numpy"} <= closure
    assert not closure & (SERVER_STACK | {"av", "scipy", "onnxruntime", "fastapi", "nvidia-dali-cuda120"}), closure


# Packages a client install does not have: importing any of them in the client's code path fails.
BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"torch", "torchvision", "transformers", "matplotlib", "pytriton", "scipy", "av", "cv2",
               "onnxruntime", "fastapi", "uvicorn", "nvidia", "skimage"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked: {name} is not in a client install", name=name)
    sys.meta_path.insert(0, Block())
    from fusion_emotion.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def run_as_client(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=timeout)


def test_client_commands_load_without_the_server_stack() -> None:
    for args in (["--help"], ["predict", "--help"], ["bench", "--help"], ["evaluate", "--help"]):
        result = run_as_client(args)
        assert result.returncode == 0, result.stderr[-2000:]
    # a command whose role is not installed says which extra brings it, and the rest of the CLI works
    result = run_as_client(["timeline", "clip.mp4", "--triton", "127.0.0.1:1"])
    assert result.returncode == 2
    assert "needs `pip install fusion-emotion[models]` (module av is not installed)" in result.stderr


@pytest.mark.integration
def test_client_install_predicts_against_triton(triton, media: dict[str, bytes], tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(media["mp4"])
    result = run_as_client(["predict", str(clip), "--triton", triton.grpc_url], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    assert abs(sum(answer[k] for k in ("angry", "disgust", "fearful", "happy", "neutral", "sad")) - 1) < 1e-4


# --- the image's build context -------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**/` any leading folders, `*` within one name, `?` one char."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides, `!` re-includes, a folder match covers its content."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(raw.lstrip("!").rstrip("/"))
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    dockerfile = (ROOT / "Dockerfile").read_text()
    sources = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            sources += words[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        files = [src] if (ROOT / src).is_file() else [str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*.py")]
        for f in files:
            if "__pycache__" not in f:
                assert not dockerignore_excludes(f, patterns), f"{f} is COPYed but .dockerignore drops it"
    for path in (".venv/bin/python", "build/repo/x.onnx", ".git/HEAD", "model_repository/video_encoder/1/model.onnx",
                 "tests/test_deploy.py", "fusion_emotion/__pycache__/cli.cpython-311.pyc", "requirements/constraints.txt"):  # fmt: skip
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the Docker daemon"


def test_dockerfile_installs_only_from_hashed_locks() -> None:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    installs = [line for line in joined.splitlines() if "pip install" in line]
    assert installs
    for line in installs:
        line = re.sub(r"\s+", " ", line)
        lock_install = re.search(r"--require-hashes --no-deps (--target \S+ )?-r \S+\.lock", line)
        project_install = re.search(r"--no-deps --no-build-isolation \.( |$)", line)
        assert lock_install or project_install, f"unlocked install: {line}"
    assert "serving-py310.lock" in text and "sbom-py310.lock" in text
    assert "nvidia-dali-cuda120" in (REQ / "serving-py310.lock").read_text()


def test_dockerfile_pins_the_base_by_digest_and_ships_an_sbom() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE$", text, re.M) and re.search(r"^FROM \$\{BASE_IMAGE\} AS runtime$", text, re.M)
    assert "@sha256:[0-9a-f]{64}$" in text  # a tag-only base is refused in the build
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=compute,utility,video\b", text)
    assert re.search(r"^FROM runtime AS sbom$", text, re.M) and re.search(r"^FROM runtime AS final$", text, re.M)
    assert "COPY --from=sbom /tmp/sbom/sbom.cdx.json /opt/fusion-emotion/sbom.cdx.json" in text
    final = text.split("FROM runtime AS final", 1)[1]
    assert "pip install" not in final  # the SBOM tools stay in their own stage


def test_image_sbom_script_covers_python_and_os_packages(tmp_path: Path) -> None:
    """docker/sbom.sh as the sbom stage runs it, on a small environment and this machine's dpkg database.

    The SBOM tools come from their own folder (here this venv's site-packages) and must not
    show up in the SBOM of the environment they describe.
    """
    import shutil

    target = tmp_path / "image-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
    site = next(target.glob("lib/python3.*/site-packages"))
    six = metadata.distribution("six")
    shutil.copy(six.locate_file("six.py"), site)
    dist_info = f"six-{six.version}.dist-info"
    shutil.copytree(Path(six.locate_file(dist_info)), site / dist_info)
    tools = Path(metadata.distribution("cyclonedx-bom").locate_file(""))

    def sbom(out: Path) -> dict:
        cmd = ["bash", str(ROOT / "docker" / "sbom.sh"), str(target / "bin" / "python"), str(tools)]
        result = subprocess.run(
            cmd + [str(ROOT / "pyproject.toml"), str(out)], capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(out.read_text())

    bom = sbom(tmp_path / "sbom.cdx.json")
    purls = [c.get("purl", "") for c in bom["components"]]
    assert bom["bomFormat"] == "CycloneDX" and bom["metadata"]["component"]["name"] == "fusion-emotion"
    assert [p for p in purls if p.startswith("pkg:pypi/")] == [f"pkg:pypi/six@{six.version}"]  # no SBOM tools
    assert any(p.startswith("pkg:deb/") for p in purls)  # the OS packages, not only the Python ones
    keys = [(c.get("purl") or c.get("name", ""), c.get("version", "")) for c in bom["components"]]
    assert keys == sorted(keys) and len(set(purls)) == len(purls)
    sbom(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "sbom.cdx.json").read_bytes()  # reproducible
