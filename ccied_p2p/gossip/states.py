"""The member state machine (SWIM with suspicion, plus a graceful leave), as one table of data.

Every change to what a node believes about *another* member goes through :data:`TRANSITIONS`. A node's belief
is a pair ``(state, incarnation)``; ``None`` means "never heard of it". Events are either local (a probe was
answered, a probe timed out, a suspicion timed out) or news heard from a peer, classified by how the news'
incarnation compares with the one held.

Precedence, incarnation first: news with a higher incarnation beats anything held, except ``left``, which is
final; at equal incarnation the more severe state wins (alive < suspect < dead < left); older news is ignored
(except ``left``). Equivalently each belief has a :func:`rank` and a belief only ever moves up, so merging the
same news in any order gives the same result (tests check the table against :func:`rank`).

A node's belief about *itself* never goes through this table: it refutes instead (see
:mod:`ccied_p2p.gossip.membership`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from ccied_p2p.codec.messages import MemberState

__all__ = [
    "SEVERITY",
    "TRANSITIONS",
    "Event",
    "classify",
    "merge",
    "rank",
    "transition",
]

ALIVE: Final = MemberState.ALIVE
SUSPECT: Final = MemberState.SUSPECT
DEAD: Final = MemberState.DEAD
LEFT: Final = MemberState.LEFT


class Event(StrEnum):
    """Something that may change a belief about a member."""

    PROBE_ACK = "probe-ack"  # our probe (direct or indirect) was answered
    PROBE_TIMEOUT = "probe-timeout"  # direct and indirect probes went unanswered
    SUSPECT_TIMEOUT = "suspect-timeout"  # nobody refuted the suspicion in time
    ALIVE_NEWER = "alive-newer"  # heard "alive" with a higher incarnation: a join or a refutation
    ALIVE_SAME = "alive-same"
    ALIVE_OLDER = "alive-older"
    SUSPECT_NEWER = "suspect-newer"
    SUSPECT_SAME = "suspect-same"
    SUSPECT_OLDER = "suspect-older"
    DEAD_NEWER = "dead-newer"
    DEAD_SAME = "dead-same"
    DEAD_OLDER = "dead-older"
    LEFT_NEWER = "left-newer"  # heard a graceful leave
    LEFT_SAME = "left-same"
    LEFT_OLDER = "left-older"


SEVERITY: Final[dict[MemberState, int]] = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}

# (held state or None for "unknown", event) -> new state. A missing key means "ignore the event".
# Accepted news is taken whole (its state and incarnation); local events keep the incarnation held.
TRANSITIONS: Final[dict[tuple[MemberState | None, Event], MemberState]] = {
    # first news of a member: believe it
    (None, Event.ALIVE_NEWER): ALIVE,
    (None, Event.SUSPECT_NEWER): SUSPECT,
    (None, Event.DEAD_NEWER): DEAD,  # a tombstone, so stale "alive" news cannot resurrect it
    (None, Event.LEFT_NEWER): LEFT,
    # alive
    (ALIVE, Event.PROBE_ACK): ALIVE,
    (ALIVE, Event.PROBE_TIMEOUT): SUSPECT,
    (ALIVE, Event.ALIVE_NEWER): ALIVE,
    (ALIVE, Event.SUSPECT_NEWER): SUSPECT,
    (ALIVE, Event.SUSPECT_SAME): SUSPECT,
    (ALIVE, Event.DEAD_NEWER): DEAD,
    (ALIVE, Event.DEAD_SAME): DEAD,
    (ALIVE, Event.LEFT_NEWER): LEFT,
    (ALIVE, Event.LEFT_SAME): LEFT,
    (ALIVE, Event.LEFT_OLDER): LEFT,
    # suspect: only the member itself clears a suspicion, by refuting with a higher incarnation
    (SUSPECT, Event.SUSPECT_TIMEOUT): DEAD,
    (SUSPECT, Event.ALIVE_NEWER): ALIVE,
    (SUSPECT, Event.SUSPECT_NEWER): SUSPECT,  # refuted, then suspected again: restart the timer
    (SUSPECT, Event.DEAD_NEWER): DEAD,
    (SUSPECT, Event.DEAD_SAME): DEAD,
    (SUSPECT, Event.LEFT_NEWER): LEFT,
    (SUSPECT, Event.LEFT_SAME): LEFT,
    (SUSPECT, Event.LEFT_OLDER): LEFT,
    # dead: a member wrongly declared dead comes back by refuting with a higher incarnation
    (DEAD, Event.ALIVE_NEWER): ALIVE,
    (DEAD, Event.SUSPECT_NEWER): SUSPECT,
    (DEAD, Event.DEAD_NEWER): DEAD,
    (DEAD, Event.LEFT_NEWER): LEFT,
    (DEAD, Event.LEFT_SAME): LEFT,
    (DEAD, Event.LEFT_OLDER): LEFT,
    # left is final (a node that leaves never speaks under that id again)
    (LEFT, Event.LEFT_NEWER): LEFT,
}

_HEARD: Final[dict[MemberState, tuple[Event, Event, Event]]] = {
    ALIVE: (Event.ALIVE_OLDER, Event.ALIVE_SAME, Event.ALIVE_NEWER),
    SUSPECT: (Event.SUSPECT_OLDER, Event.SUSPECT_SAME, Event.SUSPECT_NEWER),
    DEAD: (Event.DEAD_OLDER, Event.DEAD_SAME, Event.DEAD_NEWER),
    LEFT: (Event.LEFT_OLDER, Event.LEFT_SAME, Event.LEFT_NEWER),
}


def classify(heard: MemberState, heard_incarnation: int, held_incarnation: int | None) -> Event:
    """The event for news ``(heard, heard_incarnation)`` given the incarnation held (None: unknown member)."""
    older, same, newer = _HEARD[heard]
    if held_incarnation is None or heard_incarnation > held_incarnation:
        return newer
    return same if heard_incarnation == held_incarnation else older


def transition(held: MemberState | None, event: Event) -> MemberState | None:
    """The new state after ``event``, or None if the event is ignored in state ``held``."""
    return TRANSITIONS.get((held, event))


def merge(
    held: tuple[MemberState, int] | None, heard: tuple[MemberState, int]
) -> tuple[MemberState, int] | None:
    """Apply news ``heard = (state, incarnation)`` to a belief; None if the news changes nothing."""
    held_state, held_inc = (None, None) if held is None else held
    new_state = TRANSITIONS.get((held_state, classify(heard[0], heard[1], held_inc)))
    if new_state is None:
        return None
    if held is not None and (new_state, heard[1]) == held:
        return None
    return new_state, heard[1]


def rank(belief: tuple[MemberState, int]) -> tuple[int, int, int]:
    """A total order on beliefs: a belief only ever moves up it (``left`` above all, then incarnation)."""
    state, incarnation = belief
    return (1 if state is LEFT else 0, incarnation, SEVERITY[state])
