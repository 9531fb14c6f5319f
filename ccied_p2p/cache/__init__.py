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

Parts: :mod:`~ccied_p2p.cache.reducers`, :mod:`~ccied_p2p.cache.indexes`, :mod:`~ccied_p2p.cache.eviction`,
:mod:`~ccied_p2p.cache.results`, :mod:`~ccied_p2p.cache.entries`, :mod:`~ccied_p2p.cache.calibration`
(replay), :mod:`~ccied_p2p.cache.persistence` (the file format) and :mod:`~ccied_p2p.cache.semantic` (the
:class:`SemanticCache` facade); every name below imports from ``ccied_p2p.cache`` as before.
"""

from __future__ import annotations

from ccied_p2p.cache.arrays import auto_crossover
from ccied_p2p.cache.calibration import check_radius, clopper_pearson_upper, entry_radius
from ccied_p2p.cache.entries import entry_size
from ccied_p2p.cache.eviction import EvictionPolicy, LFUPolicy, LRUPolicy, SLRUPolicy, make_policy
from ccied_p2p.cache.indexes import AutoIndex, BruteForceIndex, USearchIndex, VectorIndex, make_index
from ccied_p2p.cache.persistence import FORMAT_VERSION
from ccied_p2p.cache.reducers import FeatureReducer, GlobalAvgPool, GridPool, make_reducer, reducer_for
from ccied_p2p.cache.results import (
    CacheStats,
    Calibration,
    Hit,
    LookupResult,
    MergeResult,
    Miss,
)
from ccied_p2p.cache.semantic import SemanticCache, serve_stream

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
    "auto_crossover",
    "check_radius",
    "clopper_pearson_upper",
    "entry_radius",
    "entry_size",
    "make_index",
    "make_policy",
    "make_reducer",
    "reducer_for",
    "serve_stream",
]
