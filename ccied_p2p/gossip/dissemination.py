"""Dissemination, the part of SWIM that spreads news (pure): the piggyback queue and the payload merge rule.

Every change of a member is queued once (newer news about a member replaces older) and piggybacked on
outgoing messages, least-sent and newest first, each at most a retransmit limit of times. Two records of the
same member at the same state and incarnation merge to the newer load report and the newer cache summary.
"""

from __future__ import annotations

import heapq
from dataclasses import replace
from typing import Final

from ccied_p2p.codec.messages import MemberUpdate

__all__ = ["UpdateQueue", "newer_payload", "with_best_payload"]


class UpdateQueue:
    """Updates waiting to be piggybacked: least-sent first, newest first among equals.

    One entry per member (newer news about a member replaces older). Priority is ``sent * 2**40 - seq``
    in one dict, so choosing is a C-level sort of a small dict.
    """

    __slots__ = ("prio", "sent", "seq")
    _STEP: Final = 1 << 40

    def __init__(self) -> None:
        self.sent: dict[bytes, int] = {}
        self.prio: dict[bytes, int] = {}
        self.seq = 0

    def push(self, node_id: bytes) -> None:
        self.seq += 1
        self.sent[node_id] = 0
        self.prio[node_id] = -self.seq

    def take(self, count: int, limit: int) -> list[bytes]:
        """Up to ``count`` ids to send now; each is counted as sent once more and dropped at ``limit``."""
        prio, sent, step = self.prio, self.sent, self._STEP
        if len(prio) <= count:
            ids = list(prio)
        elif len(prio) <= 64:
            ids = sorted(prio, key=prio.__getitem__)[:count]
        else:
            ids = heapq.nsmallest(count, prio, key=prio.__getitem__)
        out: list[bytes] = []
        for node_id in ids:
            times = sent[node_id] + 1
            if times > limit:  # the limit shrank with the cluster: drop, do not send
                del sent[node_id], prio[node_id]
                continue
            out.append(node_id)
            if times == limit:
                del sent[node_id], prio[node_id]
            else:
                sent[node_id] = times
                prio[node_id] += step
        return out

    def __len__(self) -> int:
        return len(self.sent)


def newer_payload(cur: MemberUpdate, upd: MemberUpdate) -> bool:
    """True if ``upd`` carries a newer load report or cache summary than ``cur``."""
    load, cache = upd.load, upd.cache
    return (load is not None and (cur.load is None or load.version > cur.load.version)) or (
        cache is not None and (cur.cache is None or cache.version > cur.cache.version)
    )


def with_best_payload(base: MemberUpdate, other: MemberUpdate) -> MemberUpdate:
    """``base`` with the newer load report and cache summary of the two records."""
    load, cache = base.load, base.cache
    if other.load is not None and (load is None or other.load.version > load.version):
        load = other.load
    if other.cache is not None and (cache is None or other.cache.version > cache.version):
        cache = other.cache
    if load is base.load and cache is base.cache:
        return base
    return replace(base, load=load, cache=cache)
