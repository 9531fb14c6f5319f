"""Eviction policies: which entry goes when the cache is full (LRU, LFU, SLRU)."""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import ClassVar

from ccied_p2p.errors import (
    ConfigError,
    LocalError,
)

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
