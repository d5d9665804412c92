"""A packed Python execution environment for SageMaker's stock Triton image.

The stock image's Python backend has none of what the models import
(PyAV, OpenCV, OpenVINO, onnxruntime, scipy, this package). python_backend's
``EXECUTION_ENV_PATH`` points a model at a tar.gz environment (conda-pack style)
that it extracts and activates before starting the model's stub. Observed in
python_backend r24.10 (``src/pb_env.cc``, ``src/stub_launcher.cc``): it needs
``bin/activate`` (sourced by bash, then the stub is exec'd with
``LD_LIBRARY_PATH=<env>/lib``); the stub's embedded interpreter finds its prefix
through ``python3`` on PATH, i.e. ``<env>/bin/python3`` and ``pyvenv.cfg``; and
the environment's Python minor version must equal the stub's (the image's).

So the environment built here is a venv laid out by hand:
``bin/python3.X`` links to the image's own interpreter (``/usr/bin/python3.X``),
``pyvenv.cfg`` names that home, ``bin/activate`` locates itself (the tarball is
extracted under a random ``/tmp/python_env_*``), and ``lib/python3.X/site-packages``
holds the locked model dependencies (``requirements/models-py3XX.lock``, installed
with pip for the image's Python and platform, hashes required) plus this
package's serving code. Nothing else: no front end, no tritonclient, no torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fusion_emotion.deploy.archive import Member, scan_tree, write_tarball

log = logging.getLogger(__name__)

ENV_FORMAT = 1  # bump when the layout changes (invalidates cached environments)
MANIFEST = "fusion-emotion-env.json"

# Python of the Triton images (= the Python-backend stub's version), by NGC/SageMaker release YY.MM.
# Sources: triton-inference-server/server build.py base images (r24.01-r24.10 ubuntu:22.04, Python 3.10;
# r24.11-r25.12 ubuntu:24.04, Python 3.12) and NVIDIA's release notes (24.12: "Ubuntu 24.04 including
# Python 3.12"). In an image: ldd /opt/tritonserver/backends/python/triton_python_backend_stub | grep libpython
IMAGE_PYTHON: tuple[tuple[tuple[int, int], tuple[int, int], str], ...] = (
    ((24, 1), (24, 10), "3.10"),
    ((24, 11), (25, 12), "3.12"),
)
DEFAULT_IMAGE = "24.10"  # Triton 2.51: the base of our own image and the tritonserver bundled here
# Wheels for the image's glibc: Ubuntu 22.04 has 2.35 (24.04: 2.39), so manylinux_2_35 and older.
MANYLINUX_MAX = 35
# The project's code the Python-backend models import (the rest of the package is client/ops/front end).
SERVING_SUBPACKAGES = ("core", "server")
NOT_SERVING_MODULES = frozenset({"cli.py"})


class EnvError(ValueError):
    """The environment cannot be built for this image (wrong Python, platform, missing lock)."""


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter as probed by running it."""

    path: str
    version: str  # "3.10.13"
    system: str
    machine: str

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def image_release(image: str) -> tuple[int, int]:
    """``(24, 10)`` from ``24.10``, ``24.10-py3`` or a full image URI ``...:24.10-py3``."""
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else image
    match = re.match(r"^(\d{2})\.(\d{2})(?:-|$)", tag)
    if not match:
        raise EnvError(f"cannot read a Triton release (YY.MM) from image {image!r}; pass e.g. --image 24.10")
    return int(match.group(1)), int(match.group(2))


def image_python(image: str) -> str:
    """The Python minor version of a Triton image release, or EnvError when it is not known."""
    release = image_release(image)
    for first, last, python in IMAGE_PYTHON:
        if first <= release <= last:
            return python
    known = ", ".join(f"{a[0]}.{a[1]:02d}-{b[0]}.{b[1]:02d} -> Python {p}" for a, b, p in IMAGE_PYTHON)
    raise EnvError(
        f"the Python of Triton {release[0]}.{release[1]:02d} images is not known here ({known}); "
        "check it in the image and pass --image-python X.Y"
    )


