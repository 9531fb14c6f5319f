"""The rows of ``ccied-p2p bench regimes``: one worker's measurements per stream into rows, repeats into medians.

Pure arithmetic over what :mod:`ccied_p2p.bench.regimes` measured (no torch, no sockets).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

__all__ = ["FIXED", "RTT_MS", "cell_rows", "median_rows"]

RTT_MS = 20.0
FIXED = ("local", "offload", "split")


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _accuracy(labels: list[int], truth: np.ndarray, ref: list[int]) -> tuple[float, float]:
    """(accuracy, agreement with the local model); accuracy is agreement where there are no labels."""
    agree = [a == b for a, b in zip(labels, ref, strict=True)]
    agreement = sum(agree) / len(agree) if agree else math.nan
    known = [(a, int(t)) for a, t in zip(labels, truth, strict=True) if t >= 0]
    if not known:
        return agreement, agreement
    return sum(a == t for a, t in known) / len(known), agreement


def cell_rows(
    quota: float, mbit: float, name: str, runs: dict[str, Any], ref: list[int], truth: np.ndarray
) -> list[dict[str, Any]]:
    rows = []
    local_accuracy, _ = _accuracy(ref, truth, ref)
    fixed = {k: _mean(runs[k]["ms"]) for k in FIXED}
    for stay in (False, True):
        run = runs["adaptive_stay" if stay else "adaptive"]
        pool = {k: v for k, v in fixed.items() if not (stay and k == "offload")}
        best = min(pool, key=lambda k: pool[k])
        adaptive = _mean(run["ms"])
        accuracy, agreement = _accuracy(run["labels"], truth, ref)
        used: dict[str, int] = {}
        for u in run["used"]:
            used[u] = used.get(u, 0) + 1
        rows.append(
            {
                "quota": quota,
                "mbit": mbit,
                "rtt_ms": RTT_MS,
                "stream": name,
                "frames_stay": stay,
                "frames": len(ref),
                "adaptive_ms": adaptive,
                "adaptive_p50_ms": statistics.median(run["ms"]) if run["ms"] else math.nan,
                "best_fixed": best,
                "best_fixed_ms": pool[best],
                "ratio": adaptive / pool[best] if pool[best] > 0 else math.nan,
                "fixed_ms": fixed,
                "accuracy": accuracy,
                "local_accuracy": local_accuracy,
                "agreement": agreement,
                "labelled": int((truth >= 0).sum()),
                "failed": run["failed"] + sum(runs[k]["failed"] for k in FIXED),
                "used": used,
                # Per measured frame, in order: what the node ranked first and what answered ("miss>x": the
                # cache was looked up, then x), so a run shows when it explored without being re-run.
                "trace": {"chosen": run["chosen"], "used": run["used"]},
                "bytes_per_frame": run["bytes"] / max(1, len(run["ms"])),
                "latencies_ms": {
                    "adaptive": run["ms"],
                    **{k: runs[k]["ms"] for k in FIXED},
                },
                "estimates": runs.get("estimates", {}),
            }
        )
    return rows


def median_rows(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the same cell's rows of several repeats: medians of their means, everything else pooled."""
    if len(reps) == 1:
        return {**reps[0], "repeats": 1, "ratios": [reps[0]["ratio"]], "estimates": [reps[0]["estimates"]]}
    fixed = {k: statistics.median(r["fixed_ms"][k] for r in reps) for k in reps[0]["fixed_ms"]}
    pool = {k: v for k, v in fixed.items() if not (reps[0]["frames_stay"] and k == "offload")}
    best = min(pool, key=lambda k: pool[k])
    adaptive = statistics.median(r["adaptive_ms"] for r in reps)
    used: dict[str, int] = {}
    for r in reps:
        for k, v in r["used"].items():
            used[k] = used.get(k, 0) + v
    latencies = {k: [ms for r in reps for ms in r["latencies_ms"][k]] for k in reps[0]["latencies_ms"]}
    return {
        **reps[0],
        "repeats": len(reps),
        "adaptive_ms": adaptive,
        "adaptive_p50_ms": statistics.median(latencies["adaptive"]),
        "best_fixed": best,
        "best_fixed_ms": pool[best],
        "ratio": adaptive / pool[best] if pool[best] > 0 else math.nan,
        "ratios": [r["ratio"] for r in reps],
        "fixed_ms": fixed,
        "accuracy": statistics.fmean(r["accuracy"] for r in reps),
        "agreement": statistics.fmean(r["agreement"] for r in reps),
        "failed": sum(r["failed"] for r in reps),
        "used": used,
        "bytes_per_frame": statistics.fmean(r["bytes_per_frame"] for r in reps),
        "latencies_ms": latencies,
        "trace": {k: [x for r in reps for x in r["trace"][k]] for k in reps[0]["trace"]},
        "estimates": [r["estimates"] for r in reps],
    }
