"""Entries, per-fingerprint buckets and per-origin logs: the cache's stored state."""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from dataclasses import dataclass, field

from ccied_p2p.cache.arrays import FloatArray
from ccied_p2p.cache.indexes import VectorIndex
from ccied_p2p.codec.messages import CacheEntry

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
