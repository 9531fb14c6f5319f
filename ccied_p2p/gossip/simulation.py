"""A discrete-event simulation of N :class:`~ccied_p2p.gossip.membership.Membership` members (pure).

No sockets and no real clock: a heap of timed events (message deliveries and member wake-ups) drives the
members, every message is lost with probability ``loss`` and otherwise delivered after a latency drawn
uniformly from ``latency``. Members can crash (they stop, silently), leave, and restart under a new id.

A *round* is one ``probe_interval`` T of simulated time: in it every member wakes for one probe (ping, then
ping-reqs if needed) and one gossip to ``fanout`` members, and answers what it receives. Round ``r`` is
``[t0 + r * T, t0 + (r + 1) * T)``; "done within k rounds" means the condition held at ``t0 + k * T``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ccied_p2p.codec.messages import MemberState, Message
from ccied_p2p.errors import LocalError
from ccied_p2p.gossip.membership import MemberEventKind, Membership, MembershipConfig, Outgoing

__all__ = ["SimStats", "Simulation"]

_DELIVER = 0
_WAKE = 1


@dataclass(slots=True)
class SimStats:
    """Counters over a whole run. A *false* verdict is one about a member that was running at the time."""

    sent: int = 0
    lost: int = 0
    updates_sent: int = 0
    false_suspicions: int = 0
    false_dead_verdicts: int = 0


class Simulation:
    """N members on a simulated network with loss, latency and crashes."""

    def __init__(
        self,
        n: int,
        *,
        config: MembershipConfig | None = None,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.001, 0.010),
        seed: int = 0,
        converged: bool = False,
    ) -> None:
        if n < 1:
            raise LocalError("a simulation needs at least one member")
        if not 0.0 <= loss < 1.0:
            raise LocalError(f"loss must be in [0, 1), got {loss}")
        if not 0.0 <= latency[0] <= latency[1]:
            raise LocalError(f"latency must be 0 <= low <= high, got {latency}")
        self.config = config if config is not None else MembershipConfig()
        self.loss = loss
        self.latency = latency
        self.now = 0.0
        self.stats = SimStats()
        self.nodes: list[Membership] = []
        self.running: list[bool] = []
        self.false_dead: set[bytes] = set()  # running members that somebody declared dead
        self._rng = random.Random(seed)
        self._index: dict[bytes, int] = {}
        self._heap: list[tuple[float, int, int, int, bytes, Message | None]] = []
        self._seq = 0
        self._wake_at: list[float] = []
        for i in range(n):
            self._new_member(f"node-{i}")
        if converged:
            records = [m.me for m in self.nodes]
            for node in self.nodes:
                node.bootstrap(records, self.now)
        for i in range(n):
            self._schedule_wake(i)

    # ----------------------------------------------------------------- control

    @property
    def round_length(self) -> float:
        """Simulated seconds per round (the probe interval)."""
        return self.config.probe_interval

    def live(self) -> list[int]:
        """Indexes of the members still running."""
        return [i for i, up in enumerate(self.running) if up]

    def join_all(self, via: int = 0) -> None:
        """Every other running member joins through member ``via`` (the seed), all at the current time."""
        record = self.nodes[via].me
        for i in self.live():
            if i != via:
                self._dispatch(i, self.nodes[i].add_seed(record, self.now))
                self._schedule_wake(i)

    def crash(self, i: int) -> None:
        """Member ``i`` stops at once, without a word (SIGKILL)."""
        self.running[i] = False

    def leave(self, i: int) -> None:
        """Member ``i`` leaves gracefully, then stops."""
        self._dispatch(i, self.nodes[i].leave(self.now))
        self.running[i] = False

    def restart(self, i: int, via: int) -> int:
        """Crash member ``i`` and start it again under a new id, same name, joining through ``via``."""
        self.crash(i)
        j = self._new_member(self.nodes[i].me.name)
        self._dispatch(j, self.nodes[j].add_seed(self.nodes[via].me, self.now))
        self._schedule_wake(j)
        return j

    def run_until(self, t: float) -> None:
        """Process every event up to simulated time ``t``."""
        heap, nodes, running, wake_at = self._heap, self.nodes, self.running, self._wake_at
        pop = heapq.heappop
        while heap and heap[0][0] <= t:
            when, _, kind, i, sender, msg = pop(heap)
            if not running[i]:
                continue
            self.now = when
            node = nodes[i]
            if kind == _DELIVER:
                assert msg is not None
                out = node.receive(sender, msg, when)
            else:
                if when != wake_at[i]:
                    continue  # superseded by an earlier wake-up
                wake_at[i] = math.inf
                out = node.tick(when)
            if out:
                self._dispatch(i, out)
            self._observe(node)
            deadline = max(node.next_deadline(), when)
            if deadline < wake_at[i]:
                wake_at[i] = deadline
                self._push(deadline, _WAKE, i, b"", None)
        self.now = t

    def run_rounds(self, rounds: int, until: Callable[[Simulation], bool] | None = None) -> int | None:
        """Run up to ``rounds`` rounds; with ``until``, stop at the first round end where it holds.

        Returns how many rounds ran when ``until`` first held (0 if it held at the start), else None.
        """
        start = self.now
        if until is not None and until(self):
            return 0
        for r in range(1, rounds + 1):
            self.run_until(start + r * self.round_length)
            if until is not None and until(self):
                return r
        return None

    # ------------------------------------------------------------------ checks

    def knows_all(self) -> bool:
        """Every running member holds every other running member as alive."""
        live = self.live()
        want = len(live) - 1
        nodes = self.nodes
        if any(nodes[i].alive_count < want for i in live):
            return False
        ids = [nodes[i].node_id for i in live]
        return all(nodes[i].state(j) is MemberState.ALIVE for i in live for j in ids if j != nodes[i].node_id)

    def dead_everywhere(self, i: int) -> bool:
        """Every running member holds member ``i`` as dead (or left)."""
        target = self.nodes[i].node_id
        gone = (MemberState.DEAD, MemberState.LEFT)
        return all(self.nodes[j].state(target) in gone for j in self.live() if j != i)

    # -------------------------------------------------------------- internals

    def _new_member(self, name: str) -> int:
        i = len(self.nodes)
        node_id = self._rng.randbytes(16)
        node = Membership(
            node_id,
            name=name,
            host="sim",
            port=i,
            fingerprint="sim",
            config=self.config,
            rng=random.Random(self._rng.getrandbits(64)),
        )
        self.nodes.append(node)
        self.running.append(True)
        self._wake_at.append(math.inf)
        self._index[node_id] = i
        return i

    def _push(self, when: float, kind: int, i: int, sender: bytes, msg: Message | None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, i, sender, msg))

    def _schedule_wake(self, i: int) -> None:
        deadline = max(self.nodes[i].next_deadline(), self.now)
        if deadline < self._wake_at[i]:
            self._wake_at[i] = deadline
            self._push(deadline, _WAKE, i, b"", None)

    def _dispatch(self, src: int, out: Outgoing) -> None:
        stats, rng, index = self.stats, self._rng, self._index
        sender = self.nodes[src].node_id
        lo, hi = self.latency
        span = hi - lo
        for dest, msg in out:
            stats.sent += 1
            stats.updates_sent += len(getattr(msg, "updates", ()))
            if rng.random() < self.loss:
                stats.lost += 1
                continue
            j = index.get(dest)
            if j is not None:
                self._push(self.now + lo + span * rng.random(), _DELIVER, j, sender, msg)

    def _observe(self, node: Membership) -> None:
        events = node.drain_events()
        if not events:
            return
        for event in events:
            kind = event.kind
            if kind is MemberEventKind.DEAD or kind is MemberEventKind.SUSPECTED:
                j = self._index.get(event.member.node_id)
                if j is not None and self.running[j]:
                    if kind is MemberEventKind.DEAD:
                        self.stats.false_dead_verdicts += 1
                        self.false_dead.add(event.member.node_id)
                    else:
                        self.stats.false_suspicions += 1
