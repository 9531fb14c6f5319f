"""SWIM membership, driven by hand on a simulated clock: join, failure, refutation, leave, rejoin, bounds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from ccied_p2p.codec.messages import (
    Ack,
    CacheSummary,
    Gossip,
    InferResponse,
    Leave,
    LoadReport,
    MemberState,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
)
from ccied_p2p.errors import ConfigError, LocalError
from ccied_p2p.gossip import MemberEventKind, Membership, MembershipConfig
from ccied_p2p.gossip.simulation import Simulation

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
Drop = Callable[[bytes, bytes, Message], bool]


def make(name: str, seed: int = 0, config: MembershipConfig | None = None) -> Membership:
    return Membership(
        name.encode().ljust(16, b"\0"),
        name=name,
        host="127.0.0.1",
        port=7000,
        fingerprint="f" * 8,
        config=config,
        rng=seed,
    )


class Net:
    """Instant delivery between members, a shared clock, and an optional drop rule."""

    def __init__(self, members: list[Membership], drop: Drop | None = None) -> None:
        self.by_id = {m.node_id: m for m in members}
        self.down: set[bytes] = set()
        self.drop = drop
        self.log: list[tuple[bytes, bytes, Message]] = []
        self.now = 0.0

    def send(self, src: bytes, out: list[tuple[bytes, Message]]) -> None:
        pending = [(src, dest, msg) for dest, msg in out]
        while pending:
            src, dest, msg = pending.pop(0)
            self.log.append((src, dest, msg))
            if dest in self.down or src in self.down or (self.drop and self.drop(src, dest, msg)):
                continue
            target = self.by_id.get(dest)
            if target is not None:
                pending.extend((dest, d, m) for d, m in target.receive(src, msg, self.now))

    def run(self, until: float, step: float = 0.01) -> None:
        while self.now < until - 1e-9:
            self.now = round(self.now + step, 9)
            for member in self.by_id.values():
                if member.node_id not in self.down:
                    self.send(member.node_id, member.tick(self.now))


def converged(*members: Membership) -> Net:
    for m in members:
        m.bootstrap([o.me for o in members], 0.0)
    return Net(list(members))


def test_join_through_a_seed() -> None:
    a, b = make("a"), make("b")
    net = Net([a, b])
    out = a.add_seed(b.me, 0.0)
    assert [dest for dest, _ in out] == [b.node_id]
    assert isinstance(out[0][1], Gossip)
    net.send(a.node_id, out)
    assert a.state(b.node_id) is ALIVE
    assert b.state(a.node_id) is ALIVE
    assert [e.kind for e in b.drain_events()] == [MemberEventKind.JOINED]
    # b answered the stranger with its table: a learns of c through it
    c = make("c")
    net.by_id[c.node_id] = c
    net.send(c.node_id, c.add_seed(b.me, 0.0))
    net.run(1.0)
    for m in (a, b, c):
        assert m.alive_count == 2


def test_crash_suspect_then_dead_within_bounds() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    net = converged(a, b, c)
    net.run(1.0)
    for m in (a, b):
        m.drain_events()
    net.down.add(c.node_id)
    crashed = net.now
    suspected: dict[bytes, float] = {}
    dead: dict[bytes, float] = {}
    while len(dead) < 2 and net.now < crashed + 5:
        net.run(net.now + 0.01)
        for m in (a, b):
            for e in m.drain_events():
                assert e.member.node_id == c.node_id
                target = suspected if e.kind is MemberEventKind.SUSPECTED else dead
                assert e.kind in (MemberEventKind.SUSPECTED, MemberEventKind.DEAD)
                target.setdefault(m.node_id, e.at)
    assert set(dead) == {a.node_id, b.node_id}
    first_suspect = min(suspected.values())
    # two failed probe rounds before suspecting, then the suspicion timeout (0.8 s below 10 members)
    assert first_suspect - crashed >= 2 * a.config.probe_interval - 1e-6
    assert min(dead.values()) - first_suspect >= a.config.suspicion_timeout(3) - 1e-6
    assert max(dead.values()) - crashed < 3.0  # the loopback target, with default timings
    assert a.alive_count == b.alive_count == 1


def test_indirect_probe_saves_a_member_behind_a_bad_link() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)

    def drop(src: bytes, dest: bytes, msg: Message) -> bool:
        return {src, dest} == {a.node_id, c.node_id}  # a and c cannot talk directly

    net = converged(a, b, c)
    net.drop = drop
    net.run(10.0)
    kinds = [type(msg) for src, _, msg in net.log if src == a.node_id]
    assert PingReq in kinds
    relayed = [m for s, d, m in net.log if s == b.node_id and d == a.node_id and isinstance(m, Ack)]
    assert any(m.target == c.node_id for m in relayed)
    assert a.state(c.node_id) is ALIVE
    assert c.state(a.node_id) is ALIVE
    assert not [e for m in (a, b, c) for e in m.drain_events() if e.kind is MemberEventKind.DEAD]


def test_a_live_member_refutes_suspicion_with_a_higher_incarnation() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    converged(a, b, c)
    suspicion = MemberUpdate(**{**_fields(c.me), "state": SUSPECT})
    out = c.receive(a.node_id, Gossip((suspicion,)), 1.0)
    assert c.incarnation == 1
    assert c.awareness == 1  # Lifeguard: being suspected hints that we are the slow one
    assert (a.node_id, Gossip((c.me,))) in out  # straight back to the accuser
    b.receive(a.node_id, Gossip((suspicion,)), 1.0)
    assert b.state(c.node_id) is SUSPECT
    b.receive(c.node_id, Gossip((c.me,)), 1.1)
    assert b.state(c.node_id) is ALIVE
    assert b.get(c.node_id) == c.me
    kinds = [e.kind for e in b.drain_events()]
    assert kinds == [MemberEventKind.SUSPECTED, MemberEventKind.ALIVE]
    # the old suspicion arriving late changes nothing
    b.receive(a.node_id, Gossip((suspicion,)), 1.2)
    assert b.state(c.node_id) is ALIVE


def test_a_member_wrongly_declared_dead_comes_back() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    converged(a, b, c)
    verdict = MemberUpdate(**{**_fields(b.me), "state": DEAD})
    a.receive(c.node_id, Gossip((verdict,)), 0.5)  # c declared b dead
    assert a.state(b.node_id) is DEAD
    out = a.receive(b.node_id, Ping(1), 1.0)  # b still talks: a tells it what it believes
    told = [m for d, m in out if d == b.node_id and isinstance(m, Gossip)]
    assert told
    assert told[0].updates[0].state is DEAD
    answer = b.receive(a.node_id, told[0], 1.0)
    assert b.incarnation == 1
    for dest, msg in answer:
        if dest == a.node_id:
            a.receive(b.node_id, msg, 1.0)
    assert a.state(b.node_id) is ALIVE


def test_a_partition_heals() -> None:
    a, b, c, d = make("a", 1), make("b", 2), make("c", 3), make("d", 4)
    left, right = {a.node_id, b.node_id}, {c.node_id, d.node_id}
    cut = True

    def drop(src: bytes, dest: bytes, msg: Message) -> bool:
        return cut and ({src, dest} & left != set()) and ({src, dest} & right != set())

    net = converged(a, b, c, d)
    net.drop = drop
    net.run(4.0)
    assert a.state(c.node_id) is DEAD
    assert c.state(a.node_id) is DEAD
    assert a.alive_count == c.alive_count == 1
    cut = False
    healed_at = net.now
    while not all(m.alive_count == 3 for m in (a, b, c, d)):
        net.run(net.now + 0.05)
        assert net.now - healed_at < 2 * a.config.sync_interval + 1.0
    assert min(m.incarnation for m in (a, b, c, d)) >= 1  # everyone refuted its death


def test_ping_to_a_suspect_carries_its_suspicion_first() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    converged(a, b, c)
    a.receive(b.node_id, Gossip((MemberUpdate(**{**_fields(c.me), "state": SUSPECT}),)), 0.0)
    pings: list[Ping] = []
    now = 0.0
    while not pings and now < 5:
        now += 0.05
        pings = [m for d, m in a.tick(now) if d == c.node_id and isinstance(m, Ping)]
    assert pings
    assert pings[0].updates[0].node_id == c.node_id
    assert pings[0].updates[0].state is SUSPECT


def test_graceful_leave() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    net = converged(a, b, c)
    net.run(0.5)
    out = a.leave(net.now)
    assert sorted(dest for dest, _ in out) == sorted([b.node_id, c.node_id])
    assert all(isinstance(m, Leave) and m.node_id == a.node_id for _, m in out)
    net.send(a.node_id, out)
    assert b.state(a.node_id) is LEFT
    assert c.state(a.node_id) is LEFT
    assert any(e.kind is MemberEventKind.LEFT for e in b.drain_events())
    assert a.tick(net.now + 1) == []
    assert a.has_left
    assert a.leave(net.now) == []
    # stale "alive" news does not bring a departed member back
    b.receive(c.node_id, Gossip((MemberUpdate(**{**_fields(a.me), "state": ALIVE, "incarnation": 7}),)), 1.0)
    assert b.state(a.node_id) is LEFT
    net.run(2.0)
    assert b.alive_count == c.alive_count == 1


def test_rejoin_with_a_new_id_and_the_same_name() -> None:
    sim = Simulation(5, seed=3, latency=(0.0005, 0.002))
    sim.join_all(0)
    assert sim.run_rounds(20, Simulation.knows_all) is not None
    old_id = sim.nodes[2].node_id
    j = sim.restart(2, via=0)
    new_id = sim.nodes[j].node_id
    assert new_id != old_id
    assert sim.nodes[j].me.name == sim.nodes[2].me.name
    assert sim.run_rounds(30, lambda s: s.knows_all() and s.dead_everywhere(2)) is not None
    for i in sim.live():
        if i != j:
            assert sim.nodes[i].state(old_id) is DEAD
            assert sim.nodes[i].state(new_id) is ALIVE
            found = sim.nodes[i].by_name("node-2")
            assert found is not None
            assert found.node_id == new_id


def test_loss_tolerance_no_false_death_at_5_percent() -> None:
    sim = Simulation(40, seed=5, loss=0.05, converged=True)
    sim.run_rounds(300)
    assert sim.stats.lost > 0
    assert sim.stats.false_dead_verdicts == 0
    assert not sim.false_dead
    assert sim.knows_all()


def test_piggyback_is_bounded() -> None:
    cfg = MembershipConfig(max_piggyback=4, retransmit_mult=2)
    a = make("a", 1, cfg)
    peers = [make(f"p{i}", i + 2, cfg) for i in range(9)]
    net = converged(a, *peers)
    news: list[MemberUpdate] = []
    for p in peers:  # eighteen pieces of news: every peer published its load twice
        for depth in (1, 2):
            p.update_load(LoadReport(version=0, queue_depth=depth, tail_ms=1.0, service_rate=100.0))
            news.append(p.me)
    for i in range(0, len(news), 3):  # piggyback-sized gossips
        a.receive(peers[0].node_id, Gossip(tuple(news[i : i + 3])), 0.0)
    assert a.pending_updates == 9  # one queue entry per member: newer news replaces older
    sent: Counter[tuple[bytes, int]] = Counter()
    net.log.clear()
    net.run(20.0)
    for src, _, msg in net.log:
        updates: tuple[MemberUpdate, ...] = getattr(msg, "updates", ())
        if src != a.node_id or (isinstance(msg, Gossip) and len(updates) > cfg.max_piggyback):
            continue  # another member's message, or an anti-entropy table rather than piggyback
        assert len(updates) <= cfg.max_piggyback
        sent.update((u.node_id, u.load.version) for u in updates if u.load is not None)
    limit = cfg.retransmit_limit(10)
    assert limit == 4
    assert all(sent[(p.node_id, 2)] == limit for p in peers)
    assert not any(version == 1 for _, version in sent)  # superseded before it was sent
    assert a.pending_updates == 0
    assert not [e for m in (a, *peers) for e in m.drain_events() if e.kind is MemberEventKind.SUSPECTED]


def test_newer_load_and_cache_win() -> None:
    a, b = make("a", 1), make("b", 2)
    converged(a, b)
    b.update_load(LoadReport(version=0, queue_depth=3, tail_ms=2.0, service_rate=400.0))
    first = b.me
    b.update_load(LoadReport(version=0, queue_depth=9, tail_ms=2.5, service_rate=350.0))
    b.update_cache(CacheSummary(version=0, entries=10, digest=b"d", hit_rate=0.5))
    second = b.me
    assert second.load is not None
    assert second.load.version == 2
    assert second.cache is not None
    a.receive(b.node_id, Gossip((second,)), 1.0)
    a.receive(b.node_id, Gossip((first,)), 1.1)  # older load report arrives late
    held = a.get(b.node_id)
    assert held is not None
    assert held.load == second.load
    assert held.cache == second.cache
    assert [e.kind for e in a.drain_events()] == [MemberEventKind.UPDATED]


def test_tombstones_expire() -> None:
    cfg = MembershipConfig(tombstone_ttl=1.0)
    a, b, c = make("a", 1, cfg), make("b", 2, cfg), make("c", 3, cfg)
    net = converged(a, b, c)
    net.down.add(c.node_id)
    while a.state(c.node_id) is not DEAD:
        net.run(net.now + 0.05)
        assert net.now < 3.0
    net.run(net.now + cfg.sync_interval + cfg.tombstone_ttl + 0.1)
    assert a.state(c.node_id) is None
    assert c.node_id not in {m.node_id for m in a.members()}


def test_same_seed_same_run() -> None:
    runs = []
    for _ in range(2):
        sim = Simulation(30, seed=11, loss=0.1)
        sim.join_all(0)
        sim.run_rounds(40)
        runs.append((sim.stats, [n.incarnation for n in sim.nodes]))
    assert runs[0] == runs[1]


def test_misuse_is_a_local_error() -> None:
    a = make("a")
    with pytest.raises(LocalError):
        a.receive(b"x" * 16, InferResponse(1, (1,), (0.5,)), 0.0)
    with pytest.raises(ConfigError):
        MembershipConfig(probe_timeout=0.3, probe_interval=0.2)
    with pytest.raises(ConfigError):
        MembershipConfig(fanout=0)
    assert a.add_seed(a.me, 0.0) == []


def test_quick_config_detects_in_well_under_a_second() -> None:
    cfg = MembershipConfig.quick()
    a, b, c = make("a", 1, cfg), make("b", 2, cfg), make("c", 3, cfg)
    net = converged(a, b, c)
    net.run(0.3, step=0.005)
    net.down.add(b.node_id)
    start = net.now
    while not (a.state(b.node_id) is DEAD and c.state(b.node_id) is DEAD):
        net.run(net.now + 0.005, step=0.005)
        assert net.now - start < 0.6


def _fields(m: MemberUpdate) -> dict[str, Any]:
    return {name: getattr(m, name) for name in MemberUpdate.__dataclass_fields__}
