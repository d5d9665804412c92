"""One BLAS thread per stub (fusion_emotion.server.blas); the live effect is in test_triton_integration."""

from __future__ import annotations

import numpy as np
import scipy.signal  # noqa: F401  (loads scipy's own OpenBLAS, as preprocess does)

from fusion_emotion.server import blas


def test_every_loaded_openblas_is_found_and_capped() -> None:
    before = blas.blas_threads()
    names = {path.name for path in blas.openblas_libraries()}
    assert len(names) >= 2 and set(before) == names  # numpy's and scipy's, each with a getter
    try:
        assert set(blas.limit_blas_threads(1)) == names
        assert set(blas.blas_threads().values()) == {1}
        a = np.ones((64, 1280), np.float32)
        assert float((a @ np.ones(1280, np.float32))[0]) == 1280.0  # still computes, on one thread
    finally:
        for count in set(before.values()):
            blas.limit_blas_threads(count)
    assert blas.blas_threads() == before
