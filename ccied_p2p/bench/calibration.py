"""``ccied-p2p bench calibration``: does the cache's false-hit budget hold on images calibration never saw?

Each run splits the test images at random into two halves (a *halving*): :func:`ccied_p2p.presets.calibrate`
gets one half as its calibration images (it splits them again into a choosing and a certifying half), and
the chosen setting serves, through :func:`ccied_p2p.cache.serve_stream` and a fresh cache each time, streams
drawn from the other half only: camera streams (Zipf repeats), the control stream (each image once,
unperturbed) and the captures stream (each image once through the camera). Reported per halving and
stream: false-hit rate (false hits / hits, against the uncached model), its Clopper-Pearson 95% upper
bound, hit rate and accuracy cost in points; then how these move between halvings.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ccied_p2p.cache import SemanticCache, clopper_pearson_upper, serve_stream
from ccied_p2p.workloads import CameraParams, camera_stream, collect, control_stream

if TYPE_CHECKING:
    from ccied_p2p.datasets import Dataset
    from ccied_p2p.split import SplitModel

__all__ = ["add_arguments", "halving", "render", "run"]

STREAMS = ("camera", "control", "captures")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ccied-p2p bench calibration``."""
    parser.add_argument("--data", default="fashion-mnist", help="data set (default fashion-mnist)")
    parser.add_argument("--model", default="lenet", choices=["lenet", "vgg"], help="reference model")
    parser.add_argument("--amount", type=float, default=0.75, help="share of split-layer channels pruned")
    parser.add_argument("--halvings", type=int, default=5, help="random halvings of the test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first halving")
    parser.add_argument("--budget", type=float, default=0.01, help="false-hit budget")
    parser.add_argument("--requests", type=int, default=3000, help="calibration camera requests per half")
    parser.add_argument("--cameras", type=int, default=6, help="measured camera streams per halving")
    parser.add_argument(
        "--camera-requests", type=int, default=1000, help="requests per measured camera (calibration: 1000)"
    )
    parser.add_argument("--pool", type=int, default=500, help="distinct images in a camera's view")
    parser.add_argument(
        "--per-stream", action="store_true", help="hold the budget on cameras and novel images separately"
    )
    parser.add_argument("--novel", type=int, default=None, help="novel captures per calibration half")
    parser.add_argument(
        "--holdout-streams", type=int, default=None, help="held-out camera streams (default 6)"
    )
    parser.add_argument(
        "--calibration",
        default="half",
        choices=["half", "train"],
        help="calibrate on the other half of the test images (default) or on the train images",
    )


