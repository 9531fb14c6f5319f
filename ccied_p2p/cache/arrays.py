"""Array types and numeric helpers shared by the cache's parts (unit vectors, one BLAS thread, the crossover)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
KeyArray = npt.NDArray[np.int64]
IntMatrix = npt.NDArray[np.int64]
StreamsArg = npt.NDArray[np.floating[Any]] | Sequence[npt.NDArray[np.floating[Any]]]
LabelsArg = npt.NDArray[np.integer[Any]] | Sequence[npt.NDArray[np.integer[Any]]]


def auto_crossover(ndim: int) -> int:
    """Entries above which :class:`AutoIndex` answers from usearch rather than numpy brute force.

    ``40_000 / sqrt(ndim)``, fitted to what this machine measured (2 cores, both busy, one thread, real
    features of the pruned VGG split plus jitter, k=5, usearch ``expansion_search`` 32): per request with one
    insert per three lookups (a 65% hit rate), in ms, numpy / usearch:

    ======  =============  =============  =============  =============  =============
    dims    2k entries     5k             8k             12k            20k
    ======  =============  =============  =============  =============  =============
    16      0.015 / 0.031  0.023 / 0.033  0.030 / 0.035  0.041 / 0.037  0.069 / 0.042
    64      0.019 / 0.035  0.048 / 0.043  0.062 / 0.046  0.080 / 0.047  0.114 / 0.059
    256     0.054 / 0.053  0.095 / 0.064  0.132 / 0.076  0.180 / 0.083  0.592 / 0.153
    ======  =============  =============  =============  =============  =============

    so about 10k entries at 16 dims, 4.5k at 64 and 2k at 256. Brute force grows linearly and inserts for
    free; HNSW searches in near-constant time but pays on every insert. ``ccied-p2p bench cache`` reprints
    its own table under ``index_crossover``.
    """
    return int(40_000 / math.sqrt(max(1, ndim)))


_BLAS: Any = None
_BLAS_SERIAL_BELOW = 1 << 18  # OpenBLAS runs smaller matrix-vector products on one thread anyway (measured)


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Hold BLAS to the calling thread for one small product.

    Measured here with both cores busy: a 10k x 64 float32 matrix-vector product takes 0.03 ms on one
    OpenBLAS thread and 12 ms on two (the second thread has to be woken and waited for). OpenBLAS only
    splits products from about 8k x 64 up; the limit costs about 6-10 us, so it is taken only then.
    """
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

            _BLAS = ThreadpoolController()
        except ImportError:  # pragma: no cover - scikit-learn, a dependency, brings it
            _BLAS = False
    if not _BLAS:
        return contextlib.nullcontext()
    limit: contextlib.AbstractContextManager[Any] = _BLAS.limit(limits=1, user_api="blas")
    return limit


def _unit(x: npt.NDArray[np.floating[Any]]) -> FloatArray:
    """Rows of ``x`` scaled to unit L2 norm (all-zero rows stay zero; a row with a value that is not finite
    becomes NaN, which every key check refuses, rather than the zero row a NaN norm would leave)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    finite = np.isfinite(norm)
    unit = np.divide(x, norm, out=np.zeros_like(x), where=finite & (norm > 0))
    out: FloatArray = np.where(finite, unit, np.float32(np.nan))
    return out
