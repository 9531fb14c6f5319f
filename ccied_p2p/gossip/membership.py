"""SWIM membership with suspicion (Das, Gupta, Motivala 2002), plus Lifeguard refinements, sans I/O.

A :class:`Membership` is fed messages with :meth:`Membership.receive` and woken with :meth:`Membership.tick`;
both return the messages to send as ``(destination node id, message)`` pairs. Time is an argument and
randomness comes from the generator given at construction, so runs are reproducible.

Protocol, per member, every ``probe_interval`` (one *round*):

- **Probe** the next member of a shuffled round-robin order with a :class:`Ping`; no :class:`Ack` within
  ``probe_timeout`` -> ask ``indirect_checks`` random members to probe it (:class:`PingReq`); still nothing at
  the end of the round -> probe it again next round; ``probe_failures`` (2) failed rounds in a row -> mark it
  ``suspect``, tell it (so it can refute) and tell the others.
- **Suspicion.** Every member that holds a suspicion runs its own timer of ``suspicion_timeout(n)`` =
  ``suspicion_mult * max(1, log10 n) * probe_interval``; at expiry the suspect is ``dead``. A live member that
  hears it is suspected (or dead) refutes with a higher incarnation, which beats the suspicion everywhere.
- **Dissemination.** Every change is queued and piggybacked on pings, acks and a :class:`Gossip` sent to
  ``fanout`` random members each round, newest and least-sent first, at most ``max_piggyback`` per message,
  each one at most ``retransmit_mult * ceil(log10(n + 1))`` times.
- **Anti-entropy** (push-pull). Every ``sync_period(n)`` a member sends its whole table to one random member,
  which answers with its own; a member that hears from a stranger answers with its table: that is the join.
  While a member keeps learning of new members (a forming cluster) it syncs every round.
- **Reconnect** (as Serf does): every sync period a member also writes to one member it holds dead, so a
  member cut off by a partition learns of its verdict and refutes once the partition heals. Messages to
  dead members are reconnection attempts: the runtime sends them if it can reach the address, else drops.
- **Lifeguard** (Dadgar et al. 2018): a member told it is suspected raises its local-health score, which
  stretches its own probe interval and timeout (it is probably the slow one); successful probes lower it. A
  ping to a suspect carries the suspicion (the "buddy system") so it can refute at once.

Default timings (:class:`MembershipConfig`) aim at a 3-5 node loopback cluster where a SIGKILLed node must be
declared dead by every node within 3 s: a probe every 0.2 s with a 0.1 s direct timeout (loopback round trips
are ~0.2 ms, so 0.1 s only fails when a peer's event loop is stalled), two failed rounds (0.4 s) before a
suspicion, suspicion 0.8 s below 10 members. Detection: first probe of the dead node after 0-0.4 s, suspect
0.4 s later, dead 0.8 s after that, and the verdict reaches everyone within a round (every member also runs
its own timer). Simulated with these defaults on loopback-like latency (0.2-2 ms), 300 crashes each at
n = 3, 4, 5: median 1.3-1.4 s, worst 1.8-2.0 s, which leaves ~1 s for event-loop stalls. Five indirect
helpers (SWIM uses 3) cost nothing unless a direct ping fails and make a lossy link far less likely to look
dead. The suspicion grows with log10 n so that large clusters (and lossy links) have time to refute: 2.4 s
(12 rounds) at n = 1000.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np

from ccied_p2p.codec.messages import (
    Ack,
    CacheSummary,
    Gossip,
    Leave,
    LoadReport,
    MemberState,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
)
from ccied_p2p.errors import LocalError
from ccied_p2p.gossip.config import MemberEvent, MemberEventKind, MembershipConfig, Outgoing
from ccied_p2p.gossip.dissemination import UpdateQueue, newer_payload, with_best_payload
from ccied_p2p.gossip.states import Event, merge, transition

__all__ = [
    "MemberEvent",
    "MemberEventKind",
    "Membership",
    "MembershipConfig",
    "Outgoing",
]

ALIVE: Final = MemberState.ALIVE
SUSPECT: Final = MemberState.SUSPECT
DEAD: Final = MemberState.DEAD
LEFT: Final = MemberState.LEFT
_INF: Final = math.inf


_MAX_INCARNATION: Final = (1 << 64) - 1  # incarnations travel as u64


@dataclass(slots=True)
class _Probe:
    target: bytes
    seq: int
    indirect_at: float
    end: float
    indirect_sent: bool = False
    acked: bool = False


@dataclass(slots=True)
class _Relay:
    requester: bytes
    seq: int
    target: bytes
    expires: float


_PEER_STATES: Final = frozenset({ALIVE, SUSPECT})
_EVENT_FOR: Final[dict[MemberState, MemberEventKind]] = {
    ALIVE: MemberEventKind.ALIVE,
    SUSPECT: MemberEventKind.SUSPECTED,
    DEAD: MemberEventKind.DEAD,
    LEFT: MemberEventKind.LEFT,
}


def _after(previous: float, interval: float, now: float) -> float:
    """The next periodic deadline: on the old grid, but never at or before ``now``."""
    nxt = previous + interval
    return nxt if nxt > now else now + interval


def _make_rng(rng: random.Random | np.random.Generator | int) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(0, 2**63)))
    return random.Random(rng)


class Membership:
    """One member's view of the cluster: the SWIM state machine, fed with messages and ticks.

    The runtime's loop, in short::

        send(m.add_seed(seed_record, now))           # per seed address or mDNS find
        send(m.receive(peer_id, msg, now))           # per Ping/PingReq/Ack/Gossip/Leave from a peer
        send(m.tick(now))                            # at (or after) m.next_deadline()
        for event in m.drain_events(): ...           # joined/suspected/alive/dead/left/updated
        send(m.leave(now))                           # on shutdown

    ``rng``: a :class:`random.Random`, a numpy Generator (a seed is drawn from it) or an int seed.
    """

    def __init__(
        self,
        self_id: bytes,
        *,
        name: str = "",
        host: str = "",
        port: int = 0,
        fingerprint: str = "",
        config: MembershipConfig | None = None,
        rng: random.Random | np.random.Generator | int = 0,
    ) -> None:
        self.config = config if config is not None else MembershipConfig()
        self._id = self_id
        self._rng = _make_rng(rng)
        self._me = MemberUpdate(self_id, name, host, port, fingerprint, ALIVE, 0)
        self._members: dict[bytes, MemberUpdate] = {}
        self._peers: list[bytes] = []  # alive or suspect: probe and gossip targets
        self._peer_pos: dict[bytes, int] = {}
        self._alive = 0
        self._since: dict[bytes, float] = {}  # dead/left members: when (for tombstone expiry)
        self._suspect_until: dict[bytes, float] = {}
        self._timers: list[tuple[float, bytes]] = []
        self._queue = UpdateQueue()
        self._order: list[bytes] = []
        self._order_pos = 0
        self._probe: _Probe | None = None
        self._failures: dict[bytes, int] = {}  # consecutive failed probe rounds
        self._reprobe: bytes | None = None
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._awareness = 0
        self._synced: dict[bytes, float] = {}  # stranger pushes: last time, to rate-limit them
        self._events: deque[MemberEvent] = deque(maxlen=self.config.max_events)
        self._started = False
        self._left = False
        self._next_probe = _INF
        self._next_gossip = _INF
        self._next_sync = _INF
        self._limit_n, self._limit = 0, 1
        self._grew = -_INF  # when a member was last added (anti-entropy speeds up while it grows)
        self._load_version = 0
        self._cache_version = 0

    # ------------------------------------------------------------------ views

    @property
    def node_id(self) -> bytes:
        """This member's id."""
        return self._id

    @property
    def me(self) -> MemberUpdate:
        """This member's own record, as it gossips it."""
        return self._me

    @property
    def incarnation(self) -> int:
        """This member's incarnation (raised to refute suspicions)."""
        return self._me.incarnation

    @property
    def awareness(self) -> int:
        """Lifeguard local-health score: 0 is healthy; timings stretch by ``1 + awareness``."""
        return self._awareness

    @property
    def has_left(self) -> bool:
        """True once :meth:`leave` was called."""
        return self._left

    @property
    def alive_count(self) -> int:
        """How many other members are alive in this view."""
        return self._alive

    @property
    def peer_count(self) -> int:
        """How many other members are alive or suspect (the probe and gossip targets)."""
        return len(self._peers)

    @property
    def pending_updates(self) -> int:
        """How many updates wait in the piggyback queue."""
        return len(self._queue)

    def get(self, node_id: bytes) -> MemberUpdate | None:
        """The record held for ``node_id`` (this member's own for its id), or None."""
        return self._me if node_id == self._id else self._members.get(node_id)

    def state(self, node_id: bytes) -> MemberState | None:
        """The state held for ``node_id``, or None if unknown."""
        member = self.get(node_id)
        return None if member is None else member.state

    def members(self) -> list[MemberUpdate]:
        """Every other member held, tombstones (dead, left) included."""
        return list(self._members.values())

    def alive_members(self) -> list[MemberUpdate]:
        """Other members currently alive (suspects excluded)."""
        return [m for m in self._members.values() if m.state is ALIVE]

    def by_name(self, name: str) -> MemberUpdate | None:
        """The live member called ``name`` (a restarted node has a new id; its old id stays dead)."""
        found = [m for m in self._members.values() if m.name == name and m.state in _PEER_STATES]
        return max(found, key=lambda m: m.state is ALIVE, default=None)

    def drain_events(self) -> list[MemberEvent]:
        """Every event since the last call (at most ``config.max_events``; older ones are dropped)."""
        if not self._events:
            return []
        events = list(self._events)
        self._events.clear()
        return events

    def next_deadline(self) -> float:
        """When :meth:`tick` next has work to do (``-inf`` before the first call, ``inf`` after leaving)."""
        if self._left:
            return _INF
        if not self._started:
            return -_INF
        when = min(self._next_probe, self._next_gossip, self._next_sync)
        probe = self._probe
        if probe is not None and not probe.acked:
            when = min(when, probe.end if probe.indirect_sent else probe.indirect_at)
        if self._timers:
            when = min(when, self._timers[0][0])
        return when

    # ------------------------------------------------------------ local input

    def add_seed(self, member: MemberUpdate, now: float) -> Outgoing:
        """Join through ``member`` (a seed or an mDNS find): hold it as alive and push our table to it."""
        self._start(now)
        if member.node_id == self._id:
            return []
        self._apply((member,), now, rumor=False)
        self._synced[member.node_id] = now
        self._queue.push(self._id)  # announce ourselves on whatever we send next
        return self._full_state_to(member.node_id)

    def bootstrap(self, members: Iterable[MemberUpdate], now: float) -> None:
        """Hold ``members`` without announcing anything (for building a converged view in simulations)."""
        self._start(now)
        self._apply(tuple(members), now, rumor=False)
        self._events.clear()
        self._grew = -_INF
        self._next_sync = now + self._rng.random() * self.config.sync_period(len(self._peers) + 1)

    def update_load(self, load: LoadReport) -> None:
        """Publish this member's load (its version is assigned here, so newer always wins)."""
        self._load_version += 1
        self._set_me(replace(self._me, load=replace(load, version=self._load_version)))

    def update_cache(self, summary: CacheSummary) -> None:
        """Publish this member's cache summary (version assigned here)."""
        self._cache_version += 1
        self._set_me(replace(self._me, cache=replace(summary, version=self._cache_version)))

    def leave(self, now: float) -> Outgoing:
        """Leave on purpose: every peer is told at once; afterwards this member sends nothing."""
        if self._left:
            return []
        self._left = True
        self._me = replace(self._me, state=LEFT)
        msg = Leave(self._id, self._me.incarnation)
        return [(peer, msg) for peer in self._peers]

    # ----------------------------------------------------------------- ticking

    def tick(self, now: float) -> Outgoing:
        """Run the timers due at ``now``: probes, suspicion expiry, gossip, anti-entropy."""
        if self._left:
            return []
        self._start(now)
        out: Outgoing = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, node_id = heapq.heappop(timers)
            if self._suspect_until.get(node_id) == deadline:
                self._local_event(node_id, Event.SUSPECT_TIMEOUT, now)
        probe = self._probe
        if probe is not None and not probe.acked:
            if not probe.indirect_sent and now >= probe.indirect_at:
                probe.indirect_sent = True
                self._send_indirect(probe, out)
            if now >= probe.end:
                self._probe = None
                self._probe_failed(probe.target, now, out)
        cfg = self.config
        if now >= self._next_probe:
            scale = 1 + self._awareness
            self._next_probe = _after(self._next_probe, cfg.probe_interval * scale, now)
            self._start_probe(now, scale, out)
        if now >= self._next_gossip:
            self._next_gossip = _after(self._next_gossip, cfg.gossip_interval, now)
            self._gossip(out)
            if cfg.sync_boost and now - self._grew < cfg.sync_interval:
                self._next_sync = now  # a forming cluster: anti-entropy every round
        if now >= self._next_sync:
            n = len(self._peers) + 1
            self._next_sync = _after(self._next_sync, cfg.sync_period(n), now)
            self._expire(now)
            if self._peers:
                target = self._peers[self._rng.randrange(n - 1)]
                self._synced[target] = now
                out.extend(self._full_state_to(target))
            self._reconnect(out)
        return out

    def _reconnect(self, out: Outgoing) -> None:
        """Tell one member held dead what we hold (Serf's reconnect): after a partition heals, it refutes."""
        dead = [node_id for node_id in self._since if self._members[node_id].state is DEAD]
        if dead:
            node_id = dead[self._rng.randrange(len(dead))]
            out.append((node_id, Gossip((self._members[node_id], self._me))))

    # --------------------------------------------------------------- receiving

    def receive(self, sender: bytes, msg: Message, now: float) -> Outgoing:
        """Handle one membership message from ``sender`` (an authenticated peer); answer with messages."""
        if self._left:
            return []
        self._start(now)
        known = self._members.get(sender)
        incarnation = self._me.incarnation
        table = False
        out: Outgoing = []
        if isinstance(msg, Ping):
            self._apply(msg.updates, now, rumor=True)
            out.append((sender, Ack(msg.seq, self._id, self._piggyback())))
        elif isinstance(msg, Ack):
            self._apply(msg.updates, now, rumor=True)
            self._on_ack(sender, msg, out)
        elif isinstance(msg, PingReq):
            self._apply(msg.updates, now, rumor=True)
            self._on_ping_req(sender, msg, now, out)
        elif isinstance(msg, Gossip):
            table = len(msg.updates) > self.config.max_piggyback
            self._apply(msg.updates, now, rumor=not table)
        elif isinstance(msg, Leave):
            self._on_leave(msg, now)
        else:
            raise LocalError(f"Membership.receive got a {type(msg).__name__}, not a membership message")
        if sender == self._id:
            return out
        if self._me.incarnation != incarnation:
            out.append((sender, Gossip((self._me,))))  # refute straight back to whoever told us
        current = self._members.get(sender)
        join = known is None or table  # a stranger, or push-pull: a table is answered with ours
        if not join and (current is None or current.state in _PEER_STATES):
            return out
        if now - self._synced.get(sender, -_INF) < self.config.sync_interval:
            return out
        self._synced[sender] = now
        if join:
            out.extend(self._full_state_to(sender))
        elif current is not None and current.state is DEAD:
            out.append((sender, Gossip((current,))))  # it speaks, yet we hold it dead: let it refute
        return out

    def _on_ack(self, sender: bytes, msg: Ack, out: Outgoing) -> None:
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            if relay.target == msg.target:
                out.append((relay.requester, Ack(relay.seq, relay.target, self._piggyback())))
            return
        probe = self._probe
        if probe is not None and not probe.acked and msg.seq == probe.seq and msg.target == probe.target:
            probe.acked = True
            self._probe = None
            self._failures.pop(probe.target, None)
            if self._awareness:
                self._awareness -= 1

    def _on_ping_req(self, sender: bytes, msg: PingReq, now: float, out: Outgoing) -> None:
        if msg.target == self._id:
            out.append((sender, Ack(msg.seq, self._id, self._piggyback())))
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(sender, msg.seq, msg.target, now + self.config.probe_interval)
        out.append((msg.target, Ping(seq, self._piggyback_for(msg.target))))

    def _on_leave(self, msg: Leave, now: float) -> None:
        if msg.node_id == self._id:
            self._refute(msg.incarnation)
            return
        cur = self._members.get(msg.node_id)
        if cur is not None:
            self._apply((replace(cur, state=LEFT, incarnation=msg.incarnation),), now, rumor=True)

    # ------------------------------------------------------------------ merging

    def _apply(self, updates: Sequence[MemberUpdate], now: float, *, rumor: bool) -> None:
        members = self._members
        me = self._id
        for upd in updates:
            node_id = upd.node_id
            cur = members.get(node_id)
            if cur is upd:
                continue
            if node_id == me:
                self._about_me(upd)
                continue
            if cur is None:
                self._change(node_id, None, upd, now, rumor)
                continue
            if cur.incarnation == upd.incarnation and cur.state is upd.state:
                if newer_payload(cur, upd):
                    self._change(node_id, cur, with_best_payload(upd, cur), now, rumor)
                continue
            merged = merge((cur.state, cur.incarnation), (upd.state, upd.incarnation))
            if merged is not None:
                self._change(node_id, cur, with_best_payload(upd, cur), now, rumor)
            elif newer_payload(cur, upd):
                self._change(node_id, cur, with_best_payload(cur, upd), now, rumor)

    def _about_me(self, upd: MemberUpdate) -> None:
        if upd.state is ALIVE:
            if upd.incarnation > self._me.incarnation:
                self._refute(upd.incarnation)
        elif upd.incarnation >= self._me.incarnation:
            self._refute(upd.incarnation)
            self._awareness = min(self._awareness + 1, self.config.max_awareness)

    def _refute(self, incarnation: int) -> None:
        if incarnation >= _MAX_INCARNATION:
            return  # a claim that cannot be outbid on the wire (u64) is ignored, not obeyed
        if incarnation >= self._me.incarnation:
            self._set_me(replace(self._me, incarnation=incarnation + 1))

    def _set_me(self, record: MemberUpdate) -> None:
        self._me = record
        self._queue.push(self._id)

    def _local_event(self, node_id: bytes, event: Event, now: float) -> MemberUpdate | None:
        """Apply a local event; the new record if it changed anything."""
        cur = self._members.get(node_id)
        if cur is None:
            return None
        new_state = transition(cur.state, event)
        if new_state is None or new_state is cur.state:
            return None
        record = replace(cur, state=new_state)
        self._change(node_id, cur, record, now, rumor=True)
        return record

    def _change(
        self, node_id: bytes, old: MemberUpdate | None, new: MemberUpdate, now: float, rumor: bool
    ) -> None:
        """Store ``new`` for ``node_id`` and keep every index, timer and event in step."""
        self._members[node_id] = new
        old_state = None if old is None else old.state
        state = new.state
        if state is not old_state:
            was_peer = old_state is ALIVE or old_state is SUSPECT
            is_peer = state is ALIVE or state is SUSPECT
            if is_peer and not was_peer:
                self._add_peer(node_id)
            elif was_peer and not is_peer:
                self._remove_peer(node_id)
            self._alive += (state is ALIVE) - (old_state is ALIVE)
            if is_peer:
                self._since.pop(node_id, None)
            else:
                self._since[node_id] = now
            if old is None:
                if is_peer:
                    self._grew = now
                    self._events.append(MemberEvent(MemberEventKind.JOINED, new, now))
            else:
                self._events.append(MemberEvent(_EVENT_FOR[state], new, now))
        elif old is not None:
            self._events.append(MemberEvent(MemberEventKind.UPDATED, new, now))
        if state is SUSPECT:
            if old_state is not SUSPECT or old is None or old.incarnation != new.incarnation:
                deadline = now + self.config.suspicion_timeout(len(self._peers) + 1)
                self._suspect_until[node_id] = deadline
                heapq.heappush(self._timers, (deadline, node_id))
        elif old_state is SUSPECT:
            self._suspect_until.pop(node_id, None)
        if rumor:
            self._queue.push(node_id)

    def _add_peer(self, node_id: bytes) -> None:
        self._peer_pos[node_id] = len(self._peers)
        self._peers.append(node_id)
        # SWIM: a new member goes to a random place in the rest of this probe cycle
        order = self._order
        order.insert(self._rng.randint(self._order_pos, len(order)), node_id)

    def _remove_peer(self, node_id: bytes) -> None:
        pos = self._peer_pos.pop(node_id)
        last = self._peers.pop()
        if last != node_id:
            self._peers[pos] = last
            self._peer_pos[last] = pos

    def _expire(self, now: float) -> None:
        """Forget tombstones older than ``tombstone_ttl`` and stale relays."""
        ttl = self.config.tombstone_ttl
        for node_id, since in list(self._since.items()):
            if now - since >= ttl:
                del self._since[node_id]
                del self._members[node_id]
                self._synced.pop(node_id, None)
        for seq, relay in list(self._relays.items()):
            if relay.expires <= now:
                del self._relays[seq]
        for node_id in [n for n in self._failures if n not in self._peer_pos]:
            del self._failures[node_id]
        horizon = now - self.config.sync_interval
        for node_id, when in list(self._synced.items()):
            if when < horizon:
                del self._synced[node_id]

    # ----------------------------------------------------------------- sending

    def _start(self, now: float) -> None:
        if self._started:
            return
        self._started = True
        cfg = self.config
        # random phases, so members that start together do not probe in lockstep
        self._next_probe = now + self._rng.random() * cfg.probe_interval
        self._next_gossip = now + self._rng.random() * cfg.gossip_interval
        self._next_sync = now + self._rng.random() * cfg.sync_interval

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _next_target(self) -> bytes | None:
        order = self._order
        while True:
            if self._order_pos >= len(order):
                order = self._order = list(self._peers)
                self._rng.shuffle(order)
                self._order_pos = 0
                if not order:
                    return None
            node_id = order[self._order_pos]
            self._order_pos += 1
            if node_id in self._peer_pos:
                return node_id

    def _start_probe(self, now: float, scale: int, out: Outgoing) -> None:
        pending = self._probe
        if pending is not None:  # the tick came a little early for its end: it had its round
            self._probe = None
            self._probe_failed(pending.target, now, out)
        target = self._reprobe if self._reprobe in self._peer_pos else self._next_target()
        self._reprobe = None
        if target is None:
            return
        cfg = self.config
        seq = self._next_seq()
        self._probe = _Probe(target, seq, now + cfg.probe_timeout * scale, now + cfg.probe_interval * scale)
        out.append((target, Ping(seq, self._piggyback_for(target))))

    def _probe_failed(self, target: bytes, now: float, out: Outgoing) -> None:
        failures = self._failures.get(target, 0) + 1
        if failures < self.config.probe_failures:
            self._failures[target] = failures
            self._reprobe = target  # probe it again next round before suspecting it
            return
        self._failures.pop(target, None)
        record = self._local_event(target, Event.PROBE_TIMEOUT, now)
        if record is not None:
            out.append((target, Gossip((record,))))  # tell the suspect at once, so it can refute

    def _send_indirect(self, probe: _Probe, out: Outgoing) -> None:
        helpers = self._sample(self.config.indirect_checks, exclude=probe.target)
        if not helpers:
            return
        msg = PingReq(probe.seq, probe.target, self._piggyback())
        out.extend((helper, msg) for helper in helpers)

    def _gossip(self, out: Outgoing) -> None:
        if not self._queue:
            return
        for target in self._sample(self.config.fanout):
            updates = self._piggyback()
            if not updates:
                return
            out.append((target, Gossip(updates)))

    def _sample(self, k: int, exclude: bytes | None = None) -> list[bytes]:
        peers = self._peers
        if exclude is None:
            return self._rng.sample(peers, min(k, len(peers)))
        picked = self._rng.sample(peers, min(k + 1, len(peers)))
        return [p for p in picked if p != exclude][:k]

    def _piggyback(self) -> tuple[MemberUpdate, ...]:
        queue = self._queue
        if not queue.sent:
            return ()
        n = len(self._peers) + 1
        if n != self._limit_n:
            self._limit_n, self._limit = n, self.config.retransmit_limit(n)
        limit = self._limit
        members, me, my_id = self._members, self._me, self._id
        out: list[MemberUpdate] = []
        for node_id in queue.take(self.config.max_piggyback, limit):
            record = me if node_id == my_id else members.get(node_id)
            if record is not None:
                out.append(record)
        return tuple(out)

    def _piggyback_for(self, target: bytes) -> tuple[MemberUpdate, ...]:
        """Piggyback for a ping to ``target``; a suspect is told of its suspicion first (Lifeguard)."""
        record = self._members.get(target)
        if record is not None and record.state is SUSPECT:
            return (record, *(u for u in self._piggyback() if u.node_id != target))
        return self._piggyback()

    def _full_state_to(self, dest: bytes) -> Outgoing:
        records = [self._me, *self._members.values()]
        chunks = -(-len(records) // self.config.max_sync_updates)
        size = -(-len(records) // chunks)  # even chunks, so none looks like a small piggyback
        return [(dest, Gossip(tuple(records[i : i + size]))) for i in range(0, len(records), size)]