def probe(python: str) -> Interpreter:
    """Run the interpreter to learn its version and platform (never trust its file name)."""
    exe = shutil.which(python) if os.sep not in python else python
    if not exe or not Path(exe).exists():
        raise EnvError(f"python interpreter {python!r} not found")
    code = (
        "import json, platform, sys; print(json.dumps([platform.python_version(), sys.platform, platform.machine()]))"
    )
    try:
        out = subprocess.run([exe, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvError(f"cannot run {exe}: {exc}") from exc
    version, system, machine = json.loads(out.stdout)
    return Interpreter(exe, version, system, machine)


def find_interpreter(minor: str) -> str:
    """A working ``python3.X`` for the image's version: on PATH, else a pyenv install; EnvError otherwise."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates = [shutil.which(f"python{minor}")] + [
        str(p) for p in sorted(pyenv.glob(f"{minor}.*/bin/python{minor}"), reverse=True)
    ]
    for candidate in filter(None, candidates):
        try:
            if probe(candidate).minor == minor:
                return candidate
        except EnvError:
            continue  # e.g. a pyenv shim for a version that is not selected
    raise EnvError(
        f"no working python{minor} found (PATH, pyenv): the environment must be packed with the image's "
        f"Python {minor}; install one (e.g. `pyenv install {minor}`) and pass --python /path/to/python{minor}"
    )


def check_interpreter(interp: Interpreter, minor: str) -> None:
    """Refuse an interpreter whose version or platform cannot serve in the image."""
    if interp.minor != minor:
        raise EnvError(
            f"{interp.path} is Python {interp.version}, but the image's Python-backend stub runs Python {minor}: "
            f"an environment packed with it would not load; pass --python pointing at a Python {minor}"
        )
    if interp.system != "linux" or interp.machine not in ("x86_64", "AMD64"):
        raise EnvError(f"{interp.path} runs on {interp.system}/{interp.machine}; the image is linux/x86_64")


def default_lock(minor: str) -> Path:
    """``requirements/models-py3XX.lock`` of the source tree this package runs from."""
    root = Path(__file__).resolve().parents[2]
    lock = root / "requirements" / f"models-py{minor.replace('.', '')}.lock"
    if not lock.is_file():
        available = sorted(p.name for p in (root / "requirements").glob("models-py*.lock"))
        raise EnvError(
            f"no lock file for Python {minor} ({lock}); available: {', '.join(available) or 'none'} "
            "(run from a source checkout, `make lock`, or pass --lock)"
        )
    return lock


def _package_files() -> list[tuple[str, Path]]:
    """(relative name, source) of this package's serving code, sorted."""
    pkg = Path(__file__).resolve().parents[1]
    files: list[tuple[str, Path]] = []
    for path in sorted(pkg.glob("*.py")):
        if path.name not in NOT_SERVING_MODULES:
            files.append((path.name, path))
    for sub in SERVING_SUBPACKAGES:
        for path in sorted((pkg / sub).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files.append((path.relative_to(pkg).as_posix(), path))
    return files


def cache_key(lock: Path, interp: Interpreter, image_python_dir: str) -> str:
    """Everything the environment's bytes depend on."""
    h = hashlib.sha256()
    h.update(f"{ENV_FORMAT}\0{interp.minor}\0{image_python_dir}\0{MANYLINUX_MAX}\0".encode())
    h.update(lock.read_bytes())
    for rel, path in _package_files():
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    base = os.environ.get("FUSION_EMOTION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fusion-emotion"
    )
    return Path(base) / "envs"


ACTIVATE = """\
# Written by `fusion-emotion package`: a relocatable venv activation for python_backend.
# python_backend extracts the environment to a random /tmp/python_env_* folder and runs
# `source <env>/bin/activate && exec <stub>`, so the environment locates itself here.
VIRTUAL_ENV="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV
PATH="$VIRTUAL_ENV/bin:$PATH"
export PATH
unset PYTHONHOME
"""


def _pip_install(lock: Path, site: Path, minor: str) -> None:
    """Install the locked wheels for the image's Python and platform into ``site`` (hashes required)."""
    abi = "cp" + minor.replace(".", "")
    platforms: list[str] = []
    for glibc in range(MANYLINUX_MAX, 16, -1):
        platforms += ["--platform", f"manylinux_2_{glibc}_x86_64"]
    platforms += ["--platform", "manylinux2014_x86_64"]
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--require-hashes", "--only-binary=:all:", "--no-compile",
        "--target", str(site), "--python-version", minor, "--implementation", "cp",
        "--abi", abi, "--abi", "abi3", "--abi", "none", *platforms,
        "--requirement", str(lock),
    ]  # fmt: skip
    log.info("installing %s for Python %s into the environment", lock.name, minor)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvError(f"pip could not install {lock.name} for Python {minor}:\n{result.stderr.strip()[-2000:]}")


def _smoke_test(interp: Interpreter, site: Path) -> None:
    """Import every model dependency and the serving code with the packing interpreter, isolated."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import numpy, scipy.signal, av, cv2, onnxruntime, openvino;"
        "import fusion_emotion.contract, fusion_emotion.core.video, fusion_emotion.core.rows,"
        " fusion_emotion.core.fusion, fusion_emotion.core.qa, fusion_emotion.core.onnx_runtime;"
        "assert numpy.__version__.startswith('1.'), numpy.__version__"
    )
    result = subprocess.run([interp.path, "-I", "-S", "-c", code, str(site)], capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvError(f"the packed environment does not import with {interp.path}:\n{result.stderr.strip()[-2000:]}")


def _installed_versions(site: Path) -> dict[str, str]:
    versions = {}
    for dist in sorted(site.glob("*.dist-info")):
        name, _, version = dist.name[: -len(".dist-info")].partition("-")
        versions[name] = version
    return versions


def build_env(
    output: Path,
    interp: Interpreter,
    lock: Path,
    *,
    image_python_dir: str = "/usr/bin",
) -> dict[str, object]:
    """Build the environment tarball at ``output``; return its manifest."""
    minor = interp.minor
    work = Path(tempfile.mkdtemp(prefix=".env-", dir=output.parent))
    try:
        env = work / "env"
        site = env / "lib" / f"python{minor}" / "site-packages"
        site.mkdir(parents=True)
        _pip_install(lock, site, minor)
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts carry this machine's paths
        for rel, src in _package_files():
            dest = site / "fusion_emotion" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        _smoke_test(interp, site)
        for cache in site.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
        manifest: dict[str, object] = {
            "format": ENV_FORMAT,
            "python": minor,
            "packed_with": interp.version,
            "interpreter": f"{image_python_dir.rstrip('/')}/python{minor}",
            "lock": lock.name,
            "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest(),
            "packages": _installed_versions(site),
        }
        (env / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (env / "pyvenv.cfg").write_text(
            f"home = {image_python_dir.rstrip('/')}\ninclude-system-site-packages = false\nversion = {minor}\n"
        )
        members = scan_tree(env)
        members += [
            Member("bin/activate", data=ACTIVATE.encode()),
            Member(f"bin/python{minor}", symlink=f"{image_python_dir.rstrip('/')}/python{minor}"),
            Member("bin/python3", symlink=f"python{minor}"),
            Member("bin/python", symlink=f"python{minor}"),
        ]
        write_tarball(members, output)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cached_env(
    interp: Interpreter,
    lock: Path,
    *,
    image_python_dir: str = "/usr/bin",
    cache_dir: Path | None = None,
    rebuild: bool = False,
) -> Path:
    """The environment tarball for these inputs, built once and reused (keyed by everything it depends on)."""
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"env-py{interp.minor}-{cache_key(lock, interp, image_python_dir)}.tar.gz"
    if path.is_file() and not rebuild:
        log.info("reusing the packed environment %s", path)
        return path
    build_env(path, interp, lock, image_python_dir=image_python_dir)
    log.info("packed environment %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
