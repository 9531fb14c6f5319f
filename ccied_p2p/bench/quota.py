"""``ccied-p2p bench quota``: how much slower a CPU quota makes EfficientNet-Lite0, and why the period matters.

This process runs the pretrained Lite0 forward at 224x224 on one thread, under CPU quotas of 1.0, 0.25 and 0.10
of a core (:class:`~ccied_p2p.runtime.quota.CpuQuota`, its own cgroup), at a 10 ms and at the kernel's default
100 ms period. The configurations take turns in every round, so a noisy neighbour hits them alike; each row
gives the median, min and p90 of the forwards and ``ratio`` = its median / the median at quota 1.0 with the same
period (same run). Forwards are separated by an idle gap of random length (up to ``--gap-ms``), as frames
arriving from a camera are: with a 100 ms period a forward that starts with the period's slice unused runs at
full speed and another waits out the period, so the times are bimodal and the emulation lies about the device;
at 10 ms the slowdown is steady. ``cpu_share`` is CPU seconds / wall seconds: above the quota it is the kernel's slack, below
it other processes took the core; so that they do not, the groups get ``--shares`` (cpu.shares) 64 times an
ordinary process's, as if the device owned its core (the quota still caps it). Needs a writable cgroup cpu controller (root on Linux).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from typing import Any

__all__ = ["add_arguments", "render", "run"]

QUOTAS = (1.0, 0.25, 0.10)
PERIODS_US = (10_000, 100_000)
SHARES = 65_536


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ccied-p2p bench quota``."""
    parser.add_argument("--rounds", type=int, default=4, help="rounds; every configuration runs once a round")
    parser.add_argument("--forwards", type=int, default=3, help="timed forwards per configuration and round")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument(
        "--gap-ms", type=float, default=100.0, help="idle time between forwards, up to (random)"
    )
    parser.add_argument(
        "--shares",
        type=int,
        default=SHARES,
        help=f"cpu.shares of the bench's groups (default {SHARES}: the device owns its core even on a busy "
        "machine; 1024: compete like any process)",
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ccied_p2p.models import efficientnet_lite0
    from ccied_p2p.runtime.quota import CpuQuota, find_controller

    controller = find_controller()  # fails early, saying what is needed
    torch.set_num_threads(1)
    net = efficientnet_lite0()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for _ in range(3):
            net(x)
    configs = [(p, q) for p in PERIODS_US for q in QUOTAS]
    times: dict[tuple[int, float], list[float]] = {c: [] for c in configs}
    cpu: dict[tuple[int, float], list[float]] = {c: [0.0, 0.0] for c in configs}
    load_before = os.getloadavg()[0]
    rng = random.Random(0)
    for _ in range(args.rounds):
        for period, quota in configs:
            with CpuQuota(quota, period_us=period, shares=args.shares), torch.inference_mode():
                net(x)  # the first forward in the group pays for entering it
                for _ in range(args.forwards):
                    time.sleep(rng.uniform(0.0, args.gap_ms / 1000.0))
                    t, c = time.perf_counter(), time.process_time()
                    net(x)
                    wall = time.perf_counter() - t
                    times[(period, quota)].append(wall * 1000)
                    cpu[(period, quota)][0] += time.process_time() - c
                    cpu[(period, quota)][1] += wall
    rows = []
    for period, quota in configs:
        v = times[(period, quota)]
        base = statistics.median(times[(period, 1.0)])
        rows.append(
            {
                "period_us": period,
                "quota": quota,
                "n": len(v),
                "median_ms": statistics.median(v),
                "min_ms": min(v),
                "p90_ms": _pct(v, 0.9),
                "ratio": statistics.median(v) / base,
                "ideal_ratio": 1.0 / quota,
                "cpu_share": cpu[(period, quota)][0] / cpu[(period, quota)][1],
            }
        )
    return {
        "model": "efficientnet-lite0",
        "input": [1, 3, args.size, args.size],
        "threads": 1,
        "shares": args.shares,
        "gap_ms": args.gap_ms,
        "cgroup": {"version": controller.version, "root": str(controller.root)},
        "loadavg_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
        "rows": rows,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"EfficientNet-Lite0 {result['input'][2]}x{result['input'][3]}, 1 thread, cgroup v{result['cgroup']['version']}"
        f" (load {result['loadavg_1min']['before']:.1f} -> {result['loadavg_1min']['after']:.1f} on "
        f"{result['cpus']} CPUs)",
        f"{'period':>7} {'quota':>6} {'n':>3} {'median ms':>10} {'min ms':>8} {'p90 ms':>8} {'ratio':>6} "
        f"{'ideal':>6} {'cpu share':>9}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['period_us'] // 1000:>5}ms {r['quota']:>6.2f} {r['n']:>3} {r['median_ms']:>10.1f} "
            f"{r['min_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['ratio']:>6.2f} {r['ideal_ratio']:>6.1f} "
            f"{r['cpu_share']:>9.2f}"
        )
    return "\n".join(lines)
