"""The pure gossip simulation at small N: join, crash detection, leave, loss accounting, determinism."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from ccied_p2p.bench import gossip as bench
from ccied_p2p.codec.messages import MemberState
from ccied_p2p.errors import LocalError
from ccied_p2p.gossip import MembershipConfig
from ccied_p2p.gossip.simulation import Simulation


def test_a_cluster_forms_through_one_seed() -> None:
    sim = Simulation(60, seed=1)
    assert not sim.knows_all()
    sim.join_all(0)
    rounds = sim.run_rounds(30, Simulation.knows_all)
    assert rounds is not None
    assert rounds <= 10
    assert all(node.alive_count == 59 for node in sim.nodes)


def test_a_crash_is_known_everywhere() -> None:
    sim = Simulation(60, seed=2, converged=True)
    sim.run_rounds(5)
    sim.crash(7)
    rounds = sim.run_rounds(60, lambda s: s.dead_everywhere(7))
    cfg = sim.config
    # two failed probe rounds, then the suspicion timeout (with n = 60), then dissemination
    floor = 2 + cfg.suspicion_timeout(60) / cfg.probe_interval
    assert rounds is not None
    assert floor - 1 <= rounds <= floor + 8
    assert sim.stats.false_dead_verdicts == 0


def test_a_leave_is_known_everywhere_at_once() -> None:
    sim = Simulation(30, seed=3, converged=True)
    sim.run_rounds(2)
    sim.leave(4)
    rounds = sim.run_rounds(
        10, lambda s: all(s.nodes[i].state(s.nodes[4].node_id) is MemberState.LEFT for i in s.live())
    )
    assert rounds is not None
    assert rounds <= 1


def test_loss_is_applied_and_counted() -> None:
    sim = Simulation(30, seed=4, loss=0.2, converged=True)
    sim.run_rounds(50)
    assert sim.stats.sent > 1000
    assert sim.stats.lost / sim.stats.sent == pytest.approx(0.2, abs=0.03)
    assert sim.stats.false_suspicions > 0  # 20% loss fools the detector sometimes...
    assert sim.knows_all()  # ...but every suspicion was refuted in the end


def test_the_same_seed_gives_the_same_run_and_another_seed_does_not() -> None:
    def run(seed: int) -> tuple[int, int]:
        sim = Simulation(25, seed=seed, loss=0.1)
        sim.join_all(0)
        sim.run_rounds(30)
        return sim.stats.sent, sim.stats.lost

    assert run(9) == run(9)
    assert run(9) != run(10)


def test_bad_arguments() -> None:
    with pytest.raises(LocalError):
        Simulation(0)
    with pytest.raises(LocalError):
        Simulation(3, loss=1.0)
    with pytest.raises(LocalError):
        Simulation(3, latency=(0.01, 0.001))


def test_round_length_follows_the_config() -> None:
    sim = Simulation(3, config=MembershipConfig.quick())
    assert sim.round_length == 0.05
    sim.run_rounds(4)
    assert math.isclose(sim.now, 0.2)


def test_bench_gossip_small() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--n", "40", "--rounds", "60", "--repeats", "2", "--jobs", "1"])
    result = bench.run(args)
    json.dumps(result)
    for key in (
        "n",
        "rounds_to_converge",
        "rounds_to_detect",
        "false_positive_rate_5",
        "false_positive_rate_20",
    ):
        assert key in result
    assert result["n"] == 40
    assert 1 <= result["rounds_to_converge"] <= 15
    assert result["rounds_to_detect"] > 0
    assert result["false_positive_rate_5"] == 0.0
    assert 0.0 <= result["false_positive_rate_20"] <= 1.0
    text = bench.render(result)
    assert "rounds to converge" in text
