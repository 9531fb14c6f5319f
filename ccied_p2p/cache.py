"""The semantic cache: similar split activations get the label already computed for a neighbour.

Pure (no clock, no sockets, no asyncio): time comes in as ``now``; only :meth:`SemanticCache.save` and
:meth:`SemanticCache.load` touch the file system, everything else works on values.

Seams, each a strategy object:

- :class:`FeatureReducer` turns a split activation ``(B, C, H, W)`` into a compact unit feature ``(B, D)``;
  default :class:`GlobalAvgPool` (mean over space, L2-normalised), or :class:`GridPool`.
- :class:`VectorIndex` answers k-nearest-neighbour queries under cosine distance: :class:`BruteForceIndex`
  (numpy), :class:`USearchIndex` (usearch HNSW) and :class:`AutoIndex`, which starts as brute force and moves
  to usearch when it grows past the measured crossover.
- :class:`EvictionPolicy` picks the victim when the cache is full: :class:`LRUPolicy`, :class:`LFUPolicy`,
  :class:`SLRUPolicy` (default; see its docstring for the measurement behind the choice).

A lookup takes the ``k`` nearest entries of the same model fingerprint; those within ``threshold`` vote and
the lookup hits when at least ``votes`` of them vote and all agree. Entries that keep answering are audited
now and then (the caller runs the model once more and reports with :meth:`SemanticCache.verify`); a wrong
answer inserts a dissenting entry, and that neighbourhood stops answering. :meth:`SemanticCache.calibrate`
chooses threshold, k, votes and an insert confidence gate from calibration streams by replaying them
exactly as the cache would serve them, so the false-hit rate it promises is the one a fresh cache sees on
similar streams.

Anti-entropy for gossip: every entry carries its origin (a node id) and a per-origin version;
:meth:`SemanticCache.known` says what a node has, :meth:`SemanticCache.entries_since` answers a peer's
``known``, :meth:`SemanticCache.merge` adopts a peer's entries of the same model fingerprint.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import heapq
import math
import os
import struct
import tempfile
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import numpy as np
import numpy.typing as npt
from usearch.index import Index

from ccied_p2p.codec.messages import CacheEntry, CacheLookupResult, CacheSummary
from ccied_p2p.errors import (
    CodecError,
    ConfigError,
    LocalError,
    MalformedError,
    TruncatedError,
    UnsupportedError,
)

__all__ = [
    "FORMAT_VERSION",
    "AutoIndex",
    "BruteForceIndex",
    "CacheStats",
    "Calibration",
    "EvictionPolicy",
    "FeatureReducer",
    "GlobalAvgPool",
    "GridPool",
    "Hit",
    "LFUPolicy",
    "LRUPolicy",
    "LookupResult",
    "MergeResult",
    "Miss",
    "SLRUPolicy",
    "SemanticCache",
    "USearchIndex",
    "VectorIndex",
    "as_lookup_result",
    "auto_crossover",
    "clopper_pearson_upper",
    "entry_size",
    "make_index",
    "make_policy",
    "make_reducer",
    "serve_stream",
]

FloatArray = npt.NDArray[np.float32]
KeyArray = npt.NDArray[np.int64]
IntMatrix = npt.NDArray[np.int64]
StreamsArg = npt.NDArray[np.floating[Any]] | Sequence[npt.NDArray[np.floating[Any]]]
LabelsArg = npt.NDArray[np.integer[Any]] | Sequence[npt.NDArray[np.integer[Any]]]

FORMAT_VERSION = 1
"""Version of the :meth:`SemanticCache.save` file format."""

_MAGIC = b"CCIEDSC\x00"
_PREFIX = struct.Struct(">8sIQ")  # magic, format version, payload length
_DIGEST_SIZE = 32


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
    """Rows of ``x`` scaled to unit L2 norm (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: FloatArray = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    return out


# --------------------------------------------------------------------------------------------- reducers


class FeatureReducer(ABC):
    """Maps a batch of split activations ``(B, C, ...)`` to unit features ``(B, D)``."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, activation: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Reduce ``activation`` (batch first) to L2-normalised float32 features."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Parameters that rebuild this reducer with :func:`make_reducer` (saved with the cache)."""


def _select(x: npt.NDArray[np.floating[Any]], channels: tuple[int, ...] | None) -> npt.NDArray[np.float32]:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise LocalError(f"activation must be batch first (B, C, ...), got shape {x.shape}")
    return x if channels is None else x[:, list(channels)]


class GlobalAvgPool(FeatureReducer):
    """Mean over every axis after the channel axis, optionally keeping only ``channels``, L2-normalised.

    On a pruned split the pruned channels are always zero, so they add nothing to cosine distances; pass the
    surviving channels to shrink the feature (and the index) without changing any distance.
    """

    name = "gap"

    def __init__(self, channels: Sequence[int] | None = None) -> None:
        self.channels = None if channels is None else tuple(int(c) for c in channels)

    def __call__(self, activation: npt.NDArray[np.floating[Any]]) -> FloatArray:
        x = _select(activation, self.channels)
        pooled = x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2) if x.ndim > 2 else x
        return _unit(pooled)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "channels": None if self.channels is None else list(self.channels)}


class GridPool(FeatureReducer):
    """Average pooling to a ``grid`` x ``grid`` spatial grid per channel, flattened, L2-normalised.

    Keeps coarse layout (where in the image each channel fires), so it separates images that share global
    statistics; the feature is ``grid**2`` times wider than :class:`GlobalAvgPool`'s.
    """

    name = "grid"

    def __init__(self, grid: int = 2, channels: Sequence[int] | None = None) -> None:
        if grid < 1:
            raise ConfigError(f"grid must be >= 1, got {grid}")
        self.grid = grid
        self.channels = None if channels is None else tuple(int(c) for c in channels)

    def __call__(self, activation: npt.NDArray[np.floating[Any]]) -> FloatArray:
        x = _select(activation, self.channels)
        if x.ndim != 4:
            raise LocalError(f"GridPool needs (B, C, H, W), got shape {x.shape}")
        b, c, h, w = x.shape
        g = self.grid
        ys = np.linspace(0, h, g + 1).round().astype(int)
        xs = np.linspace(0, w, g + 1).round().astype(int)
        cells = [
            x[:, :, ys[i] : max(ys[i + 1], ys[i] + 1), xs[j] : max(xs[j + 1], xs[j] + 1)].mean(axis=(2, 3))
            for i in range(g)
            for j in range(g)
        ]
        return _unit(np.stack(cells, axis=2).reshape(b, c * g * g))

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "grid": self.grid,
            "channels": None if self.channels is None else list(self.channels),
        }


def make_reducer(config: Mapping[str, Any] | str) -> FeatureReducer:
    """A reducer from its name (``"gap"``, ``"grid"``) or from :meth:`FeatureReducer.config`."""
    cfg: dict[str, Any] = {"name": config} if isinstance(config, str) else dict(config)
    name = cfg.pop("name", None)
    try:
        if name == GlobalAvgPool.name:
            return GlobalAvgPool(**cfg)
        if name == GridPool.name:
            return GridPool(**cfg)
    except TypeError as exc:
        raise ConfigError(f"bad reducer config {config!r}: {exc}") from exc
    raise ConfigError(f"unknown reducer {name!r}")


# ---------------------------------------------------------------------------------------------- indexes

_EMPTY_KEYS: KeyArray = np.zeros(0, dtype=np.int64)
_EMPTY_DIST: FloatArray = np.zeros(0, dtype=np.float32)


class VectorIndex(ABC):
    """Nearest neighbours under cosine distance (``1 - cos``), keyed by non-negative ints."""

    name: ClassVar[str]

    def __init__(self, ndim: int) -> None:
        if ndim < 1:
            raise ConfigError(f"ndim must be >= 1, got {ndim}")
        self.ndim = ndim

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def add(self, key: int, vector: FloatArray) -> None:
        """Store ``vector`` under a key not already present."""

    @abstractmethod
    def remove(self, key: int) -> None:
        """Forget ``key`` (a no-op when absent)."""

    @abstractmethod
    def search(self, vector: FloatArray, k: int) -> tuple[KeyArray, FloatArray]:
        """Up to ``k`` (keys, distances), nearest first."""

    def add_many(self, keys: KeyArray, vectors: FloatArray) -> None:
        """Bulk :meth:`add` (an index may do it faster)."""
        for key, vec in zip(keys.tolist(), vectors, strict=True):
            self.add(key, vec)

    def dump(self) -> bytes | None:
        """A native serialised form worth saving next to the raw vectors, or ``None``."""
        return None

    def restore(self, blob: bytes, keys: KeyArray) -> bool:
        """Adopt a :meth:`dump` that must hold exactly ``keys``; ``False`` means rebuild from vectors."""
        return False


