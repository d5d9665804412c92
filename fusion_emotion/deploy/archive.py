"""Deterministic tar.gz archives of a directory tree, with safe link handling.

Used for the SageMaker ``model.tar.gz`` and for the packed Python execution
environment. The bytes depend only on the content: sorted entries, fixed
mtimes, owners and modes, no gzip name or timestamp, so the same input gives
the same archive (and the same S3 ETag).

Links are where archives leak or hang: a symlink inside a model repository
pointing at ``~/.aws/credentials`` would be archived with the secret's contents,
a link loop would recurse forever, a FIFO would block the reader. ``scan_tree``
refuses all of these, naming the offending path; regular files that are hard
links of each other are stored once (a tar hard-link entry for the others).
"""

from __future__ import annotations

import gzip
import logging
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# 1980-01-01T00:00:00Z: zip-safe and what reproducible-build tools use as "no time".
FIXED_MTIME = 315532800
EXCLUDED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints", ".git"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
EXCLUDED_NAMES = frozenset({".DS_Store"})


class ArchiveError(ValueError):
    """The tree cannot be archived safely (a link leaving it, a loop, a special file)."""


@dataclass(frozen=True)
class Member:
    """One archive entry: a directory, a file (from ``source`` or ``data``) or a symlink."""

    name: str
    source: Path | None = None
    data: bytes | None = None
    is_dir: bool = False
    symlink: str | None = None  # link target, stored as is (only for trees we built ourselves)
    executable: bool = False


def _excluded(name: str) -> bool:
    return name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES)


def scan_tree(root: Path, skip: Iterable[Path] = ()) -> list[Member]:
    """Files and folders under ``root`` as members, refusing anything unsafe to archive.

    A symlink is followed only when its target stays inside ``root`` (its contents
    are archived, never the link); one that leaves ``root``, dangles, or loops
    back to one of its own parents is refused. Sockets, FIFOs and devices are
    refused. Paths in ``skip`` (the output being written) are left out.
    """
    root_real = Path(os.path.realpath(root))
    skipped = {Path(os.path.realpath(p)) for p in skip}
    members: list[Member] = []

    def walk(directory: Path, rel: str, ancestors: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise ArchiveError(f"{rel or '.'}: cannot list ({exc.strerror})") from exc
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False) and entry.name in EXCLUDED_DIRS:
                continue
            if _excluded(entry.name):
                continue
            if entry.is_symlink():
                try:
                    real = Path(os.path.realpath(path, strict=True))
                except OSError as exc:  # dangling, or ELOOP
                    raise ArchiveError(f"{name}: broken or looping symlink ({exc.strerror})") from exc
                if real != root_real and root_real not in real.parents:
                    raise ArchiveError(f"{name}: symlink to {os.readlink(path)} leaves {root}; refusing to archive it")
                mode = os.stat(real).st_mode
            else:
                real = path
                mode = entry.stat(follow_symlinks=False).st_mode
            if Path(os.path.realpath(real)) in skipped:
                continue
            if stat.S_ISDIR(mode):
                real_dir = Path(os.path.realpath(real))
                if real_dir in ancestors:
                    raise ArchiveError(f"{name}: symlink loop (points back to one of its parents)")
                members.append(Member(name, source=real, is_dir=True))
                walk(real, name, ancestors | {real_dir})
            elif stat.S_ISREG(mode):
                members.append(Member(name, source=real, executable=bool(mode & stat.S_IXUSR)))
            else:
                raise ArchiveError(f"{name}: not a regular file or directory (socket, FIFO or device); refusing")

    walk(root, "", frozenset({root_real}))
    return members


def _with_parents(members: list[Member]) -> list[Member]:
    """Add the directory entries every member's parents need, sorted by name (deterministic)."""
    by_name = {m.name: m for m in members}
    for m in members:
        parts = m.name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            by_name.setdefault(parent, Member(parent, is_dir=True))
    return [by_name[n] for n in sorted(by_name)]


def _info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tarball(members: list[Member], output: Path, compresslevel: int = 6) -> list[str]:
    """Write ``members`` to ``output`` (tar.gz) atomically; return the names in archive order.

    Written to ``<output>.partial`` first and renamed; on any error the partial
    file is removed, so a failed run leaves nothing behind.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    names: list[str] = []
    first_by_inode: dict[tuple[int, int], str] = {}
    try:
        with open(tmp, "wb") as raw:
            # filename="" and mtime=0 keep the gzip header free of names and times.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for m in _with_parents(members):
                        info = _info(m.name)
                        if m.is_dir:
                            info.type, info.mode = tarfile.DIRTYPE, 0o755
                            tar.addfile(info)
                        elif m.symlink is not None:
                            info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, m.symlink
                            tar.addfile(info)
                        elif m.data is not None:
                            info.size, info.mode = len(m.data), 0o755 if m.executable else 0o644
                            tar.addfile(info, _BytesReader(m.data))
                        else:
                            assert m.source is not None
                            st = m.source.stat()
                            key = (st.st_dev, st.st_ino)
                            info.mode = 0o755 if m.executable else 0o644
                            if key in first_by_inode:  # same file under another name: store it once
                                info.type, info.linkname = tarfile.LNKTYPE, first_by_inode[key]
                                tar.addfile(info)
                            else:
                                first_by_inode[key] = m.name
                                info.size = st.st_size
                                with open(m.source, "rb") as fh:
                                    tar.addfile(info, fh)
                        names.append(m.name)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return names


class _BytesReader:
    """The file object ``tarfile.addfile`` reads generated content from."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else min(len(self._data), self._pos + size)
        chunk = self._data[self._pos : end].tobytes()
        self._pos = end
        return chunk


def list_tarball(path: str | os.PathLike[str]) -> list[str]:
    """Member names of a tarball (for checks and the CLI summary)."""
    with tarfile.open(path, "r:gz") as tar:
        return tar.getnames()
