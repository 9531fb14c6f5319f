"""What the runtime gives a :class:`~ccied_p2p.gossip.membership.Membership` and what it gets back (pure).

:class:`MembershipConfig` holds the protocol's timings and bounds (why these defaults: the module docstring of
:mod:`ccied_p2p.gossip.membership`); :class:`MemberEvent` is one observable change of a member; ``Outgoing``
is what every call returns, the messages to send.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from ccied_p2p.codec.messages import MemberUpdate, Message
from ccied_p2p.errors import ConfigError

__all__ = ["MemberEvent", "MemberEventKind", "MembershipConfig", "Outgoing"]

Outgoing = list[tuple[bytes, Message]]
"""Messages to send: ``(destination node id, message)``."""


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Protocol timings and bounds; times in seconds. See the module docstring for why these defaults."""

    probe_interval: float = 0.2
    probe_timeout: float = 0.1
    indirect_checks: int = 5
    probe_failures: int = 2
    suspicion_mult: float = 4.0
    fanout: int = 3
    gossip_interval: float = 0.2
    max_piggyback: int = 8
    retransmit_mult: int = 4
    sync_interval: float = 2.0
    sync_boost: bool = True
    max_sync_updates: int = 256
    tombstone_ttl: float = 30.0
    max_awareness: int = 3
    max_events: int = 10_000

    def __post_init__(self) -> None:
        for name in ("probe_interval", "probe_timeout", "suspicion_mult", "gossip_interval", "sync_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"MembershipConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError("MembershipConfig.probe_timeout must be shorter than probe_interval")
        for name in ("fanout", "max_piggyback", "retransmit_mult", "max_sync_updates", "max_events"):
            if getattr(self, name) < 1:
                raise ConfigError(f"MembershipConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.probe_failures < 1:
            raise ConfigError("MembershipConfig.probe_failures must be >= 1")
        if self.indirect_checks < 0 or self.max_awareness < 0 or self.tombstone_ttl < 0:
            raise ConfigError("MembershipConfig: indirect_checks, max_awareness, tombstone_ttl must be >= 0")

    @classmethod
    def quick(cls) -> MembershipConfig:
        """Timings 4x shorter, for tests on loopback: a crash is declared dead in well under a second."""
        return cls(
            probe_interval=0.05,
            probe_timeout=0.025,
            gossip_interval=0.05,
            sync_interval=0.5,
            tombstone_ttl=5.0,
        )

    def suspicion_timeout(self, n: int) -> float:
        """How long a suspicion stands before the suspect is declared dead, in a cluster of ``n``."""
        return self.suspicion_mult * max(1.0, math.log10(max(n, 1))) * self.probe_interval

    def sync_period(self, n: int) -> float:
        """Anti-entropy period in a cluster of ``n``: ``sync_interval``, stretched above 32 members."""
        if n <= 32:
            return self.sync_interval
        return self.sync_interval * (math.ceil(math.log2(n) - 5) + 1)

    def retransmit_limit(self, n: int) -> int:
        """How many times one piggybacked update is sent, in a cluster of ``n`` (lambda * log n)."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))


class MemberEventKind(StrEnum):
    """What changed about a member, as the runtime observes it."""

    JOINED = "joined"
    SUSPECTED = "suspected"
    ALIVE = "alive"  # a suspect or dead member refuted
    DEAD = "dead"
    LEFT = "left"
    UPDATED = "updated"  # newer load report, cache summary or incarnation


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """One observable change: ``member`` is the record after the change."""

    kind: MemberEventKind
    member: MemberUpdate
    at: float
