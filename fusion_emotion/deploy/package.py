"""Pack a Triton model repository as a SageMaker ``model.tar.gz``.

SageMaker extracts ModelDataUrl into /opt/ml/model, and both our ``serve``
entrypoint and the stock SageMaker Triton container expect the model folders
directly there: so the tarball has the model folders at its top level, no
leading directory and no config.pbtxt at the root. The archive is deterministic
(sorted entries, fixed mtimes, owners and modes, no gzip timestamp) so the
same repository always gives the same bytes and S3 ETag.
"""

from __future__ import annotations

import gzip
import logging
import os
import stat
import tarfile
from pathlib import Path

from fusion_emotion.contract import ENSEMBLE

log = logging.getLogger(__name__)

# 1980-01-01T00:00:00Z: zip-safe and what reproducible-build tools use as "no time".
FIXED_MTIME = 315532800
EXCLUDED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints", ".git"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
EXCLUDED_NAMES = frozenset({".DS_Store"})


class PackageError(ValueError):
    """The directory cannot be packaged (not a Triton repository, wrong layout)."""


def validate_repository(repository: Path) -> None:
    """Refuse anything SageMaker/Triton would reject at container start, before uploading it."""
    if not repository.is_dir():
        raise PackageError(f"{repository}: not a directory")
    if (repository / "config.pbtxt").exists():
        raise PackageError(
            f"{repository} has a config.pbtxt at its root: that is a single model folder, "
            "pass the repository that contains the model folders"
        )
    if not (repository / ENSEMBLE / "config.pbtxt").is_file():
        raise PackageError(
            f"{repository} is not a fusion-emotion Triton model repository: "
            f"{ENSEMBLE}/config.pbtxt is missing (build one with `fusion-emotion export`)"
        )


def _excluded(name: str) -> bool:
    return name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES)


def iter_members(repository: Path, skip: Path | None = None) -> list[Path]:
    """Files and folders to archive, relative to the repository, in sorted (deterministic) order."""
    found: list[Path] = []
    skip_resolved = skip.resolve() if skip else None
    for dirpath, dirnames, filenames in os.walk(repository, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        base = Path(dirpath)
        for d in dirnames:
            found.append((base / d).relative_to(repository))
        for f in sorted(filenames):
            path = base / f
            if _excluded(f) or (skip_resolved is not None and path.resolve() == skip_resolved):
                continue
            found.append(path.relative_to(repository))
    return sorted(found, key=lambda p: p.as_posix())


def _tarinfo(name: str, source: Path) -> tarfile.TarInfo:
    st = source.stat()  # follows symlinks: the archive holds contents, never links
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.type = tarfile.REGTYPE
        info.size = st.st_size
        info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
    return info


def build_model_tarball(repository: str | os.PathLike[str], output: str | os.PathLike[str]) -> list[str]:
    """Write ``output`` (tar.gz) from ``repository``; return the member names in archive order."""
    repo = Path(repository)
    out = Path(output)
    validate_repository(repo)
    members = iter_members(repo, skip=out)
    names: list[str] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as raw:
        # filename="" and mtime=0 keep the gzip header free of names and times.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel in members:
                    src = repo / rel
                    info = _tarinfo(rel.as_posix(), src)
                    if info.isdir():
                        tar.addfile(info)
                    else:
                        with open(src, "rb") as fh:
                            tar.addfile(info, fh)
                    names.append(info.name)
    os.replace(tmp, out)
    log.info("packaged %s -> %s (%d entries, %d bytes)", repo, out, len(names), out.stat().st_size)
    return names


def list_tarball(path: str | os.PathLike[str]) -> list[str]:
    """Member names of a tarball (for checks and the CLI summary)."""
    with tarfile.open(path, "r:gz") as tar:
        return tar.getnames()