class BruteForceIndex(VectorIndex):
    """Exact search with one numpy matrix-vector product; O(1) add and remove (swap with last row)."""

    name = "numpy"

    def __init__(self, ndim: int, initial: int = 256) -> None:
        super().__init__(ndim)
        self._vecs = np.empty((max(1, initial), ndim), dtype=np.float32)
        self._keys = np.empty(max(1, initial), dtype=np.int64)
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._row)

    def _grow(self, need: int) -> None:
        cap = len(self._keys)
        if need <= cap:
            return
        cap = max(need, 2 * cap)
        vecs = np.empty((cap, self.ndim), dtype=np.float32)
        keys = np.empty(cap, dtype=np.int64)
        n = len(self._row)
        vecs[:n] = self._vecs[:n]
        keys[:n] = self._keys[:n]
        self._vecs, self._keys = vecs, keys

    def add(self, key: int, vector: FloatArray) -> None:
        if key in self._row:
            raise LocalError(f"key {key} already in the index")
        n = len(self._row)
        self._grow(n + 1)
        self._vecs[n] = _unit(vector)
        self._keys[n] = key
        self._row[key] = n

    def add_many(self, keys: KeyArray, vectors: FloatArray) -> None:
        if any(int(k) in self._row for k in keys.tolist()) or len(set(keys.tolist())) != len(keys):
            raise LocalError("duplicate keys")
        n = len(self._row)
        self._grow(n + len(keys))
        self._vecs[n : n + len(keys)] = _unit(vectors)
        self._keys[n : n + len(keys)] = keys
        for i, key in enumerate(keys.tolist()):
            self._row[key] = n + i

    def remove(self, key: int) -> None:
        row = self._row.pop(key, None)
        if row is None:
            return
        last = len(self._row)
        if row != last:
            moved = int(self._keys[last])
            self._vecs[row] = self._vecs[last]
            self._keys[row] = moved
            self._row[moved] = row

    def vector(self, key: int) -> FloatArray:
        """The stored (unit) vector of ``key``."""
        out: FloatArray = self._vecs[self._row[key]].copy()
        return out

    def search(self, vector: FloatArray, k: int) -> tuple[KeyArray, FloatArray]:
        n = len(self._row)
        if n == 0 or k < 1:
            return _EMPTY_KEYS, _EMPTY_DIST
        if n * self.ndim < _BLAS_SERIAL_BELOW:
            sims = self._vecs[:n] @ _unit(vector)
        else:
            with _one_blas_thread():
                sims = self._vecs[:n] @ _unit(vector)
        if k < n:
            top = np.argpartition(sims, n - k)[n - k :]
            order = top[np.argsort(-sims[top], kind="stable")]
        else:
            order = np.argsort(-sims, kind="stable")
        dist: FloatArray = (1.0 - sims[order]).astype(np.float32)
        return self._keys[order], dist


class USearchIndex(VectorIndex):
    """usearch HNSW with the ``cos`` metric, searched and grown on one thread (the caller's).

    Measured on this machine with 100k real 64-d features (k=5, one thread, both cores busy):
    ``expansion_search`` 32 finds 99.8% of the exact 5 nearest at 0.17 ms per search, against 100% at
    0.29 ms with usearch's default 64 (f16 storage: 0.10 ms, 99.7%; i8: 0.07 ms, 89%).

    Removals are batched: usearch makes the next insert after a single removal cost about 2 ms at 100k
    entries, but removing ``remove_batch`` keys at once keeps inserts near 0.5 ms. Until a batch is
    flushed the removed keys stay in the graph and are filtered out of results (a search asks for that
    many more neighbours).
    """

    name = "usearch"

    def __init__(
        self,
        ndim: int,
        connectivity: int | None = None,
        expansion_add: int | None = None,
        expansion_search: int | None = 32,
        dtype: str = "f32",
        remove_batch: int = 64,
    ) -> None:
        super().__init__(ndim)
        self.remove_batch = max(1, remove_batch)
        self._index = Index(
            ndim=ndim,
            metric="cos",
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )
        self._dead: set[int] = set()

    def __len__(self) -> int:
        return len(self._index) - len(self._dead)

    def _flush(self) -> None:
        if self._dead:
            self._index.remove(np.fromiter(self._dead, dtype=np.uint64, count=len(self._dead)))
            self._dead.clear()

    def add(self, key: int, vector: FloatArray) -> None:
        if key in self._dead:
            self._flush()
        if self._index.contains(key):
            raise LocalError(f"key {key} already in the index")
        self._index.add(key, np.ascontiguousarray(vector, dtype=np.float32), threads=1)

    def add_many(self, keys: KeyArray, vectors: FloatArray) -> None:
        if len(keys):
            self._flush()
            # Bulk loads (restore, merge of many entries) may use every core.
            self._index.add(
                keys.astype(np.uint64), np.ascontiguousarray(vectors, dtype=np.float32), threads=0
            )

    def remove(self, key: int) -> None:
        if key in self._dead or not self._index.contains(key):
            return
        self._dead.add(key)
        if len(self._dead) >= self.remove_batch:
            self._flush()

    def search(self, vector: FloatArray, k: int) -> tuple[KeyArray, FloatArray]:
        if len(self) == 0 or k < 1:
            return _EMPTY_KEYS, _EMPTY_DIST
        m = self._index.search(np.ascontiguousarray(vector, dtype=np.float32), k + len(self._dead), threads=1)
        keys, dist = m.keys.astype(np.int64), m.distances.astype(np.float32)
        if self._dead:
            live = np.fromiter((key not in self._dead for key in keys.tolist()), dtype=bool, count=len(keys))
            keys, dist = keys[live], dist[live]
        return keys[:k], dist[:k]

    def contains(self, key: int) -> bool:
        """Whether ``key`` is live in the index."""
        return key not in self._dead and bool(self._index.contains(key))

    def dump(self) -> bytes | None:
        self._flush()
        blob = self._index.save()
        return None if blob is None else bytes(blob)

    def restore(self, blob: bytes, keys: KeyArray) -> bool:
        try:
            index = Index.restore(blob)
        except (RuntimeError, ValueError, OSError):  # usearch raises RuntimeError on a bad buffer
            return False
        if index is None or index.ndim != self.ndim or len(index) != len(keys):
            return False
        if len(keys) and not bool(np.all(index.contains(keys.astype(np.uint64)))):
            return False
        index.expansion_search = self._index.expansion_search  # type: ignore[misc]  # settable at run time
        self._index, self._dead = index, set()
        return True


class AutoIndex(VectorIndex):
    """Brute force while small, usearch once past ``crossover`` entries (default :func:`auto_crossover`).

    The move is amortised: from ``crossover // 2`` entries on, every add also copies ``step`` older vectors
    into a shadow usearch index, so no single insert pays for building the graph. If ``capacity`` (the most
    entries the cache will ever hold) is below the crossover the shadow is never built.
    """

    name = "auto"

    def __init__(
        self, ndim: int, capacity: int | None = None, crossover: int | None = None, step: int = 2
    ) -> None:
        super().__init__(ndim)
        self.crossover = auto_crossover(ndim) if crossover is None else crossover
        self.capacity = capacity
        self.step = step
        self._brute: BruteForceIndex | None = BruteForceIndex(ndim)
        self._shadow: USearchIndex | None = None
        self._pending: list[int] = []

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"usearch"``: which index answers searches now."""
        return BruteForceIndex.name if self._brute is not None else USearchIndex.name

    def __len__(self) -> int:
        if self._brute is not None:
            return len(self._brute)
        assert self._shadow is not None
        return len(self._shadow)

    def _migrate(self) -> None:
        brute = self._brute
        if brute is None:
            return
        n = len(brute)
        if self._shadow is None:
            if n < self.crossover // 2 or (self.capacity is not None and self.capacity < self.crossover):
                return
            self._shadow = USearchIndex(self.ndim)
            self._pending = list(brute._row)
        moved = 0
        while self._pending and moved < self.step:
            key = self._pending.pop()
            if key in brute._row and not self._shadow.contains(key):
                self._shadow.add(key, brute.vector(key))
                moved += 1
        if not self._pending and n >= self.crossover:
            self._brute = None

    def add(self, key: int, vector: FloatArray) -> None:
        if self._brute is None:
            assert self._shadow is not None
            self._shadow.add(key, vector)
            return
        self._brute.add(key, vector)
        if self._shadow is not None:
            self._shadow.add(key, vector)
        self._migrate()

    def add_many(self, keys: KeyArray, vectors: FloatArray) -> None:
        if (
            self._brute is not None
            and len(self._brute) + len(keys) >= self.crossover
            and (self.capacity is None or self.capacity >= self.crossover)
        ):
            shadow = USearchIndex(self.ndim)
            old = np.fromiter(self._brute._row, dtype=np.int64, count=len(self._brute))
            if len(old):
                shadow.add_many(old, np.stack([self._brute.vector(int(k)) for k in old]))
            shadow.add_many(keys, vectors)
            self._brute, self._shadow, self._pending = None, shadow, []
            return
        if self._brute is None:
            assert self._shadow is not None
            self._shadow.add_many(keys, vectors)
            return
        self._brute.add_many(keys, vectors)
        if self._shadow is not None:
            self._shadow.add_many(keys, vectors)

    def remove(self, key: int) -> None:
        if self._brute is not None:
            self._brute.remove(key)
        if self._shadow is not None:
            self._shadow.remove(key)

    def search(self, vector: FloatArray, k: int) -> tuple[KeyArray, FloatArray]:
        if self._brute is not None:
            return self._brute.search(vector, k)
        assert self._shadow is not None
        return self._shadow.search(vector, k)

    def dump(self) -> bytes | None:
        return self._shadow.dump() if self._brute is None and self._shadow is not None else None

    def restore(self, blob: bytes, keys: KeyArray) -> bool:
        shadow = USearchIndex(self.ndim)
        if not shadow.restore(blob, keys):
            return False
        self._brute, self._shadow, self._pending = None, shadow, []
        return True


IndexFactory = Callable[[int, int], VectorIndex]
"""Builds an index from ``(ndim, capacity)``."""


def make_index(kind: str) -> IndexFactory:
    """An index factory by name: ``"auto"`` (default), ``"numpy"`` or ``"usearch"``."""
    if kind == AutoIndex.name:
        return lambda ndim, capacity: AutoIndex(ndim, capacity=capacity)
    if kind == BruteForceIndex.name:
        return lambda ndim, capacity: BruteForceIndex(ndim)
    if kind == USearchIndex.name:
        return lambda ndim, capacity: USearchIndex(ndim)
    raise ConfigError(f"unknown index kind {kind!r} (auto, numpy, usearch)")


# --------------------------------------------------------------------------------------------- eviction


class EvictionPolicy(ABC):
    """Which entry to drop when the cache is full. Keys are the cache's entry keys."""

    name: ClassVar[str]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def add(self, key: int) -> None:
        """Track a new entry."""

    @abstractmethod
    def touch(self, key: int) -> None:
        """The entry answered a lookup."""

    @abstractmethod
    def discard(self, key: int) -> None:
        """Stop tracking ``key`` (no-op when absent)."""

    @abstractmethod
    def victim(self) -> int:
        """The key to evict next (still tracked until :meth:`discard`)."""

    @abstractmethod
    def snapshot(self) -> list[tuple[int, int]]:
        """``(key, tag)`` pairs from which :meth:`restore` rebuilds exactly this state (for saving)."""

    @abstractmethod
    def restore(self, snapshot: Iterable[tuple[int, int]]) -> None:
        """Replace the state with a :meth:`snapshot`."""