def _figures(served: np.ndarray, hit: np.ndarray, preds: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    hits, bad = int(hit.sum()), int(np.sum(served[hit] != preds[hit]))
    return {
        "requests": len(preds),
        "hits": hits,
        "false_hits": bad,
        "hit_rate": hits / max(1, len(preds)),
        "false_hit_rate": bad / hits if hits else 0.0,
        "false_hit_bound": clopper_pearson_upper(bad, hits, 0.95),
        "accuracy_loss_pp": 100.0 * float(np.mean(preds == truth) - np.mean(served == truth)),
    }


def halving(
    split: SplitModel,
    data: Dataset,
    seed: int,
    args: argparse.Namespace,
    once: bool = True,
) -> dict[str, Any]:
    """One halving: calibrate on one random half of the test images, serve streams of the other half
    (the camera streams; with ``once`` the control and captures streams too)."""
    from ccied_p2p.presets import activations, calibrate, reducer_for

    n = len(data.test_images)
    order = np.random.default_rng(seed).permutation(n)
    calib, measured = np.sort(order[: n // 2]), np.sort(order[n // 2 :])
    params = CameraParams(pool_size=args.pool)
    t0 = time.perf_counter()
    settings, cal = calibrate(
        split,
        data,
        requests=args.requests,
        max_false_hit_rate=args.budget,
        params=params,
        calibration=calib if args.calibration == "half" else "train",
        per_stream=args.per_stream,
        novel=args.novel,
        holdout_streams=args.holdout_streams,
        seed=10_000 + 100 * seed,
    )
    cal_s = time.perf_counter() - t0
    images, truth = data.test_images[measured], data.test_labels[measured]
    sources = {
        f"camera{c}": collect(
            camera_stream(images, truth, args.camera_requests, params, seed=1000 * (seed + 1) + c)
        )
        for c in range(args.cameras)
    }
    if once:
        sources["control"] = collect(control_stream(images, truth, seed=seed))
        sources["captures"] = collect(control_stream(images, truth, seed=seed, camera=params))
    rows: dict[str, Any] = {}
    pooled: list[np.ndarray] = [np.zeros(0, np.int64)] * 4
    for name, (_, imgs, labels) in sources.items():
        acts, preds, confs = activations(split, data, imgs)
        cache = SemanticCache(b"bench", reducer=reducer_for(split.activation_shape, split.channel_mask))
        settings.apply(cache)
        served, hit = serve_stream(cache, acts, preds, confs, split.fingerprint)
        rows[name] = _figures(served, hit, preds, labels)
        if name.startswith("camera"):
            pooled = [
                np.concatenate([p, v]) for p, v in zip(pooled, (served, hit, preds, labels), strict=True)
            ]
    rows["camera"] = _figures(pooled[0], pooled[1].astype(bool), pooled[2], pooled[3])
    return {
        "seed": seed,
        "calibration": {
            "threshold": cal.threshold,
            "k": cal.k,
            "votes": cal.votes,
            "min_confidence": cal.min_confidence,
            "held_out_hit_rate": cal.hit_rate,
            "held_out_false_hit_rate": cal.false_hit_rate,
            "held_out_bound": cal.false_hit_bound,
            "stream_bounds": list(cal.stream_bounds),
            "certified": cal.certified,
            "seconds": cal_s,
        },
        **rows,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every halving; the returned object is what ``--json`` prints."""
    import torch
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from ccied_p2p import datasets, models

    torch.set_num_threads(1)
    started = time.perf_counter()
    data = datasets.load(args.data)
    split = models.reference_split(args.model, data, amount=args.amount, progress=False)
    with threadpool_limits(limits=1), torch.inference_mode():
        halvings = [halving(split, data, args.seed + h, args) for h in range(args.halvings)]
    spread: dict[str, dict[str, float]] = {}
    for stream in STREAMS:
        for key in ("false_hit_rate", "false_hit_bound", "hit_rate", "accuracy_loss_pp"):
            values = [h[stream][key] for h in halvings]
            spread.setdefault(stream, {})[f"{key}_median"] = statistics.median(values)
            spread[stream][f"{key}_min"] = min(values)
            spread[stream][f"{key}_max"] = max(values)
    return {
        "data": data.name,
        "model": args.model,
        "pruned": args.amount,
        "budget": args.budget,
        "calibration_pool": args.calibration,
        "per_stream": bool(args.per_stream),
        "novel": args.novel,
        "cameras": args.cameras,
        "camera_requests": args.camera_requests,
        "halvings": halvings,
        "spread": spread,
        "within_budget": {s: sum(h[s]["false_hit_rate"] <= args.budget for h in halvings) for s in STREAMS},
        "seconds": time.perf_counter() - started,
    }


def render(result: dict[str, Any]) -> str:
    """The human table."""
    lines = [
        f"calibration on unseen images: {result['model']} on {result['data']}, {result['pruned']:.0%} pruned, "
        f"budget {result['budget']:.2%}, calibrated on {result['calibration_pool']}"
        f"{', per stream' if result['per_stream'] else ''}",
        "",
        f"{'halving':>7} {'stream':<9} {'false hits':>10} {'bound':>7} {'hit rate':>8} {'loss pp':>8}",
    ]
    for h in result["halvings"]:
        c = h["calibration"]
        lines.append(
            f"{h['seed']:>7} {'(held-out':<9} {c['held_out_false_hit_rate']:>10.2%} {c['held_out_bound']:>7.2%} "
            f"{c['held_out_hit_rate']:>8.3f}  threshold {c['threshold']:.5f} k={c['k']} votes={c['votes']} "
            f"gate {c['min_confidence']:.2f}, {c['certified']} certified, {c['seconds']:.0f} s)"
        )
        for s in STREAMS:
            r = h[s]
            lines.append(
                f"{'':>7} {s:<9} {r['false_hit_rate']:>10.2%} {r['false_hit_bound']:>7.2%} {r['hit_rate']:>8.3f} "
                f"{r['accuracy_loss_pp']:>+8.2f}"
            )
    lines.append("")
    for s in STREAMS:
        sp = result["spread"][s]
        lines.append(
            f"{s:<9} false hits median {sp['false_hit_rate_median']:.2%} ({sp['false_hit_rate_min']:.2%}-"
            f"{sp['false_hit_rate_max']:.2%}), hit rate {sp['hit_rate_median']:.3f} ({sp['hit_rate_min']:.3f}-"
            f"{sp['hit_rate_max']:.3f}), loss {sp['accuracy_loss_pp_median']:+.2f} pp "
            f"({sp['accuracy_loss_pp_min']:+.2f} to {sp['accuracy_loss_pp_max']:+.2f}); within budget in "
            f"{result['within_budget'][s]}/{len(result['halvings'])}"
        )
    lines.append(f"\ntotal {result['seconds']:.0f} s")
    return "\n".join(lines)
