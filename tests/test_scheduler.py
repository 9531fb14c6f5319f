"""The scheduler policy (properties with hypothesis) and the estimators the runtime feeds it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccied_p2p.codec.messages import LoadReport, MemberState, MemberUpdate
from ccied_p2p.errors import ConfigError, LocalError
from ccied_p2p.scheduler import (
    BandwidthEstimator,
    Candidate,
    Ewma,
    LinkEstimator,
    RateEstimator,
    Request,
    RttEstimator,
    SchedulerPolicy,
    candidate_from_member,
    choose,
    eligible,
    estimate,
)

FP = "ab" * 8
NOW = 100.0


def local(**kw: object) -> Candidate:
    fields: dict[str, object] = {"node_id": b"me", "fingerprint": FP, "tail_s": 0.003, "local": True}
    fields.update(kw)
    return Candidate(**fields)  # type: ignore[arg-type]


peer_ids = st.binary(min_size=2, max_size=4)
peers = st.builds(
    Candidate,
    node_id=peer_ids,
    fingerprint=st.sampled_from([FP, FP, FP, "cd" * 8]),
    tail_s=st.floats(0.0005, 0.05),
    state=st.sampled_from([MemberState.ALIVE] * 3 + list(MemberState)),
    queue_depth=st.integers(0, 50),
    inflight=st.integers(0, 8),
    service_rate=st.floats(0.0, 2000.0),
    bandwidth=st.floats(1e5, 1e9),
    rtt_s=st.floats(0.0, 0.05),
    load_at=st.floats(90.0, 100.0),
    backoff_until=st.sampled_from([-math.inf, 99.0, 101.0]),
)
requests = st.builds(
    Request,
    fingerprint=st.just(FP),
    payload_bytes=st.integers(0, 200_000),
    batch=st.integers(1, 32),
    exclude=st.frozensets(peer_ids, max_size=3),
)
locals_ = st.builds(
    local, tail_s=st.floats(0.0005, 0.05), queue_depth=st.integers(0, 50), service_rate=st.floats(0.0, 2000.0)
)
policies = st.builds(SchedulerPolicy, max_peers=st.integers(0, 5), margin_s=st.floats(0.0, 0.01))


@given(requests, locals_, st.lists(peers, max_size=8, unique_by=lambda c: c.node_id), policies)
def test_choice_properties(
    request: Request, me: Candidate, others: list[Candidate], policy: SchedulerPolicy
) -> None:
    order = choose(request, [*others, me], NOW, policy)
    chosen = [e.candidate for e in order]
    # local is always there, and always last: a request never fails while this node can compute
    assert chosen[-1] is me
    assert sum(c.local for c in chosen) == 1
    # peers are distinct, compatible, alive, not excluded, not backing off
    head = chosen[:-1]
    assert len({c.node_id for c in head}) == len(head) <= policy.max_peers
    for c in head:
        assert c in others
        assert c.fingerprint == request.fingerprint
        assert c.state is MemberState.ALIVE
        assert c.node_id not in request.exclude
        assert c.backoff_until <= NOW
    # fastest first, and every peer tried is expected to beat the local tail
    seconds = [e.seconds for e in order]
    assert seconds[:-1] == sorted(seconds[:-1])
    assert all(s + policy.margin_s < seconds[-1] for s in seconds[:-1])
    # nothing faster was left out: the first choice is the best eligible estimate overall
    ok = [estimate(request, c, NOW, policy).seconds for c in others if eligible(request, c, NOW)]
    better = sorted(s for s in ok if s + policy.margin_s < seconds[-1])
    assert seconds[:-1] == better[: policy.max_peers]
    if policy.margin_s == 0 and policy.max_peers > 0:
        assert seconds[0] == min([*ok, seconds[-1]])


@given(requests, locals_, st.lists(peers, max_size=6, unique_by=lambda c: c.node_id))
def test_choice_is_deterministic_and_ignores_candidate_order(
    request: Request, me: Candidate, others: list[Candidate]
) -> None:
    a = choose(request, [me, *others], NOW)
    b = choose(request, [*reversed(others), me], NOW)
    assert [e.candidate.node_id for e in a] == [e.candidate.node_id for e in b]


def test_a_fast_idle_peer_beats_a_busy_local_tail() -> None:
    me = local(tail_s=0.003, queue_depth=10, service_rate=300.0)  # 33 ms of queue
    fast = Candidate(b"p1", FP, tail_s=0.002, bandwidth=100e6, rtt_s=0.0003, load_at=NOW)
    slow_link = Candidate(b"p2", FP, tail_s=0.002, bandwidth=1e5, rtt_s=0.02, load_at=NOW)
    other_model = Candidate(b"p3", "ff" * 8, tail_s=0.0001, load_at=NOW)
    dead = Candidate(b"p4", FP, tail_s=0.0001, state=MemberState.DEAD, load_at=NOW)
    request = Request(FP, payload_bytes=9000)
    order = [e.candidate.node_id for e in choose(request, [me, fast, slow_link, other_model, dead], NOW)]
    assert order == [b"p1", b"me"]
    # after p1 failed, the retry goes local (p2 is slower than local here)
    retry = Request(FP, payload_bytes=9000, exclude=frozenset({b"p1"}))
    assert [e.candidate.node_id for e in choose(retry, [me, fast, slow_link], NOW)] == [b"me"]


def test_estimate_parts() -> None:
    peer = Candidate(
        b"p", FP, tail_s=0.002, queue_depth=4, inflight=2, service_rate=200.0, bandwidth=1e6, rtt_s=0.001
    )
    e = estimate(Request(FP, payload_bytes=9936, batch=3, response_bytes=64), peer, NOW)
    assert e.queue_s == pytest.approx(6 / 200)
    assert e.compute_s == pytest.approx(0.006)
    assert e.transfer_s == pytest.approx(10_000 / 1e6)
    assert e.rtt_s == pytest.approx(0.001)
    assert e.seconds == pytest.approx(0.047)
    # a load report older than stale_after is not trusted: it costs stale_penalty_s
    stale = Candidate(**{**_fields(peer), "load_at": NOW - 5.0})
    late = estimate(Request(FP, payload_bytes=9936, batch=3), stale, NOW)
    assert late.queue_s == pytest.approx(0.03 + SchedulerPolicy().stale_penalty_s)
    assert late.seconds == pytest.approx(0.097)
    # unknown service rate: the queue drains at the tail time per request
    assert estimate(Request(FP, 0), local(tail_s=0.01, queue_depth=3), NOW).queue_s == pytest.approx(0.03)
    # local work moves no bytes
    mine = estimate(Request(FP, payload_bytes=10**6), local(rtt_s=5.0, bandwidth=1.0), NOW)
    assert mine.transfer_s == mine.rtt_s == 0.0


def test_choose_needs_exactly_one_local() -> None:
    peer = Candidate(b"p", FP, tail_s=0.001)
    with pytest.raises(LocalError):
        choose(Request(FP, 100), [peer], NOW)
    with pytest.raises(LocalError):
        choose(Request(FP, 100), [local(), local(node_id=b"me2")], NOW)
    with pytest.raises(ConfigError):
        SchedulerPolicy(max_peers=-1)


def test_ewma() -> None:
    avg = Ewma(0.5)
    assert avg.get(7.0) == 7.0
    assert avg.update(10.0) == 10.0
    assert avg.update(20.0) == 15.0
    assert avg.count == 2
    with pytest.raises(ConfigError):
        Ewma(0.0)


def test_rtt_estimator() -> None:
    rtt = RttEstimator(initial=0.002)
    assert rtt.value == 0.002
    assert rtt.timeout(ceiling=3.0) == 3.0
    for _ in range(100):
        rtt.update(0.010)
    assert rtt.value == pytest.approx(0.010)
    assert rtt.timeout(floor=0.05) == 0.05  # srtt + 4 * rttvar ~ 10 ms, clamped up
    rtt.update(0.5)
    assert 0.010 < rtt.value < 0.5
    assert rtt.timeout(floor=0.0) > rtt.value


def test_bandwidth_estimator_ignores_small_transfers() -> None:
    bw = BandwidthEstimator(initial=5e6, min_bytes=4096)
    bw.observe(100, 0.001)
    assert bw.value == 5e6
    bw.observe(1_000_000, 0.1)
    assert bw.value == pytest.approx(1e7)
    bw.observe(1_000_000, 0.0)  # nonsense sample: ignored
    assert bw.value == pytest.approx(1e7)


def test_rate_estimator_tracks_a_steady_rate_and_decays() -> None:
    rate = RateEstimator(tau=1.0)
    assert rate.rate(0.0) == 0.0
    t = 0.0
    for _ in range(2000):  # 200 events/s for 10 s
        t += 0.005
        rate.observe(t)
    assert rate.rate(t) == pytest.approx(200.0, rel=0.02)
    assert rate.rate(t + 3.0) < 200.0 * math.exp(-2.9)


def test_link_backoff_doubles_and_resets() -> None:
    link = LinkEstimator(base_backoff=0.5, max_backoff=2.0)
    link.failure(10.0)
    assert link.backoff_until == 10.5
    link.failure(11.0)
    assert link.backoff_until == 12.0
    link.failure(12.0)
    link.failure(13.0)
    assert link.backoff_until == 15.0  # capped at max_backoff
    link.success(0.001, nbytes=100_000, transfer_s=0.01)
    assert link.failures == 0
    assert link.backoff_until == -math.inf
    assert link.bandwidth.value == pytest.approx(1e7)


def test_candidate_from_member() -> None:
    member = MemberUpdate(
        b"n1", "laptop-b", "10.0.0.2", 7000, FP, MemberState.ALIVE, 3, load=LoadReport(5, 4, 2.5, 380.0)
    )
    link = LinkEstimator()
    link.success(0.0004)
    c = candidate_from_member(member, link, inflight=2, load_at=99.5)
    assert (c.node_id, c.name, c.fingerprint, c.state) == (b"n1", "laptop-b", FP, MemberState.ALIVE)
    assert c.tail_s == pytest.approx(0.0025)
    assert (c.queue_depth, c.inflight, c.service_rate) == (4, 2, 380.0)
    assert c.rtt_s == pytest.approx(0.0004)
    assert c.load_at == 99.5
    assert not c.local
    bare = candidate_from_member(MemberUpdate(b"n2", "c", "h", 1, FP, MemberState.SUSPECT, 0), link)
    assert bare.load_at == -math.inf
    assert bare.tail_s == 0.005
    assert not eligible(Request(FP, 10), bare, NOW)  # suspects are not sent work


def _fields(c: Candidate) -> dict[str, Any]:
    return {name: getattr(c, name) for name in Candidate.__dataclass_fields__}
