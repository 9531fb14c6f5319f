"""``ccied-p2p bench gossip``: SWIM membership at N members in the pure simulation (no sockets).

Definitions (also in the JSON under ``definitions``):

- *round*: one probe interval (0.2 s simulated with the default timings). In a round every running member
  probes one member (ping; ping-req through up to 5 others if no ack in 0.1 s), gossips its news to ``fanout``
  random members, and answers what it receives. Messages arrive after 1-10 ms, each lost with probability
  ``loss``.
- ``rounds_to_converge``: n fresh members each know only themselves; at t = 0 all n - 1 others send their
  record to member 0 (the seed) at once, which answers each with its table *as it is then* (early joiners
  learn little). Counted: round ends until every member holds every other as alive. No loss.
- ``rounds_to_detect``: a converged cluster, after 10 rounds a random member is killed at a random moment.
  Counted: round ends until every running member holds it dead. No loss.
- ``false_positive_rate_X``: a converged cluster, X% loss, ``--rounds`` rounds, nobody crashes. The fraction
  of members that some member declared dead at least once (every such verdict is false). Also reported:
  false dead verdicts per member-round, and suspicion events (member-level; each one refuted or not).

Medians over ``--repeats`` seeds for convergence and detection; one seeded run per loss rate for false
positives (1000 rounds of 1000 members each). Runs go to ``--jobs`` worker processes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import random
import statistics
import time
from typing import Any

from ccied_p2p.gossip.membership import MembershipConfig
from ccied_p2p.gossip.simulation import Simulation

__all__ = ["add_arguments", "render", "run"]

DEFINITIONS = {
    "round": "one probe interval: each running member probes one member and gossips to `fanout` members",
    "rounds_to_converge": "simultaneous join of n-1 members through one seed, no loss: round ends until "
    "every member holds every other alive",
    "rounds_to_detect": "converged cluster, one member killed at a random moment, no loss: round ends until "
    "every running member holds it dead",
    "false_positive_rate": "converged cluster, given loss, no crashes, `rounds` rounds: fraction of members "
    "declared dead by at least one member at least once",
    "false_dead_per_member_round": "false dead verdicts (observer, member) / (n * rounds)",
    "false_suspicion_events": "member-level suspicion events about running members (refuted or not)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ccied-p2p bench gossip``."""
    parser.add_argument("--n", type=int, default=None, help="members (default 1000; 200 with --quick)")
    parser.add_argument("--fanout", type=int, default=3, help="members each one gossips to per round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per false-positive run (1000)")
    parser.add_argument("--repeats", type=int, default=None, help="seeds for convergence and detection (3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (1: run in this process)")
    parser.add_argument("--quick", action="store_true", help="small and fast: n=200, 200 rounds, 2 repeats")


def _config(fanout: int, **changes: Any) -> MembershipConfig:
    return dataclasses.replace(MembershipConfig(), fanout=fanout, **changes)


def _converge(n: int, fanout: int, seed: int, loss: float, boost: bool) -> dict[str, Any]:
    start = time.process_time()
    sim = Simulation(n, config=_config(fanout, sync_boost=boost), seed=seed, loss=loss)
    sim.join_all(0)
    rounds = sim.run_rounds(200, Simulation.knows_all)
    return {"rounds": rounds, "cpu_s": time.process_time() - start, "messages": sim.stats.sent}


def _detect(n: int, fanout: int, seed: int) -> dict[str, Any]:
    start = time.process_time()
    sim = Simulation(n, config=_config(fanout), seed=seed, converged=True)
    rng = random.Random(seed)
    sim.run_rounds(10)
    sim.run_until(sim.now + rng.random() * sim.round_length)
    victim = rng.randrange(n)
    sim.crash(victim)
    rounds = sim.run_rounds(200, lambda s: s.dead_everywhere(victim))
    return {"rounds": rounds, "cpu_s": time.process_time() - start}


