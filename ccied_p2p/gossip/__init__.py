"""Membership and failure detection (pure: no sockets, no clock; time is an argument).

- :mod:`ccied_p2p.gossip.states`      the member state machine, one transition table
- :mod:`ccied_p2p.gossip.membership`  :class:`Membership`: SWIM with suspicion, piggybacked dissemination
- :mod:`ccied_p2p.gossip.config`      :class:`MembershipConfig` (timings), :class:`MemberEvent` (what changed)
- :mod:`ccied_p2p.gossip.dissemination` the piggyback queue and the payload merge rule
- :mod:`ccied_p2p.gossip.simulation`  :class:`Simulation`: N members, a simulated clock, loss and crashes
"""

from __future__ import annotations

from ccied_p2p.gossip.membership import (
    MemberEvent,
    MemberEventKind,
    Membership,
    MembershipConfig,
)
from ccied_p2p.gossip.simulation import SimStats, Simulation
from ccied_p2p.gossip.states import Event

__all__ = [
    "Event",
    "MemberEvent",
    "MemberEventKind",
    "Membership",
    "MembershipConfig",
    "SimStats",
    "Simulation",
]