class LRUPolicy(EvictionPolicy):
    """Least recently used (insert or hit) goes first."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def add(self, key: int) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: int) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def discard(self, key: int) -> None:
        self._order.pop(key, None)

    def victim(self) -> int:
        if not self._order:
            raise LocalError("nothing to evict")
        return next(iter(self._order))

    def snapshot(self) -> list[tuple[int, int]]:
        return [(key, 0) for key in self._order]

    def restore(self, snapshot: Iterable[tuple[int, int]]) -> None:
        self._order = OrderedDict((key, None) for key, _ in snapshot)


class LFUPolicy(EvictionPolicy):
    """Fewest hits goes first; ties go to the least recently used. A lazy heap keeps it O(log n)."""

    name = "lfu"

    def __init__(self) -> None:
        self._uses: dict[int, tuple[int, int]] = {}
        self._heap: list[tuple[int, int, int]] = []
        self._tick = 0

    def __len__(self) -> int:
        return len(self._uses)

    def _push(self, key: int, uses: int) -> None:
        self._tick += 1
        self._uses[key] = (uses, self._tick)
        heapq.heappush(self._heap, (uses, self._tick, key))
        if len(self._heap) > 2 * len(self._uses) + 64:
            self._heap = [(u, t, k) for k, (u, t) in self._uses.items()]
            heapq.heapify(self._heap)

    def add(self, key: int) -> None:
        self._push(key, 0)

    def touch(self, key: int) -> None:
        state = self._uses.get(key)
        if state is not None:
            self._push(key, state[0] + 1)

    def discard(self, key: int) -> None:
        self._uses.pop(key, None)

    def victim(self) -> int:
        while self._heap:
            uses, tick, key = self._heap[0]
            if self._uses.get(key) == (uses, tick):
                return key
            heapq.heappop(self._heap)
        raise LocalError("nothing to evict")

    def snapshot(self) -> list[tuple[int, int]]:
        return [(key, uses) for key, (uses, _) in sorted(self._uses.items(), key=lambda kv: kv[1])]

    def restore(self, snapshot: Iterable[tuple[int, int]]) -> None:
        self._uses, self._heap = {}, []
        for key, uses in snapshot:
            self._push(key, uses)


class SLRUPolicy(EvictionPolicy):
    """Segmented LRU: new entries wait in a probation LRU; a hit promotes to a protected LRU.

    The protected segment holds at most ``protected`` of the entries; its overflow is demoted to the
    probation segment's recent end, and the victim is the probation segment's least recent entry. One-off
    captures (a passer-by, a new scene) therefore only displace other one-offs, while anything that answered
    a lookup survives a burst of new inputs, and stale favourites still age out, unlike pure LFU.

    Measured with ``ccied-p2p bench cache`` (its ``eviction`` table: 5000-request camera stream, pool 500,
    Zipf s=1.0, calibrated cache; "drift" re-draws which images are popular every 1000 requests), hit rate:

    ========  ========  =====  =====  =====
    stream    capacity  LRU    LFU    SLRU
    ========  ========  =====  =====  =====
    static    50        0.199  0.265  0.287
    static    100       0.314  0.348  0.382
    static    200       0.447  0.472  0.489
    drift     50        0.234  0.111  0.255
    drift     100       0.335  0.217  0.363
    drift     200       0.436  0.303  0.428
    ========  ========  =====  =====  =====

    SLRU beats LFU on a steady scene (LFU's newcomers are evicted before they can prove themselves) and
    stays with LRU, or ahead of it, when popularity drifts, where LFU clings to dead favourites. Hence the
    default.
    """

    name = "slru"

    def __init__(self, protected: float = 0.8) -> None:
        if not 0.0 < protected < 1.0:
            raise ConfigError(f"protected must be in (0, 1), got {protected}")
        self.protected_share = protected
        self._probation: OrderedDict[int, None] = OrderedDict()
        self._protected: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def _rebalance(self) -> None:
        limit = max(1, int(self.protected_share * len(self)))
        while len(self._protected) > limit:
            key, _ = self._protected.popitem(last=False)
            self._probation[key] = None

    def add(self, key: int) -> None:
        self.discard(key)
        self._probation[key] = None

    def touch(self, key: int) -> None:
        if key in self._protected:
            self._protected.move_to_end(key)
        elif key in self._probation:
            del self._probation[key]
            self._protected[key] = None
            self._rebalance()

    def discard(self, key: int) -> None:
        self._probation.pop(key, None)
        self._protected.pop(key, None)

    def victim(self) -> int:
        if self._probation:
            return next(iter(self._probation))
        if self._protected:
            return next(iter(self._protected))
        raise LocalError("nothing to evict")

    def snapshot(self) -> list[tuple[int, int]]:
        return [(key, 0) for key in self._probation] + [(key, 1) for key in self._protected]

    def restore(self, snapshot: Iterable[tuple[int, int]]) -> None:
        self._probation, self._protected = OrderedDict(), OrderedDict()
        for key, tag in snapshot:
            (self._protected if tag else self._probation)[key] = None


_POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    LRUPolicy.name: LRUPolicy,
    LFUPolicy.name: LFUPolicy,
    SLRUPolicy.name: SLRUPolicy,
}


def make_policy(name: str) -> EvictionPolicy:
    """A fresh eviction policy by name: ``"lru"``, ``"lfu"`` or ``"slru"``."""
    try:
        return _POLICIES[name]()
    except KeyError:
        raise ConfigError(f"unknown eviction policy {name!r} ({', '.join(_POLICIES)})") from None


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Hit:
    """The cache answers: ``votes`` neighbours within the threshold, all agreeing on ``label``.

    ``distance`` is the nearest one's cosine distance; ``confidence`` their mean tail confidence; ``keys``
    the voters' entry keys. When ``audit`` is set the cache asks to be checked: run the model for this
    request, serve its answer, and report it with :meth:`SemanticCache.verify`.
    """

    label: int
    distance: float
    votes: int
    confidence: float
    audit: bool = False
    keys: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Miss:
    """No answer; ``distance`` is the nearest entry's cosine distance (``inf`` when none)."""

    distance: float = math.inf
    votes: int = 0


LookupResult = Hit | Miss


def as_lookup_result(request_id: int, result: LookupResult) -> CacheLookupResult:
    """The wire answer to a peer's :class:`~ccied_p2p.codec.messages.CacheLookup`."""
    if isinstance(result, Hit):
        return CacheLookupResult(request_id, result.label, result.confidence, result.distance, result.votes)
    distance = result.distance if math.isfinite(result.distance) else 2.0
    return CacheLookupResult(request_id, -1, 0.0, distance, result.votes)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was created (or loaded)."""

    entries: int
    hits: int
    misses: int
    inserts: int
    evictions: int
    merged: int
    rejected: int
    audits: int = 0
    audit_failures: int = 0


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What :meth:`SemanticCache.merge` did with a batch of peer entries."""

    accepted: int = 0
    duplicates: int = 0
    wrong_fingerprint: int = 0
    invalid: int = 0


@dataclass(frozen=True, slots=True)
class Calibration:
    """The setting :meth:`SemanticCache.calibrate` chose and what it measured.

    ``false_hit_rate`` is false hits / hits (a false hit answers a label the uncached model would not
    have); ``false_hit_bound`` is its one-sided Clopper-Pearson upper bound at ``confidence`` (the point
    estimate when ``confidence`` is 0), the figure held to the budget; with ``per_stream`` the largest of
    the bounds of each stream (or group of streams) in ``stream_bounds``. With ``held_out`` these figures
    come from the held-out streams, which chose nothing: they describe images the selection never saw,
    and the bound is at the Bonferroni level of the held-out test; the ``in_sample_*`` figures are those
    of the selection streams; ``tested`` settings were tested on the held-out streams
    and ``certified`` passed. ``threshold < 0`` means no setting met the budget and the cache never
    answers.
    """

    threshold: float
    k: int
    votes: int
    min_confidence: float
    requests: int
    hits: int
    false_hits: int
    hit_rate: float
    false_hit_rate: float
    false_hit_bound: float
    budget: float
    confidence: float
    candidates: int
    audits: int = 0
    held_out: bool = False
    per_stream: bool = False
    stream_bounds: tuple[float, ...] = ()
    in_sample_requests: int = 0
    in_sample_hits: int = 0
    in_sample_false_hits: int = 0
    certified: int = 0
    tested: int = 0


# ---------------------------------------------------------------------------------------------- entries

_ENTRY_OVERHEAD = 64
_DEFAULT_GATES = (0.0, 0.5, 0.7, 0.9, 0.95)


def entry_size(dim: int, fingerprint: str, origin: bytes) -> int:
    """Bytes one :class:`CacheEntry` is budgeted on the wire: feature float32s plus a fixed allowance."""
    return 4 * dim + len(fingerprint) + len(origin) + _ENTRY_OVERHEAD


@dataclass(slots=True)
class _Entry:
    key: int
    feature: FloatArray
    label: int
    confidence: float
    fingerprint: str
    origin: bytes
    version: int
    created: float
    last_used: float
    uses: int = 0
    disputed: bool = False

    def message(self) -> CacheEntry:
        return CacheEntry(
            feature=self.feature.copy(),
            label=self.label,
            confidence=self.confidence,
            fingerprint=self.fingerprint,
            origin=self.origin,
            version=self.version,
            created=self.created,
        )


@dataclass(slots=True)
class _Bucket:
    """Everything of one model fingerprint: its own index, so a search can only return its entries."""

    index: VectorIndex
    labels: Counter[int] = field(default_factory=Counter)
    digest: int = 0


@dataclass(slots=True)
class _OriginLog:
    """Versions held from one origin, sorted; removed ones are tombstones until compaction."""

    versions: list[int] = field(default_factory=list)
    keys: dict[int, int] = field(default_factory=dict)
    dead: int = 0

    def add(self, version: int, key: int) -> None:
        versions = self.versions
        if not versions or version > versions[-1]:
            versions.append(version)
        else:
            pos = bisect.bisect_left(versions, version)
            if pos < len(versions) and versions[pos] == version:
                self.dead -= 1
            else:
                versions.insert(pos, version)
        self.keys[version] = key

    def remove(self, version: int) -> None:
        if self.keys.pop(version, None) is not None:
            self.dead += 1
            if self.dead > 64 and self.dead > len(self.versions) // 2:
                self.versions = [v for v in self.versions if v in self.keys]
                self.dead = 0


def _entry_hash(origin: bytes, version: int) -> int:
    h = hashlib.blake2b(origin + version.to_bytes(8, "big", signed=False), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def _binomial_cdf(x: int, n: int, p: float) -> float:
    """P(X <= x) for X ~ Binomial(n, p), summed in log space."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if x >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(x + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _clopper_pearson_bisect(bad: int, n: int, confidence: float) -> float:
    """The Clopper-Pearson upper bound by bisection on the binomial CDF (when scipy is absent)."""
    lo, hi = bad / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _binomial_cdf(bad, n, mid) > 1.0 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def clopper_pearson_upper(bad: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) upper bound of a binomial rate ``bad / n``.

    The true rate is below it with probability at least ``confidence`` whatever the rate (Clopper and
    Pearson, Biometrika 1934): the largest ``p`` with ``P(X <= bad | n, p) >= 1 - confidence``, the
    ``confidence`` quantile of Beta(bad + 1, n - bad). No observations bound nothing (1.0);
    ``confidence <= 0`` gives the point estimate.
    """
    if n <= 0:
        return 1.0
    if confidence <= 0:
        return bad / n
    if bad >= n:
        return 1.0
    try:
        from scipy.stats import beta
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return _clopper_pearson_bisect(bad, n, confidence)
    return float(beta.ppf(confidence, bad + 1, n - bad))


# ------------------------------------------------------------------------------------ calibration replay


def _prior_neighbours(
    features: FloatArray, depth: int, chunk: int = 256
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Row ``i``: the ``depth`` earlier rows ``j < i`` nearest to ``i`` (indices, cosine distances, count),
    ascending, padded with -1 / inf."""
    n = len(features)
    depth = max(1, min(depth, n))
    idx = np.full((n, depth), -1, dtype=np.int64)
    dist = np.full((n, depth), np.inf, dtype=np.float32)
    count = np.minimum(np.arange(n), depth).astype(np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = features[start:stop] @ features[:stop].T
        block = sims[:, start:stop]
        block[np.triu_indices(stop - start)] = -np.inf
        m = min(depth, stop)
        top = np.argpartition(-sims, m - 1, axis=1)[:, :m] if m < stop else np.argsort(-sims, axis=1)
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_sims = np.take_along_axis(top_sims, order, axis=1)
        valid = np.isfinite(top_sims)
        idx[start:stop, :m] = np.where(valid, top, -1)
        dist[start:stop, :m] = np.where(valid, 1.0 - top_sims, np.inf)
    return idx, dist, count


def _vote(labels: Sequence[int], votes: int) -> int:
    """The label when at least ``votes`` voters all agree on it, else -1."""
    if len(labels) < votes or not labels or any(lab != labels[0] for lab in labels):
        return -1
    return labels[0]


def _audit_due(uses: int, audit_from: int) -> bool:
    """Audit when an entry's use count reaches ``audit_from``, twice that, four times, ..."""
    if audit_from <= 0 or uses < audit_from or uses % audit_from:
        return False
    m = uses // audit_from
    return m & (m - 1) == 0


def _audit_due_many(uses: npt.NDArray[np.int64], audit_from: int) -> npt.NDArray[np.bool_]:
    if audit_from <= 0:
        return np.zeros(uses.shape, dtype=bool)
    m = uses // audit_from
    out: npt.NDArray[np.bool_] = (uses >= audit_from) & (uses % audit_from == 0) & ((m & (m - 1)) == 0)
    return out


def _replay(
    features: FloatArray,
    neighbours: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]],
    labels: npt.NDArray[np.int64],
    insertable: npt.NDArray[np.bool_],
    thresholds: npt.NDArray[np.float64],
    k: int,
    votes: int,
    audit_from: int,
    budget: float,
    elsewhere: int = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Serve the stream as fresh unbounded caches would, one per threshold, in lockstep.

    Mirrors :meth:`SemanticCache.lookup`, ``insert`` and ``verify`` step for step. Returns served hits,
    false hits, audits and which thresholds were followed to the end: one whose false hits exceed
    ``budget`` even if every remaining request (and ``elsewhere`` requests in other streams) were a clean
    hit is dropped early.
    """
    idx, dist, count = neighbours
    n, depth = idx.shape
    n_labels = int(labels.max()) + 1 if len(labels) else 1
    onehot = np.eye(n_labels, dtype=np.float32)
    th = thresholds.astype(np.float32)[:, None]
    n_t = len(thresholds)
    t_all = np.arange(n_t)
    inserted = np.zeros((n_t, n), dtype=bool)
    uses = np.zeros((n_t, n), dtype=np.int64)
    hits = np.zeros(n_t, dtype=np.int64)
    bad = np.zeros(n_t, dtype=np.int64)
    audits = np.zeros(n_t, dtype=np.int64)
    disputed = np.zeros((n_t, n), dtype=bool)
    active = np.ones(n_t, dtype=bool)
    for i in range(n):
        length = int(count[i])
        if length == 0 or dist[i, 0] > th[-1, 0]:
            inserted[:, i] = insertable[i] & active
            continue
        row = idx[i, :length]
        d = dist[i, :length]
        mask = inserted[:, row] & (d[None, :] <= th)
        sel = mask & (np.cumsum(mask, axis=1) <= k)
        counts = sel.astype(np.float32) @ onehot[labels[row]]
        deep: dict[int, npt.NDArray[np.int64]] = {}
        if length == depth:
            # Every listed neighbour may be within the threshold with too few cached: look further back.
            for t in np.flatnonzero(active & (sel.sum(axis=1) < k) & (d[-1] <= th[:, 0])).tolist():
                prior = np.flatnonzero(inserted[t, :i])
                d_all = 1.0 - features[prior] @ features[i]
                near = np.argsort(d_all, kind="stable")[:k]
                deep[t] = prior[near[d_all[near] <= th[t, 0]]]
                counts[t] = onehot[labels[deep[t]]].sum(axis=0)
        voters = counts.sum(axis=1)
        best = counts.argmax(axis=1)
        blocked: npt.NDArray[np.bool_] = np.any(sel & disputed[:, row], axis=1)
        for t in deep:
            blocked[t] = bool(disputed[t, deep[t]].any())
        hit = active & (voters >= votes) & (counts[t_all, best] == voters) & ~blocked
        shallow = hit.copy()
        shallow[list(deep)] = False
        ts, cols = np.nonzero(sel & shallow[:, None])
        uses[ts, row[cols]] += 1  # (t, j) pairs are distinct
        u = uses[t_all, row[sel.argmax(axis=1)]]
        audited = shallow & _audit_due_many(u, audit_from)
        for t in deep:
            if hit[t]:
                uses[t, deep[t]] += 1
                audited[t] = _audit_due(int(uses[t, deep[t][0]]), audit_from)
        served = hit & ~audited
        hits += served
        bad += served & (best != labels[i])
        audits += audited
        if insertable[i]:
            inserted[:, i] = active & ~hit
        failed = audited & (best != labels[i])
        if failed.any():
            inserted[failed, i] = True
            ts, cols = np.nonzero(sel & failed[:, None])
            disputed[ts, row[cols]] = True
            for t in deep:
                if failed[t]:
                    disputed[t, deep[t]] = True
        if i % 64 == 63:
            active &= bad <= budget * (hits + (n - 1 - i) + elsewhere)
    return hits, bad, audits, active


# ------------------------------------------------------------------------------------------------ cache


class SemanticCache:
    """A node's cache of (feature -> label) answers, one usearch/numpy index per model fingerprint.

    Why one index per fingerprint rather than one filtered index: a filtered k-NN search over a mixed index
    can return fewer than ``k`` same-model neighbours (or none) while foreign entries crowd the top k, and
    HNSW cannot filter without over-fetching; separate indexes make "another model never answers" hold by
    construction, at the cost of a few KB per extra fingerprint. Capacity and eviction are shared.

    Not thread-safe: one cache per node, used from its event loop.

    The default setting (``threshold=0.01, k=5, votes=3``) is what :meth:`calibrate` chose for the default
    reducer on Fashion-MNIST camera streams through the 75%-pruned VGG split (``ccied-p2p bench cache``,
    ``reducers.gap``); thresholds depend on the model and the reducer, so calibrate for yours.
    """

    def __init__(
        self,
        node_id: bytes = b"",
        *,
        capacity: int = 100_000,
        threshold: float = 0.01,
        k: int = 5,
        votes: int = 3,
        min_confidence: float = 0.0,
        audit_from: int = 8,
        reducer: FeatureReducer | None = None,
        index: str | IndexFactory = "auto",
        eviction: str | EvictionPolicy = "slru",
        window: int = 1000,
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"capacity must be >= 1, got {capacity}")
        if window < 1:
            raise ConfigError(f"window must be >= 1, got {window}")
        self.node_id = bytes(node_id)
        self.capacity = capacity
        self.threshold = threshold
        self.k = k
        self.votes = votes
        self.min_confidence = min_confidence
        if audit_from < 0:
            raise ConfigError(f"audit_from must be >= 0, got {audit_from}")
        self.audit_from = audit_from
        self._check_vote(k, votes)
        self.reducer = reducer or GlobalAvgPool()
        self._index_kind = index if isinstance(index, str) else "auto"
        self._make_index = make_index(index) if isinstance(index, str) else index
        if isinstance(eviction, str):
            self.policy = make_policy(eviction)
        else:
            if len(eviction):
                raise ConfigError("pass a fresh (empty) eviction policy")
            self.policy = eviction
        self._entries: dict[int, _Entry] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._logs: dict[bytes, _OriginLog] = {}
        self._known: dict[bytes, int] = {}
        self._next_key = 1
        self._own_version = 0
        self._version = 0
        self._recent: deque[bool] = deque(maxlen=window)
        self._hits = self._misses = self._inserts = self._evictions = self._merged = self._rejected = 0
        self._audits = self._audit_failures = 0

    @staticmethod
    def _check_vote(k: int, votes: int) -> None:
        if k < 1 or not 1 <= votes <= k:
            raise ConfigError(f"need k >= 1 and 1 <= votes <= k, got k={k}, votes={votes}")

    # ------------------------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def version(self) -> int:
        """Bumped by every change of the contents (insert, eviction, merge)."""
        return self._version

    def stats(self) -> CacheStats:
        """Counters for monitoring."""
        return CacheStats(
            entries=len(self._entries),
            hits=self._hits,
            misses=self._misses,
            inserts=self._inserts,
            evictions=self._evictions,
            merged=self._merged,
            rejected=self._rejected,
            audits=self._audits,
            audit_failures=self._audit_failures,
        )

    def fingerprints(self) -> list[str]:
        """Model fingerprints with at least one entry."""
        return [fp for fp, b in self._buckets.items() if len(b.index)]

    def index_backend(self, fingerprint: str) -> str:
        """Which index answers for ``fingerprint`` now (``"numpy"``, ``"usearch"``; ``""`` if none)."""
        bucket = self._buckets.get(fingerprint)
        if bucket is None:
            return ""
        index = bucket.index
        return index.backend if isinstance(index, AutoIndex) else index.name

    # -------------------------------------------------------------------------------------- features

    def features(self, activation: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Unit features ``(B, D)`` of a batch of activations (a 1-D input is taken as one feature)."""
        x = np.asarray(activation, dtype=np.float32)
        if x.ndim == 1:
            return _unit(x[None, :])
        return self.reducer(x)

    def _one(self, x: npt.NDArray[np.floating[Any]]) -> FloatArray:
        f = self.features(x)
        if f.shape[0] != 1:
            raise LocalError(f"expected one activation or feature, got a batch of {f.shape[0]}")
        row: FloatArray = f[0]
        if not np.all(np.isfinite(row)):
            raise LocalError("feature is not finite")
        return row

    # --------------------------------------------------------------------------------------- lookups

    def lookup(self, x: npt.NDArray[np.floating[Any]], fingerprint: str, now: float) -> LookupResult:
        """Answer from the cache or miss; ``x`` is one feature (1-D) or one activation ``(1, C, H, W)``.

        The caller's side of the contract: on a :class:`Hit` serve ``hit.label``, unless ``hit.audit``:
        then, as on a :class:`Miss`, run the model and serve its answer, and report it with
        :meth:`verify` (audited hit) or :meth:`insert` (miss).

        The ``k`` nearest entries of ``fingerprint`` within ``threshold`` vote; the cache answers when
        at least ``votes`` of them vote and all agree: a neighbour with another label means the input
        sits near a decision boundary, where a cached answer is least trustworthy. Each entry counts the
        hits it took part in, and a hit is audited when its nearest voter's count reaches
        ``audit_from``, then twice that, four times, ...: a popular image the model itself answers
        differently under small changes is caught after a few dozen hits, and the disagreeing answer
        :meth:`verify` inserts makes that neighbourhood miss from then on. Audits cost about
        ``log2(uses / audit_from)`` model runs per entry; ``audit_from=0`` disables them.
        """
        feature = self._one(x)
        result = self._lookup(feature, fingerprint, now)
        if isinstance(result, Hit) and not result.audit:
            self._hits += 1
            self._recent.append(True)
        else:
            if isinstance(result, Hit):
                self._audits += 1
            else:
                self._misses += 1
            self._recent.append(False)
        return result

    def _lookup(self, feature: FloatArray, fingerprint: str, now: float) -> LookupResult:
        bucket = self._buckets.get(fingerprint)
        if bucket is None or len(bucket.index) == 0:
            return Miss()
        index = bucket.index
        if feature.shape[0] != index.ndim:
            raise LocalError(f"feature has {feature.shape[0]} dims, entries of this model have {index.ndim}")
        keys, dists = index.search(feature, self.k)
        if len(keys) == 0:
            return Miss()
        nearest = float(dists[0])
        threshold = self.threshold
        entries = self._entries
        close = [
            (entries[key], d) for key, d in zip(keys.tolist(), dists.tolist(), strict=True) if d <= threshold
        ]
        label = _vote([e.label for e, _ in close], self.votes)
        if label < 0 or any(e.disputed for e, _ in close):
            return Miss(distance=nearest, votes=len(close))
        for e, _ in close:
            e.uses += 1
            e.last_used = now
            self.policy.touch(e.key)
        return Hit(
            label=label,
            distance=close[0][1],
            votes=len(close),
            confidence=sum(e.confidence for e, _ in close) / len(close),
            audit=_audit_due(close[0][0].uses, self.audit_from),
            keys=tuple(e.key for e, _ in close),
        )

    def verify(
        self,
        x: npt.NDArray[np.floating[Any]],
        hit: Hit,
        label: int,
        confidence: float,
        fingerprint: str,
        now: float,
    ) -> bool:
        """Report the model's answer to an audited hit; ``False`` when the cache was wrong.

        Then the entries that voted are marked disputed (they never answer again, nor travel to peers)
        and the model's answer is cached whatever its confidence, so this neighbourhood stops answering.
        """
        if label == hit.label:
            return True
        self._audit_failures += 1
        for key in hit.keys:
            entry = self._entries.get(key)
            if entry is not None:
                entry.disputed = True
        gate, self.min_confidence = self.min_confidence, 0.0
        try:
            self.insert(x, label, confidence, fingerprint, now)
        finally:
            self.min_confidence = gate
        return False

    # -------------------------------------------------------------------------------------- inserts

    def insert(
        self,
        x: npt.NDArray[np.floating[Any]],
        label: int,
        confidence: float,
        fingerprint: str,
        now: float,
    ) -> int | None:
        """Cache the tail's answer for ``x``; returns the entry key, or ``None`` below ``min_confidence``."""
        if label < 0 or not 0.0 <= confidence <= 1.0:
            raise LocalError(f"need label >= 0 and confidence in [0, 1], got {label}, {confidence}")
        if confidence < self.min_confidence:
            return None
        feature = self._one(x)
        if not np.any(feature):
            raise LocalError("feature is all zero")
        self._own_version += 1
        key = self._add(
            feature, int(label), float(confidence), fingerprint, self.node_id, self._own_version, now, now
        )
        self._inserts += 1
        return key

    def insert_many(
        self,
        x: npt.NDArray[np.floating[Any]],
        labels: Sequence[int] | npt.NDArray[np.integer[Any]],
        confidences: Sequence[float] | npt.NDArray[np.floating[Any]],
        fingerprint: str,
        now: float,
    ) -> int:
        """Bulk :meth:`insert` of a batch (features ``(B, D)`` or activations); returns how many were kept.

        The index is grown in one call, which lets usearch use every core: for warming a cache, not for
        the request path.
        """
        arr = np.asarray(x)
        feats = _unit(arr) if arr.ndim == 2 else self.features(arr)
        labs = np.asarray(labels, dtype=np.int64)
        confs = np.asarray(confidences, dtype=np.float64)
        if labs.shape != (len(feats),) or confs.shape != (len(feats),):
            raise LocalError(f"need {len(feats)} labels and confidences, got {labs.shape} and {confs.shape}")
        if np.any(labs < 0) or np.any(~(confs >= 0) | (confs > 1)):
            raise LocalError("need labels >= 0 and confidences in [0, 1]")
        if not np.all(np.isfinite(feats)) or not np.all(np.any(feats, axis=1)):
            raise LocalError("features must be finite and non-zero")
        keep = np.flatnonzero(confs >= self.min_confidence)[-self.capacity :]
        keys: list[int] = []
        for i in keep.tolist():
            self._own_version += 1
            keys.append(
                self._add(
                    feats[i],
                    int(labs[i]),
                    float(confs[i]),
                    fingerprint,
                    self.node_id,
                    self._own_version,
                    now,
                    now,
                    index=False,
                )
            )
        # Entries evicted while adding (the batch itself may overflow the capacity) are not indexed.
        live = [(k, i) for k, i in zip(keys, keep.tolist(), strict=True) if k in self._entries]
        if live:
            self._buckets[fingerprint].index.add_many(
                np.array([k for k, _ in live], dtype=np.int64), feats[[i for _, i in live]]
            )
        self._inserts += len(keep)
        return len(keep)

    def _add(
        self,
        feature: FloatArray,
        label: int,
        confidence: float,
        fingerprint: str,
        origin: bytes,
        version: int,
        created: float,
        now: float,
        uses: int = 0,
        index: bool = True,
    ) -> int:
        bucket = self._buckets.get(fingerprint)
        if bucket is None:
            bucket = self._buckets[fingerprint] = _Bucket(self._make_index(feature.shape[0], self.capacity))
        elif bucket.index.ndim != feature.shape[0]:
            raise LocalError(
                f"feature has {feature.shape[0]} dims, entries of this model have {bucket.index.ndim}"
            )
        while len(self._entries) >= self.capacity:
            self._evict()
        key = self._next_key
        self._next_key += 1
        entry = _Entry(key, feature, label, confidence, fingerprint, origin, version, created, now, uses)
        self._entries[key] = entry
        if index:
            bucket.index.add(key, feature)
        bucket.labels[label] += 1
        bucket.digest ^= _entry_hash(origin, version)
        self._logs.setdefault(origin, _OriginLog()).add(version, key)
        if version > self._known.get(origin, 0):
            self._known[origin] = version
        self.policy.add(key)
        self._version += 1
        return key

    def _evict(self) -> None:
        self._remove(self.policy.victim())
        self._evictions += 1

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key)
        bucket = self._buckets[entry.fingerprint]
        bucket.index.remove(key)
        bucket.labels[entry.label] -= 1
        if bucket.labels[entry.label] <= 0:
            del bucket.labels[entry.label]
        bucket.digest ^= _entry_hash(entry.origin, entry.version)
        self._logs[entry.origin].remove(entry.version)
        self.policy.discard(key)
        self._version += 1

    def clear(self) -> None:
        """Drop every entry (counters and version high-water marks stay)."""
        for key in list(self._entries):
            self._remove(key)
        self._buckets.clear()

    # ------------------------------------------------------------------------------- anti-entropy

    def known(self) -> dict[bytes, int]:
        """Highest version seen from each origin (this node's own inserts included): a CacheSync body."""
        out = dict(self._known)
        if self._own_version:
            out[self.node_id] = max(out.get(self.node_id, 0), self._own_version)
        return out

    def entries_since(
        self, known: Mapping[bytes, int], max_bytes: int, fingerprint: str | None = None
    ) -> list[CacheEntry]:
        """Entries the asker lacks (version above ``known[origin]``), oldest first per origin, within
        ``max_bytes`` as budgeted by :func:`entry_size`. Sending a prefix per origin keeps the asker's
        high-water marks honest when the answer is cut short. Disputed entries are not shared."""
        out: list[CacheEntry] = []
        used = 0
        for origin in sorted(self._logs):
            log = self._logs[origin]
            start = bisect.bisect_right(log.versions, known.get(origin, 0))
            for version in log.versions[start:]:
                key = log.keys.get(version)
                if key is None:
                    continue
                entry = self._entries[key]
                if entry.disputed or (fingerprint is not None and entry.fingerprint != fingerprint):
                    continue
                size = entry_size(len(entry.feature), entry.fingerprint, entry.origin)
                if used + size > max_bytes:
                    return out
                out.append(entry.message())
                used += size
        return out

    def merge(self, entries: Iterable[CacheEntry], fingerprint: str, now: float) -> MergeResult:
        """Adopt peer entries of ``fingerprint``; other fingerprints and malformed entries are refused."""
        accepted = duplicates = wrong = invalid = 0
        dim = self._dim(fingerprint)
        for e in entries:
            if e.fingerprint != fingerprint:
                wrong += 1
                continue
            log = self._logs.get(e.origin)
            if e.origin == self.node_id or (log is not None and e.version in log.keys):
                duplicates += 1
                continue
            feature = np.asarray(e.feature)
            if (
                feature.dtype != np.float32
                or feature.ndim != 1
                or (dim is not None and feature.shape[0] != dim)
                or feature.shape[0] == 0
                or not np.all(np.isfinite(feature))
                or not np.any(feature)
                or e.label < 0
                or not 0.0 <= e.confidence <= 1.0
                or not math.isfinite(e.created)
                or e.version < 1
                or e.version >= 1 << 64
            ):
                invalid += 1
                continue
            self._add(
                _unit(feature[None, :])[0],
                int(e.label),
                float(e.confidence),
                fingerprint,
                bytes(e.origin),
                int(e.version),
                float(e.created),
                now,
            )
            dim = feature.shape[0]
            accepted += 1
        self._merged += accepted
        self._rejected += wrong + invalid
        return MergeResult(accepted, duplicates, wrong, invalid)

    def _dim(self, fingerprint: str) -> int | None:
        bucket = self._buckets.get(fingerprint)
        return None if bucket is None else bucket.index.ndim

    # ------------------------------------------------------------------------------------- summary

    def summary(self, fingerprint: str | None = None) -> CacheSummary:
        """A small description for gossip: of one fingerprint's entries, or of all."""
        if fingerprint is not None:
            bucket = self._buckets.get(fingerprint)
            buckets = [] if bucket is None else [bucket]
        else:
            buckets = list(self._buckets.values())
        digest = 0
        counts: Counter[int] = Counter()
        entries = 0
        for b in buckets:
            digest ^= b.digest
            counts.update(b.labels)
            entries += len(b.index)
        recent = self._recent
        return CacheSummary(
            version=self._version,
            entries=entries,
            digest=digest.to_bytes(8, "big"),
            hit_rate=sum(recent) / len(recent) if recent else 0.0,
            label_counts={int(k): int(v) for k, v in sorted(counts.items())},
        )

    # --------------------------------------------------------------------------------- calibration

    def _calibration_streams(
        self,
        features: StreamsArg,
        reference_labels: LabelsArg,
        confidences: StreamsArg | None,
    ) -> list[tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
        if isinstance(features, np.ndarray):
            feat_list, label_list = [features], [reference_labels]
            conf_list = None if confidences is None else [confidences]
        else:
            feat_list, label_list = list(features), list(reference_labels)
            conf_list = None if confidences is None else list(confidences)
        if len(label_list) != len(feat_list) or (conf_list is not None and len(conf_list) != len(feat_list)):
            raise LocalError("features, reference_labels and confidences must hold the same streams")
        streams: list[tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.float64]]] = []
        for i, stream in enumerate(feat_list):
            arr = np.asarray(stream)
            feats = _unit(arr) if arr.ndim == 2 else self.features(arr)
            labs = np.asarray(label_list[i], dtype=np.int64).reshape(-1)
            if feats.shape[0] != len(labs):
                raise LocalError(f"{feats.shape[0]} features but {len(labs)} reference labels")
            if len(labs) == 0:
                raise LocalError("empty calibration stream")
            conf = np.ones(len(labs)) if conf_list is None else np.asarray(conf_list[i], dtype=np.float64)
            if conf.shape != labs.shape:
                raise LocalError(f"confidences must have shape {labs.shape}, got {conf.shape}")
            streams.append((feats, labs, conf))
        return streams

    def _score(
        self,
        streams: list[tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.float64]]],
        known_labels: npt.NDArray[np.int64],
        grid: npt.NDArray[np.float64],
        settings: list[tuple[float, int, int]],
        budget: float,
        depth: int,
        groups: list[int] | None,
    ) -> dict[tuple[float, int, int], tuple[IntMatrix, IntMatrix, IntMatrix, npt.NDArray[np.bool_]]]:
        """Per setting (gate, k, votes): hits, false hits and audits per stream and threshold, and which
        thresholds were replayed to the end (the others cannot meet ``budget``)."""
        n = sum(len(labs) for _, labs, _ in streams)
        neighbours = [_prior_neighbours(feats, depth) for feats, _, _ in streams]
        compact = [np.searchsorted(known_labels, labs).astype(np.int64) for _, labs, _ in streams]
        out = {}
        for gate, k, votes in settings:
            rows: tuple[list[IntMatrix], list[IntMatrix], list[IntMatrix]] = ([], [], [])
            full = np.ones(len(grid), dtype=bool)
            for i, ((feats, labs, conf), nb, comp) in enumerate(
                zip(streams, neighbours, compact, strict=True)
            ):
                if groups is None:
                    elsewhere = n - len(labs)
                else:
                    elsewhere = sum(
                        len(o[1]) for j, o in enumerate(streams) if groups[j] == groups[i] and j != i
                    )
                s_hits, s_bad, s_audits, s_full = _replay(
                    feats, nb, comp, conf >= gate, grid, k, votes, self.audit_from, budget, elsewhere
                )
                for acc, value in zip(rows, (s_hits, s_bad, s_audits), strict=True):
                    acc.append(value)
                full &= s_full
            hits, bad, audits = (np.stack(r) for r in rows)
            out[(gate, k, votes)] = (hits, bad, audits, full)
        return out

    def calibrate(
        self,
        features: StreamsArg,
        reference_labels: LabelsArg,
        max_false_hit_rate: float = 0.01,
        *,
        confidences: StreamsArg | None = None,
        thresholds: Sequence[float] | None = None,
        kv: Sequence[tuple[int, int]] = ((1, 1), (3, 1), (3, 2), (5, 2), (5, 3)),
        min_confidences: Sequence[float] | None = None,
        confidence: float = 0.95,
        apply: bool = True,
        depth: int = 256,
        holdout: tuple[StreamsArg, LabelsArg, StreamsArg | None] | None = None,
        per_stream: bool = False,
        groups: Sequence[int] | None = None,
        max_tests: int = 16,
    ) -> Calibration:
        """Choose ``threshold``, ``k``, ``votes`` (and ``min_confidence``) for the most hits within budget.

        ``features`` (or activations, reduced with this cache's reducer) are a calibration stream in
        arrival order, or a list of independent streams, and ``reference_labels`` what the uncached model
        predicts for each request (``confidences``, its confidences, enable the ``min_confidence`` insert
        gate, tried at ``min_confidences``, by default 0 to 0.95). Every candidate setting is scored by
        replaying each stream exactly as a fresh cache would serve it, audits included: look up; a served
        hit is false if its label differs from the reference; an audited hit is served by the model and,
        if the cache was wrong, inserts the reference answer; a miss inserts it (gated). A setting meets
        the budget when the one-sided Clopper-Pearson upper bound at ``confidence`` of its false-hit rate
        (false hits / hits, pooled over the streams; with ``per_stream``, of every stream on its own) is
        at most ``max_false_hit_rate``. Capacity is not simulated (keep each stream below it).

        Without ``holdout`` the winner has the most served hits among the settings that meet the budget
        on the streams it was chosen on: in-sample figures, optimistic for new images. ``holdout``
        (``(features, reference_labels, confidences)`` of streams drawn from other images than
        ``features``) makes the guarantee hold on unseen images, by learn-then-test (Angelopoulos et al.,
        2021) with Bonferroni's correction: of the settings that meet the budget on the selection
        streams, ``max_tests`` spread from the most hits to the fewest are tested on the held-out
        streams, each at confidence ``1 - (1 - confidence) / tests``; the winner has the most hits among
        those that pass. If the held-out hits behave as independent draws from the streams that will be
        served, every passed setting has a false-hit rate within the budget, all together with
        probability at least ``confidence``. The reported figures, and the bound at that level, are the
        held-out ones. (A fixed-sequence test, stopping at the first failure, certified nothing on one
        Fashion-MNIST halving in five: one lucky setting on the selection streams ends it.)

        ``per_stream`` makes the budget hold for each stream alone rather than pooled: streams without
        repeats (each image seen once), where false hits are several times as common as on camera
        streams, then cannot hide behind the cameras' many easy hits. ``groups`` (one number per stream)
        pools the streams of one group instead (say, all camera streams in one, the stream without
        repeats in another); the holdout streams are grouped alike, so they must be as many. A group
        needs at least 299 hits, all correct, for its bound to reach a 1% budget at 95%.
        """
        if not 0.0 <= max_false_hit_rate <= 1.0:
            raise ConfigError(f"max_false_hit_rate must be in [0, 1], got {max_false_hit_rate}")
        for k, votes in kv:
            self._check_vote(k, votes)
        if min_confidences is not None:
            gates = list(min_confidences)
        else:
            gates = [0.0] if confidences is None else list(_DEFAULT_GATES)
        if confidences is None and any(g > 0 for g in gates):
            raise LocalError("min_confidences need confidences")
        streams = self._calibration_streams(features, reference_labels, confidences)
        held = None
        if holdout is not None:
            held = self._calibration_streams(*holdout)
            if holdout[2] is None and any(g > 0 for g in gates):
                raise LocalError("min_confidences need confidences for the holdout streams too")
        n = sum(len(labs) for _, labs, _ in streams)
        group_of: list[int] | None = None
        if per_stream:
            group_of = list(range(len(streams))) if groups is None else [int(g) for g in groups]
            if len(group_of) != len(streams) or (held is not None and len(held) != len(streams)):
                raise LocalError("groups, streams and holdout streams must be as many")
        elif groups is not None:
            raise LocalError("groups need per_stream=True")
        if thresholds is None:
            first = np.concatenate([_prior_neighbours(f, 1)[1][:, 0] for f, _, _ in streams])
            nearest = first[np.isfinite(first)].astype(np.float64)
            qs = np.quantile(nearest, np.linspace(0.01, 0.995, 48)) if len(nearest) else np.zeros(0)
            thresholds = [float(t) for t in qs]
        grid = np.unique(np.maximum(np.asarray(thresholds, dtype=np.float64), 0.0))
        everything = streams + (held or [])
        known_labels = np.unique(np.concatenate([labs for _, labs, _ in everything]))
        settings = [(float(g), k, votes) for g in gates for k, votes in kv]
        budget = max_false_hit_rate
        scores = self._score(streams, known_labels, grid, settings, budget, depth, group_of)

        def bounds(
            hits: IntMatrix, bad: IntMatrix, t: int, confidence: float = confidence
        ) -> tuple[float, tuple[float, ...]]:
            member = np.array(group_of if group_of is not None else range(len(hits)))
            group_ids = sorted(set(member.tolist()))
            per = tuple(
                clopper_pearson_upper(
                    int(bad[member == g, t].sum()), int(hits[member == g, t].sum()), confidence
                )
                for g in group_ids
            )
            pooled = clopper_pearson_upper(int(bad[:, t].sum()), int(hits[:, t].sum()), confidence)
            return (max(per) if per_stream else pooled), per

        # Every setting within budget on the selection streams: (bound, -hits, setting, threshold index).
        passed: list[tuple[float, int, tuple[float, int, int], int]] = []
        for setting, (hits, bad, _, full) in scores.items():
            for t in np.flatnonzero(full & (hits.sum(axis=0) > 0)).tolist():
                bound, _ = bounds(hits, bad, t)
                if bound <= budget:
                    passed.append((bound, -int(hits[:, t].sum()), setting, t))
        candidates = len(settings) * len(grid)

        def result(
            setting: tuple[float, int, int],
            t: int,
            src: tuple[IntMatrix, IntMatrix, IntMatrix],
            m: int,
            level: float = confidence,
        ) -> Calibration:
            hits, bad, audits = src
            h, b = int(hits[:, t].sum()), int(bad[:, t].sum())
            bound, per = bounds(hits, bad, t, level)
            sel_hits, sel_bad = scores[setting][0], scores[setting][1]
            return Calibration(
                threshold=float(grid[t]),
                k=setting[1],
                votes=setting[2],
                min_confidence=setting[0],
                requests=m,
                hits=h,
                false_hits=b,
                hit_rate=h / m,
                false_hit_rate=b / h if h else 0.0,
                false_hit_bound=bound,
                budget=budget,
                confidence=confidence,
                candidates=candidates,
                audits=int(audits[:, t].sum()),
                held_out=held is not None,
                per_stream=per_stream,
                stream_bounds=per,
                in_sample_requests=n,
                in_sample_hits=int(sel_hits[:, t].sum()),
                in_sample_false_hits=int(sel_bad[:, t].sum()),
            )

        best: Calibration | None = None
        if held is None:
            if passed:
                _, _, setting, t = min(passed, key=lambda p: (p[1], int(scores[p[2]][1][:, p[3]].sum())))
                best = result(setting, t, scores[setting][:3], n)
        elif passed:
            # Up to max_tests of them, spread from the most hits to the fewest, each tested on the
            # holdout at the Bonferroni level: all that pass are within budget together.
            passed.sort(key=lambda p: (p[1], p[0]))
            step = len(passed) / min(max_tests, len(passed))
            chosen = [passed[int(i * step)] for i in range(min(max_tests, len(passed)))]
            level = 1.0 - (1.0 - confidence) / len(chosen) if confidence > 0 else 0.0
            m = sum(len(labs) for _, labs, _ in held)
            tested = self._score(
                held, known_labels, grid, sorted({p[2] for p in chosen}), budget, depth, group_of
            )
            certified: list[Calibration] = []
            for _, _, setting, t in chosen:
                hits, bad, audits, full = tested[setting]
                if full[t] and hits[:, t].sum() > 0 and bounds(hits, bad, t, level)[0] <= budget:
                    certified.append(result(setting, t, (hits, bad, audits), m, level))
            if certified:
                best = max(certified, key=lambda c: (c.hits + c.in_sample_hits, -c.false_hits))
                best = Calibration(**{**_asdict(best), "certified": len(certified), "tested": len(chosen)})
        if best is None:
            m = n if held is None else sum(len(labs) for _, labs, _ in held)
            best = Calibration(
                -1.0, 1, 1, 0.0, m, 0, 0, 0.0, 0.0, 0.0, budget, confidence, candidates,
                held_out=held is not None, per_stream=per_stream, in_sample_requests=n,
            )  # fmt: skip
        if apply:
            self.threshold, self.k, self.votes, self.min_confidence = (
                best.threshold,
                best.k,
                best.votes,
                best.min_confidence,
            )
        return best

    # --------------------------------------------------------------------------------- persistence

    def to_bytes(self) -> bytes:
        """The whole cache in the versioned file format (see :meth:`save`)."""
        entries = sorted(self._entries.values(), key=lambda e: (e.last_used, e.key))
        policy = self.policy.snapshot()
        fps = sorted({e.fingerprint for e in entries})
        origins = sorted({e.origin for e in entries})
        fp_id = {fp: i for i, fp in enumerate(fps)}
        origin_id = {o: i for i, o in enumerate(origins)}
        dims = {fp: self._buckets[fp].index.ndim for fp in fps}
        buckets: list[dict[str, Any]] = []
        for fp in fps:
            mine = [e for e in entries if e.fingerprint == fp]
            index = self._buckets[fp].index
            buckets.append(
                {
                    "fingerprint": fp,
                    "dim": dims[fp],
                    "keys": np.array([e.key for e in mine], dtype="<i8").tobytes(),
                    "features": np.stack([e.feature for e in mine]).astype("<f4").tobytes(),
                    "native": index.dump(),
                }
            )

        def col(values: list[Any], dtype: str) -> bytes:
            return np.array(values, dtype=dtype).tobytes()

        payload = {
            "format": FORMAT_VERSION,
            "node_id": self.node_id,
            "params": {
                "capacity": self.capacity,
                "threshold": self.threshold,
                "k": self.k,
                "votes": self.votes,
                "min_confidence": self.min_confidence,
                "audit_from": self.audit_from,
                "index": self._index_kind,
                "eviction": self.policy.name,
                "window": self._recent.maxlen,
                "reducer": self.reducer.config(),
            },
            "state": {
                "next_key": self._next_key,
                "own_version": self._own_version,
                "version": self._version,
                "known": [[o, v] for o, v in sorted(self._known.items())],
            },
            "fingerprints": fps,
            "origins": origins,
            "buckets": buckets,
            "entries": {
                "n": len(entries),
                "key": col([e.key for e in entries], "<i8"),
                "label": col([e.label for e in entries], "<i8"),
                "confidence": col([e.confidence for e in entries], "<f8"),
                "fingerprint": col([fp_id[e.fingerprint] for e in entries], "<u4"),
                "origin": col([origin_id[e.origin] for e in entries], "<u4"),
                "version": col([e.version for e in entries], "<u8"),
                "created": col([e.created for e in entries], "<f8"),
                "last_used": col([e.last_used for e in entries], "<f8"),
                "uses": col([e.uses for e in entries], "<u8"),
                "disputed": col([e.disputed for e in entries], "u1"),
            },
            "policy": {
                "key": col([k for k, _ in policy], "<i8"),
                "tag": col([t for _, t in policy], "<i8"),
            },
        }
        body: bytes = msgpack.packb(payload, use_bin_type=True)
        head = _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(body))
        digest = hashlib.blake2b(head + body, digest_size=_DIGEST_SIZE).digest()
        return head + body + digest

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cache to ``path`` atomically: a temporary file in the same directory, fsync, rename.

        A crash at any point leaves either the previous file or the new one, never a mix. Format: an
        8-byte magic ``CCIEDSC\\0``, a big-endian u32 format version and u64 payload length, a msgpack
        payload (parameters, counters, per-entry columns as little-endian arrays, per-fingerprint float32
        features and usearch's own serialised index when there is one), then a 32-byte BLAKE2b of all of it.
        """
        target = Path(path)
        data = self.to_bytes()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(target.parent or ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        reducer: FeatureReducer | None = None,
        index: str | IndexFactory | None = None,
        eviction: str | EvictionPolicy | None = None,
    ) -> SemanticCache:
        """A cache from a :meth:`save` file; a corrupt file raises a :class:`~ccied_p2p.errors.CodecError`."""
        return cls.from_bytes(Path(path).read_bytes(), reducer=reducer, index=index, eviction=eviction)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        reducer: FeatureReducer | None = None,
        index: str | IndexFactory | None = None,
        eviction: str | EvictionPolicy | None = None,
    ) -> SemanticCache:
        """Inverse of :meth:`to_bytes`."""
        if len(data) < _PREFIX.size + _DIGEST_SIZE:
            raise TruncatedError(f"cache file of {len(data)} bytes is shorter than its header")
        magic, fmt, length = _PREFIX.unpack_from(data)
        if magic != _MAGIC:
            raise UnsupportedError("not a ccied-p2p cache file")
        if fmt != FORMAT_VERSION:
            raise UnsupportedError(f"cache file format {fmt}, this version reads {FORMAT_VERSION}")
        end = _PREFIX.size + length
        if len(data) < end + _DIGEST_SIZE:
            raise TruncatedError(
                f"cache file declares {length} payload bytes, has {len(data) - _PREFIX.size}"
            )
        if len(data) > end + _DIGEST_SIZE:
            raise MalformedError("trailing bytes after the cache file digest")
        if hashlib.blake2b(data[:end], digest_size=_DIGEST_SIZE).digest() != data[end:]:
            raise MalformedError("cache file digest mismatch (corrupt or partly written)")
        try:
            payload = msgpack.unpackb(data[_PREFIX.size : end], raw=False)
            return cls._from_payload(payload, reducer, index, eviction)
        except CodecError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, msgpack.UnpackException) as exc:
            raise MalformedError(f"cache file payload is malformed: {exc}") from exc

    @classmethod
    def _from_payload(
        cls,
        p: dict[str, Any],
        reducer: FeatureReducer | None,
        index: str | IndexFactory | None,
        eviction: str | EvictionPolicy | None,
    ) -> SemanticCache:
        if p["format"] != FORMAT_VERSION:
            raise UnsupportedError(f"cache payload format {p['format']}")
        params = p["params"]
        try:
            cache = cls(
                bytes(p["node_id"]),
                capacity=int(params["capacity"]),
                threshold=float(params["threshold"]),
                k=int(params["k"]),
                votes=int(params["votes"]),
                min_confidence=float(params["min_confidence"]),
                audit_from=int(params["audit_from"]),
                reducer=reducer or make_reducer(params["reducer"]),
                index=index if index is not None else str(params["index"]),
                eviction=eviction if eviction is not None else str(params["eviction"]),
                window=int(params["window"]),
            )
        except ConfigError as exc:
            raise MalformedError(f"cache file parameters: {exc}") from exc
        cols = p["entries"]
        n = int(cols["n"])

        def col(name: str, dtype: str) -> npt.NDArray[Any]:
            arr = np.frombuffer(cols[name], dtype=dtype)
            if arr.shape != (n,):
                raise MalformedError(f"column {name!r} has {arr.size} values, expected {n}")
            return arr

        keys = col("key", "<i8").tolist()
        labels = col("label", "<i8").tolist()
        confs = col("confidence", "<f8").tolist()
        fp_ids = col("fingerprint", "<u4").tolist()
        origin_ids = col("origin", "<u4").tolist()
        versions = col("version", "<u8").tolist()
        created = col("created", "<f8").tolist()
        last_used = col("last_used", "<f8").tolist()
        uses = col("uses", "<u8").tolist()
        disputed = col("disputed", "u1").tolist()
        fps = [str(f) for f in p["fingerprints"]]
        origins = [bytes(o) for o in p["origins"]]
        features: dict[int, FloatArray] = {}
        natives: dict[str, tuple[bytes, KeyArray]] = {}
        for b in p["buckets"]:
            dim = int(b["dim"])
            bkeys = np.frombuffer(b["keys"], dtype="<i8").astype(np.int64)
            raw = np.frombuffer(b["features"], dtype="<f4")
            if dim < 1 or raw.size != dim * len(bkeys):
                raise MalformedError("bucket feature array does not match its keys")
            mat = raw.reshape(len(bkeys), dim).astype(np.float32)
            for key, row in zip(bkeys.tolist(), mat, strict=True):
                features[key] = row
            if b["native"] is not None:
                natives[str(b["fingerprint"])] = (bytes(b["native"]), bkeys)
        if len(features) != n or set(features) != set(keys):
            raise MalformedError("entry keys and feature keys differ")
        if len(set(keys)) != n or n > cache.capacity or any(k < 1 for k in keys):
            raise MalformedError("duplicate, invalid or too many entry keys")
        by_fp: dict[str, list[int]] = {}
        for i in range(n):
            fp = fps[fp_ids[i]]
            key = keys[i]
            cache._next_key = key
            cache._add(
                features[key],
                labels[i],
                confs[i],
                fp,
                origins[origin_ids[i]],
                versions[i],
                created[i],
                last_used[i],
                uses=uses[i],
                index=False,
            )
            cache._entries[key].disputed = bool(disputed[i])
            by_fp.setdefault(fp, []).append(key)
        for fp, fkeys in by_fp.items():
            bucket = cache._buckets[fp]
            karr = np.array(fkeys, dtype=np.int64)
            native = natives.get(fp)
            if native is None or not bucket.index.restore(native[0], karr):
                bucket.index.add_many(karr, np.stack([features[k] for k in fkeys]))
        snap_keys = np.frombuffer(p["policy"]["key"], dtype="<i8").tolist()
        snap_tags = np.frombuffer(p["policy"]["tag"], dtype="<i8").tolist()
        if len(snap_keys) != n or len(snap_tags) != n or set(snap_keys) != set(keys):
            raise MalformedError("eviction state does not match the entries")
        if cache.policy.name == params["eviction"]:
            cache.policy.restore(zip(snap_keys, snap_tags, strict=True))
        # else: another policy was asked for; it starts from the entries in last-use order.
        state = p["state"]
        cache._next_key = max(int(state["next_key"]), max(keys, default=0) + 1)
        cache._own_version = int(state["own_version"])
        cache._version = int(state["version"])
        cache._known = {bytes(o): int(v) for o, v in state["known"]}
        return cache


def serve_stream(
    cache: SemanticCache,
    features: npt.NDArray[np.floating[Any]],
    labels: npt.NDArray[np.integer[Any]],
    confidences: npt.NDArray[np.floating[Any]],
    fingerprint: str,
    start: float = 0.0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Serve a stream through ``cache`` as a :class:`~ccied_p2p.runtime.node.Node` does, offline.

    Request ``i`` (a row of features, or an activation reduced by the cache's reducer, at time
    ``start + i``) is looked up; a hit that is not
    audited answers the cached label; an audited hit is answered by the model (``labels[i]``,
    ``confidences[i]``: what the uncached model says) and reported with :meth:`SemanticCache.verify`; a miss
    is answered by the model and inserted (subject to the cache's ``min_confidence`` gate). Returns the
    label each request got and whether the cache answered it: ``served[hit] != labels[hit]`` are the
    false hits.
    """
    n = len(labels)
    if len(features) != n or len(confidences) != n:
        raise LocalError(f"{len(features)} features, {n} labels and {len(confidences)} confidences")
    feats = cache.features(np.asarray(features)) if n else np.zeros((0, 1), dtype=np.float32)
    served = np.asarray(labels, dtype=np.int64).copy()
    hit = np.zeros(n, dtype=bool)
    for i in range(n):
        now = start + i
        found = cache.lookup(feats[i], fingerprint, now)
        if isinstance(found, Hit) and not found.audit:
            served[i], hit[i] = found.label, True
        elif isinstance(found, Hit):
            cache.verify(feats[i], found, int(labels[i]), float(confidences[i]), fingerprint, now)
        else:
            cache.insert(feats[i], int(labels[i]), float(confidences[i]), fingerprint, now)
    return served, hit


def _asdict(c: Calibration) -> dict[str, Any]:
    return {f: getattr(c, f) for f in Calibration.__dataclass_fields__}