def _false_positives(n: int, fanout: int, seed: int, loss: float, rounds: int) -> dict[str, Any]:
    start = time.process_time()
    sim = Simulation(n, config=_config(fanout), seed=seed, loss=loss, converged=True)
    sim.run_rounds(rounds)
    stats = sim.stats
    return {
        "loss": loss,
        "false_positive_rate": len(sim.false_dead) / n,
        "false_dead_members": len(sim.false_dead),
        "false_dead_verdicts": stats.false_dead_verdicts,
        "false_dead_per_member_round": stats.false_dead_verdicts / (n * rounds),
        "false_suspicion_events": stats.false_suspicions,
        "messages_per_member_round": stats.sent / (n * rounds),
        "updates_per_message": stats.updates_sent / max(stats.sent, 1),
        "measured_loss": stats.lost / max(stats.sent, 1),
        "all_alive_at_end": sim.knows_all(),
        "cpu_s": time.process_time() - start,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the simulations; returns the JSON object ``--json`` prints."""
    n = args.n or (200 if args.quick else 1000)
    rounds = args.rounds or (200 if args.quick else 1000)
    repeats = args.repeats or (2 if args.quick else 3)
    fanout, seed = args.fanout, args.seed
    tasks: dict[str, tuple[Any, ...]] = {
        "fp20": (_false_positives, n, fanout, seed, 0.20, rounds),
        "fp5": (_false_positives, n, fanout, seed, 0.05, rounds),
        "converge_loss5": (_converge, n, fanout, seed, 0.05, True),
        "converge_no_boost": (_converge, n, fanout, seed, 0.0, False),
    }
    for r in range(repeats):
        tasks[f"converge{r}"] = (_converge, n, fanout, seed + r, 0.0, True)
        tasks[f"detect{r}"] = (_detect, n, fanout, seed + r)
    wall = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    if args.jobs <= 1:
        for name, (fn, *fargs) in tasks.items():
            results[name] = fn(*fargs)
    else:
        # fork: the workers need nothing but this module, and it works from an unguarded script too
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            futures = {name: pool.submit(fn, *fargs) for name, (fn, *fargs) in tasks.items()}
            results = {name: f.result() for name, f in futures.items()}
    wall = time.perf_counter() - wall
    config = _config(fanout)
    converge = [results[f"converge{r}"]["rounds"] for r in range(repeats)]
    detect = [results[f"detect{r}"]["rounds"] for r in range(repeats)]
    fp5, fp20 = results["fp5"], results["fp20"]
    return {
        "n": n,
        "fanout": fanout,
        "rounds": rounds,
        "repeats": repeats,
        "seed": seed,
        "round_seconds": config.probe_interval,
        "rounds_to_converge": _median(converge),
        "rounds_to_converge_runs": converge,
        "rounds_to_converge_loss5": results["converge_loss5"]["rounds"],
        "rounds_to_converge_without_boost": results["converge_no_boost"]["rounds"],
        "rounds_to_detect": _median(detect),
        "rounds_to_detect_runs": detect,
        "seconds_to_detect": _scale(_median(detect), config.probe_interval),
        "suspicion_timeout_rounds": config.suspicion_timeout(n) / config.probe_interval,
        "false_positive_rate_5": fp5["false_positive_rate"],
        "false_positive_rate_20": fp20["false_positive_rate"],
        "loss5": fp5,
        "loss20": fp20,
        "config": dataclasses.asdict(config),
        "definitions": DEFINITIONS,
        "wall_s": wall,
        "cpu_s": sum(r["cpu_s"] for r in results.values()),
    }


def _median(values: list[int | None]) -> float | None:
    if any(v is None for v in values):
        return None
    return float(statistics.median(v for v in values if v is not None))


def _scale(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def render(result: dict[str, Any]) -> str:
    """A human table of :func:`run`'s result."""
    fp5, fp20 = result["loss5"], result["loss20"]
    lines = [
        f"gossip simulation: n={result['n']}, fanout={result['fanout']}, "
        f"round={result['round_seconds'] * 1000:.0f} ms simulated",
        f"  rounds to converge (join via one seed)   {result['rounds_to_converge']}  "
        f"runs {result['rounds_to_converge_runs']}; 5% loss: {result['rounds_to_converge_loss5']}; "
        f"without anti-entropy boost: {result['rounds_to_converge_without_boost']}",
        f"  rounds to detect a crash everywhere      {result['rounds_to_detect']}  "
        f"runs {result['rounds_to_detect_runs']} "
        f"(suspicion timeout {result['suspicion_timeout_rounds']:.1f} rounds)",
        f"  over {result['rounds']} rounds, no crashes     loss 5%        loss 20%",
        f"    false positive rate (members)         {fp5['false_positive_rate']:<14.4f} "
        f"{fp20['false_positive_rate']:.4f}",
        f"    false dead verdicts                   {fp5['false_dead_verdicts']:<14d} "
        f"{fp20['false_dead_verdicts']}",
        f"    false dead per member-round           {fp5['false_dead_per_member_round']:<14.2e} "
        f"{fp20['false_dead_per_member_round']:.2e}",
        f"    suspicion events (refuted or not)     {fp5['false_suspicion_events']:<14d} "
        f"{fp20['false_suspicion_events']}",
        f"    messages per member-round             {fp5['messages_per_member_round']:<14.2f} "
        f"{fp20['messages_per_member_round']:.2f}",
        f"  wall {result['wall_s']:.1f} s, cpu {result['cpu_s']:.1f} s",
    ]
    return "\n".join(lines)
