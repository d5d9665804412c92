"""One BLAS thread per Python-backend stub.

The stubs scale by instance count (one process each) and run one request at a time, so a BLAS thread
pool in each has nothing to parallelise: OpenBLAS's idle workers busy-wait after every call instead.
Measured here: a batch-1 fusion head call (two small matrix products, 0.2 ms of work) cost ~50 ms of CPU
when the next call came 50 ms later, and ``preprocess``'s one BLAS call cost ~60 ms of CPU per request
(perf/README.md, "Two encoder threads"). ``OPENBLAS_NUM_THREADS`` would have to reach every way the
server is started (our launcher, the container, the stock SageMaker image), and the stub has imported
numpy before any model code runs, so the pools are capped here, through OpenBLAS's own setter.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from fusion_emotion.server import procs

log = logging.getLogger(__name__)

# numpy's wheel ships OpenBLAS with 64-bit symbols (``..64_``), scipy's as ``scipy_openblas``.
_SETTERS = (
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads",
)
_GETTERS = {setter: setter.replace("_set_", "_get_") for setter in _SETTERS}


def openblas_libraries() -> list[Path]:
    """The OpenBLAS builds loaded into this process (numpy's, scipy's...)."""
    return [path for path in procs.mapped_libraries() if "openblas" in path.name.lower()]


def _loaded() -> list[tuple[str, ctypes.CDLL, str | None]]:
    """(file name, handle, thread-setter symbol or None) of each loaded OpenBLAS."""
    out = []
    for path in openblas_libraries():
        lib = ctypes.CDLL(str(path))  # already loaded: this only looks it up
        out.append((path.name, lib, next((name for name in _SETTERS if hasattr(lib, name)), None)))
    return out


def blas_threads() -> dict[str, int]:
    """Thread count of each loaded OpenBLAS, by library file name."""
    return {
        name: int(getattr(lib, _GETTERS[setter])())
        for name, lib, setter in _loaded()
        if setter is not None and hasattr(lib, _GETTERS[setter])
    }


def limit_blas_threads(threads: int = 1) -> list[str]:
    """Cap every OpenBLAS loaded so far at ``threads``; returns the libraries capped (file names)."""
    capped = []
    for name, lib, setter in _loaded():
        if setter is None:
            log.warning("%s exports no thread setter; its thread pool is left as it is", name)
            continue
        getattr(lib, setter)(ctypes.c_int(threads))
        capped.append(name)
    return capped
