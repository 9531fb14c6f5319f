"""The split/pruning planner: pure arithmetic over a profile, a link, a hit rate and measured wire ratios."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccied_p2p.errors import ConfigError
from ccied_p2p.planner import Cut, Link, PruneOption, cuts_from_profile, expected, plan
from ccied_p2p.split import LayerProfile, SplitProfile


def _profile(times: list[float], sizes: list[int], input_bytes: int = 3136) -> SplitProfile:
    layers = tuple(
        LayerProfile(f"l{i}", "Conv2d", "head" if i < 2 else "tail", t, (1, 1), b, 0, 0)
        for i, (t, b) in enumerate(zip(times, sizes, strict=True))
    )
    return SplitProfile(layers, "l1", sum(times[:2]), sum(times[2:]), 0, 0, sizes[1], input_bytes)


PROFILE = _profile([1.0, 2.0, 3.0, 4.0], [40_000, 10_000, 2_000, 40])


def test_cuts_sum_head_and_tail() -> None:
    cuts = cuts_from_profile(PROFILE)
    assert [c.name for c in cuts] == ["l0", "l1", "l2"]  # never after the last layer
    assert [c.head_ms for c in cuts] == [1.0, 3.0, 6.0]
    assert [c.tail_ms for c in cuts] == [9.0, 7.0, 4.0]
    assert [c.raw_bytes for c in cuts] == [40_000, 10_000, 2_000]
    assert [c.name for c in cuts_from_profile(PROFILE, ["l1"])] == ["l1"]


def test_expected_latency_formula() -> None:
    cut = Cut("c", 2.0, 5.0, 10_000)
    link = Link.mbit(8.0, 20.0)  # 1e6 bytes/s
    opt = PruneOption(0.5, 0.1)
    miss = expected(cut, opt, link, 0.0, overhead_ms=0.5, frame_bytes=0)
    assert miss.transfer_ms == pytest.approx(1.0)  # 1000 bytes at 1e6 B/s
    assert miss.lookup_ms == 0.0
    assert miss.expected_ms == pytest.approx(2.0 + 20.0 + 1.0 + 5.0 + 0.5)
    hit = expected(cut, opt, link, 1.0, lookup_ms=0.3)
    assert hit.expected_ms == pytest.approx(2.0 + 0.3)
    half = expected(cut, opt, link, 0.5, lookup_ms=0.3, overhead_ms=0.5, frame_bytes=0)
    assert half.expected_ms == pytest.approx(2.3 + 0.5 * 26.5)
    slow = expected(cut, opt, link, 0.0, slowdown=4.0, overhead_ms=0.5, frame_bytes=0)
    assert slow.head_ms == pytest.approx(8.0)


def test_local_wins_on_one_machine_and_split_wins_for_a_weak_device() -> None:
    options = {"l1": [PruneOption(0.0, 1.0, encoding="dense-f32"), PruneOption(0.75, 0.05, 0.5)]}
    link = Link.mbit(10.0, 20.0)
    same = plan(PROFILE, link, 0.5, options)
    assert same[0].kind == "local"
    assert [p.expected_ms for p in same] == sorted(p.expected_ms for p in same)
    weak = plan(PROFILE, link, 0.9, options, slowdown=5.0)
    assert weak[0].kind == "split"
    assert weak[0].amount == 0.75
    assert weak[0].hit_rate == 0.9
    # A tiny input on a fast link with a slow device: ship the input.
    tiny = plan(PROFILE, Link.mbit(100.0, 1.0), 0.0, options, slowdown=50.0, input_wire_bytes=100)
    assert tiny[0].kind == "offload"


def test_accuracy_budget_excludes_options() -> None:
    options = {"l1": [PruneOption(0.0, 1.0), PruneOption(0.9, 0.01, accuracy_drop_pp=3.0)]}
    plans = plan(PROFILE, Link.mbit(1.0, 20.0), 0.0, options, max_drop_pp=1.0, baselines=False)
    assert {p.amount for p in plans} == {0.0}
    loose = plan(PROFILE, Link.mbit(1.0, 20.0), 0.0, options, max_drop_pp=5.0, baselines=False)
    assert loose[0].amount == 0.9
    assert "pruned 90%" in loose[0].label


def test_with_and_without_cache_are_both_planned() -> None:
    plans = plan(PROFILE, Link.mbit(10.0, 20.0), 0.6, {"l2": [PruneOption(0.0, 0.5)]}, baselines=False)
    assert sorted(p.hit_rate for p in plans) == [0.0, 0.6]
    assert plans[0].hit_rate == 0.6
    assert "+ cache" in plans[0].label


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError):
        plan(PROFILE, Link.mbit(10.0, 20.0), 0.5, {"nope": [PruneOption(0.0, 1.0)]})
    with pytest.raises(ConfigError):
        Link(0.0, 0.02)
    with pytest.raises(ConfigError):
        Link(1e6, -1.0)
    with pytest.raises(ConfigError):
        PruneOption(1.0, 0.5)
    with pytest.raises(ConfigError):
        expected(Cut("c", 1, 1, 10), PruneOption(0.0, 1.0), Link.mbit(1, 1), 1.5)


@given(
    h1=st.floats(0.0, 1.0),
    h2=st.floats(0.0, 1.0),
    mbit=st.floats(0.1, 1000.0),
    rtt=st.floats(0.0, 200.0),
    ratio=st.floats(0.001, 2.0),
)
def test_more_hits_and_more_bandwidth_never_hurt(
    h1: float, h2: float, mbit: float, rtt: float, ratio: float
) -> None:
    cut = Cut("c", 1.0, 3.0, 12_544)
    opt = PruneOption(0.5, ratio)
    lo, hi = sorted((h1, h2))
    # Once the cache is consulted (a fixed lookup cost), more hits only remove miss costs.
    if lo > 0:
        assert (
            expected(cut, opt, Link.mbit(mbit, rtt), hi).expected_ms
            <= expected(cut, opt, Link.mbit(mbit, rtt), lo).expected_ms + 1e-9
        )
    slow = expected(cut, opt, Link.mbit(mbit, rtt), lo).expected_ms
    fast = expected(cut, opt, Link.mbit(mbit * 2, rtt), lo).expected_ms
    assert fast <= slow + 1e-9
    assert math.isfinite(slow)
