"""The :class:`SemanticCache` facade: lookups, verification, inserts, eviction, anti-entropy, summaries."""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ccied_p2p.cache import calibration, persistence
from ccied_p2p.cache.arrays import FloatArray, _unit
from ccied_p2p.cache.calibration import _audit_due, _vote, check_radius, entry_radius
from ccied_p2p.cache.entries import _Bucket, _Entry, _entry_hash, _OriginLog, entry_size
from ccied_p2p.cache.eviction import EvictionPolicy, make_policy
from ccied_p2p.cache.indexes import AutoIndex, IndexFactory, make_index
from ccied_p2p.cache.reducers import FeatureReducer, GlobalAvgPool
from ccied_p2p.cache.results import CacheStats, Hit, LookupResult, MergeResult, Miss
from ccied_p2p.codec.messages import CacheEntry, CacheSummary
from ccied_p2p.errors import (
    ConfigError,
    LocalError,
)

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
        radius: tuple[float, float] = (0.0, 0.0),
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
        self.radius = check_radius(radius)
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
        near = [(entries[key], d) for key, d in zip(keys.tolist(), dists.tolist(), strict=True)]
        if self.radius[1] > 0:
            scale = entry_radius(np.array([e.confidence for e, _ in near]), self.radius)
            close = [(e, d) for (e, d), s in zip(near, scale.tolist(), strict=True) if d <= threshold * s]
        else:
            close = [(e, d) for e, d in near if d <= threshold]
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

    # --------------------------------------------------------------------------------- calibration and files

    calibrate = calibration.calibrate
    to_bytes = persistence.to_bytes
    save = persistence.save
    load = classmethod(persistence.load)
    from_bytes = classmethod(persistence.from_bytes)


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
