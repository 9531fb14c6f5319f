"""``ccied-p2p plan``: measure a reference model and recommend where to cut and how much to prune.

What is measured here: the per-layer profile (one thread), the wire size of each candidate cut's activation
(dense float32 and sparse-f16-lz4, on test images), and, at the default cut, the pruned models already trained
(their wire size and accuracy drop on test images). At the other cuts the pruned sizes are extrapolated from the
default cut's ratios and flagged ``measured: false``. The hit rate is the cache calibration's (on a camera
stream of its own seed) unless ``--hit-rate`` is given. The planner itself is :mod:`ccied_p2p.planner`.

``--model efficientnet-lite0`` plans at camera resolution instead: the profile of the pretrained Lite0 at 224
px, its cuts after ``_blocks.3/5/8/11`` each sent in ``sparse-f16-lz4`` (exact) or ``dense-i4-deflate`` (4-bit
values), with wire sizes on evaluation-clip frames and the accuracy each costs on photo-camera frames over the
evaluation photos (:func:`ccied_p2p.lite.cut_table`, ``--frames`` of them); offload sends the frame's 224-px
q90 JPEG. Its hit rate is 0 unless ``--hit-rate`` says otherwise (``bench cache --workload photo-camera``
measures one).

It also prints the per-request strategy (:func:`ccied_p2p.strategy.choose`, what a node picks among cache,
local, offload and split) for a device on ``--quota`` of a core (its costs: the profile / quota; ``bench quota``
measured 4.0x at 25% and 10.6x at 10% with Lite0) and one idle full-speed peer; ``--frames-stay`` forbids
offloading the input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

__all__ = ["add_arguments", "cached_amounts", "measure", "plan", "render", "slowdown_of", "strategy_json"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vgg", choices=["lenet", "vgg", "efficientnet-lite0"])
    parser.add_argument("--data", default=None, help="data set (default: the best one present)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--mbit", type=float, default=10.0, help="link rate, Mbit/s")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="link round trip, ms")
    parser.add_argument("--hit-rate", type=float, default=None, help="cache hit rate (default: calibrate)")
    parser.add_argument("--max-drop-pp", type=float, default=1.0, help="largest accuracy drop allowed (pp)")
    parser.add_argument("--slowdown", type=float, default=1.0, help="how much slower the asking device is")
    parser.add_argument(
        "--quota",
        type=float,
        default=None,
        help="the asking device's CPU quota, a fraction of a core (slowdown 1/q)",
    )
    parser.add_argument(
        "--frames-stay", action="store_true", help="raw inputs must not leave the device (never offload)"
    )
    parser.add_argument(
        "--input-bytes",
        type=float,
        default=None,
        help="what offload sends (default: the measured input tensor)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="profile repeats per layer")
    parser.add_argument("--top", type=int, default=10, help="plans to show")
    parser.add_argument("--frames", type=int, default=120, help="Lite0: photo-camera frames for accuracy")


def cached_amounts(model: str, data: Any, amounts: Sequence[float]) -> list[float]:
    """The pruning amounts whose fine-tuned weights are already on disk (never fine-tunes; 0 is always there)."""
    from ccied_p2p import models

    return [a for a in amounts if models.has_pruned_weights(model, data, a)]


def _wire(acts: Any, encoding: str) -> float:
    import numpy as np

    from ccied_p2p.codec.tensor import encode_tensor

    return float(np.mean([len(encode_tensor(acts[i : i + 1], encoding)) for i in range(len(acts))]))


def _measure_lite0(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure` for EfficientNet-Lite0 at 224 px (no data set: the camera workloads of ccied_p2p.video)."""
    import torch

    from ccied_p2p import lite
    from ccied_p2p.planner import Link, PruneOption, situation
    from ccied_p2p.planner import plan as make_plan
    from ccied_p2p.strategy import StrategyPolicy, choose

    torch.set_num_threads(1)
    encodings = ("sparse-f16-lz4", lite.WIRE_ENCODING)
    base = lite.lite0_split(lite.DEFAULT_CUT, prune=False)
    profile = base.profile(repeats=args.repeats)
    rows = lite.cut_table(frames=args.frames, clip_step=8, encodings=encodings, repeats=3)
    options: dict[str, list[PruneOption]] = {}
    cuts: dict[str, dict[str, Any]] = {}
    for row in rows:
        raw = 4 * math.prod(row["shape"])
        drop = {e: max(0.0, 100.0 * (row["accuracy_unsplit"] - row["accuracy"][e])) for e in encodings}
        options[row["split"]] = [PruneOption(0.0, row["bytes"][e] / raw, drop[e], True, e) for e in encodings]
        cuts[row["split"]] = {
            "cut": row["cut"],
            "raw_bytes": raw,
            "bytes": row["bytes"],
            "agreement": row["agreement"],
            "accuracy_drop_pp": drop,
            "head_macs_share": row["head_macs_share"],
        }
    input_wire = rows[0]["jpeg_bytes"] if args.input_bytes is None else args.input_bytes
    hit_rate = 0.0 if args.hit_rate is None else args.hit_rate
    link = Link.mbit(args.mbit, args.rtt_ms)
    slowdown = slowdown_of(args)
    common = {"max_drop_pp": args.max_drop_pp, "input_wire_bytes": input_wire, "slowdown": slowdown}
    plans = make_plan(profile, link, hit_rate, options, **common)
    strategy = choose(
        situation(profile, link, hit_rate, options, **common), StrategyPolicy(frames_stay=args.frames_stay)
    )
    dataset = f"photo camera over the evaluation photos ({args.frames} frames); evaluation clips (bytes)"
    return _result(args, lite.MODEL, dataset, hit_rate, slowdown, strategy, rows[0]["accuracy_unsplit"], cuts, [],
                   input_wire, plans)  # fmt: skip


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Profile, wire sizes, pruned options and hit rate for ``args.model``; then plan."""
    if args.model == "efficientnet-lite0":
        return _measure_lite0(args)
    import numpy as np
    import torch

    from ccied_p2p import datasets, models
    from ccied_p2p.planner import Link, PruneOption, situation
    from ccied_p2p.planner import plan as make_plan
    from ccied_p2p.presets import calibrate
    from ccied_p2p.split import SplitModel
    from ccied_p2p.strategy import StrategyPolicy, choose

    torch.set_num_threads(1)
    data = datasets.load(args.data)
    model = args.model
    net = models.reference(model, data, progress=False)
    default = models.DEFAULT_SPLIT[model]
    x = data.test_x[:200]
    base = SplitModel.from_module(net, split_at=default, example_input=data.test_x[:1], name=model)
    profile = base.profile(repeats=args.repeats)
    n_eval = 2000
    y = data.test_y[:n_eval].numpy()

    def accuracy(split: SplitModel) -> float:
        with torch.inference_mode():
            out = torch.cat([split(data.test_x[i : i + 500]) for i in range(0, n_eval, 500)])
        return float(np.mean(out.argmax(1).numpy() == y))

    acc0 = accuracy(base)
    cuts: dict[str, dict[str, float]] = {}
    for cut in models.SPLIT_POINTS[model]:
        split = base if cut == default else SplitModel.from_module(net, cut, data.test_x[:1], name=model)
        with torch.inference_mode():
            acts = split.head(x).numpy()
        raw = float(split.activation_bytes)
        cuts[cut] = {
            "raw_bytes": raw,
            "dense": _wire(acts, "dense-f32") / raw,
            "sparse": _wire(acts, "sparse-f16-lz4") / raw,
        }
    pruned_rows = []
    hit_rate = args.hit_rate
    for amount in cached_amounts(model, data, (0.5, 0.75, 0.9)):
        if amount == 0:
            continue
        pruned = models.reference_split(model, data, amount=amount, progress=False)
        with torch.inference_mode():
            acts = pruned.head(x).numpy()
        drop = 100.0 * (acc0 - accuracy(pruned))
        pruned_rows.append(
            {
                "amount": amount,
                "ratio": _wire(acts, "sparse-f16-lz4") / cuts[default]["raw_bytes"],
                "drop_pp": drop,
            }
        )
        if hit_rate is None and amount == 0.75:
            hit_rate = calibrate(pruned, data)[1].hit_rate  # 1 000 requests certify too few hits
    if hit_rate is None:
        hit_rate = 0.0
    options: dict[str, list[PruneOption]] = {}
    for cut, c in cuts.items():
        opts = [
            PruneOption(0.0, c["dense"], 0.0, True, "dense-f32"),
            PruneOption(0.0, c["sparse"], 0.0, True, "sparse-f16-lz4"),
        ]
        for row in pruned_rows:
            scale = c["sparse"] / cuts[default]["sparse"]
            opts.append(
                PruneOption(
                    row["amount"],
                    row["ratio"] * (1.0 if cut == default else scale),
                    max(row["drop_pp"], 0.0),
                    cut == default,
                )
            )
        options[cut] = opts
    with torch.inference_mode():
        inp = data.test_x[:200].numpy()
    input_wire = _wire(inp, "dense-f16-lz4") if args.input_bytes is None else args.input_bytes
    link = Link.mbit(args.mbit, args.rtt_ms)
    slowdown = slowdown_of(args)
    plans = make_plan(
        profile,
        link,
        hit_rate,
        options,
        max_drop_pp=args.max_drop_pp,
        input_wire_bytes=input_wire,
        slowdown=slowdown,
    )
    where = situation(
        profile,
        link,
        hit_rate,
        options,
        max_drop_pp=args.max_drop_pp,
        input_wire_bytes=input_wire,
        slowdown=slowdown,
    )
    strategy = choose(where, StrategyPolicy(frames_stay=args.frames_stay))
    return _result(
        args, model, data.name, hit_rate, slowdown, strategy, acc0, cuts, pruned_rows, input_wire, plans
    )


def _result(
    args: argparse.Namespace,
    model: str,
    dataset: str,
    hit_rate: float,
    slowdown: float,
    strategy: Sequence[Any],
    accuracy: float,
    cuts: dict[str, Any],
    pruned: list[dict[str, Any]],
    input_wire: float,
    plans: Sequence[Any],
) -> dict[str, Any]:
    """What ``plan --json`` prints: the situation, the policy's choice and the ranked plans."""
    return {
        "model": model,
        "dataset": dataset,
        "link": {"mbit": args.mbit, "rtt_ms": args.rtt_ms},
        "hit_rate": hit_rate,
        "slowdown": slowdown,
        "quota": args.quota,
        "frames_stay": args.frames_stay,
        "strategy": strategy_json(strategy),
        "max_drop_pp": args.max_drop_pp,
        "accuracy_unpruned": accuracy,
        "cuts": cuts,
        "pruned": pruned,
        "input_wire_bytes": input_wire,
        "recommendation": asdict(plans[0]) | {"label": plans[0].label},
        "best_split": next((asdict(p) | {"label": p.label} for p in plans if p.kind == "split"), None),
        "plans": [asdict(p) | {"label": p.label} for p in plans[: max(1, args.top)]],
    }


def slowdown_of(args: argparse.Namespace) -> float:
    """How much slower the asking device is: 1 / ``--quota`` when given, else ``--slowdown``."""
    from ccied_p2p.runtime.quota import QuotaSpec

    if args.quota is None:
        return float(args.slowdown)
    return 1.0 / QuotaSpec(args.quota).fraction  # validates it as the node would


def strategy_json(options: Sequence[Any]) -> dict[str, Any]:
    """The policy's answer as JSON: the choice and every option in failover order (milliseconds)."""
    rows = [
        {
            "label": o.label,
            "strategy": o.strategy.value,
            "peer": o.peer,
            "cut": o.cut,
            "expected_ms": o.seconds * 1000,
            "device_ms": o.device_s * 1000,
            "transfer_ms": o.transfer_s * 1000,
            "rtt_ms": o.rtt_s * 1000,
            "remote_ms": o.remote_s * 1000,
            "hit_rate": o.hit_rate,
        }
        for o in options
    ]
    return {"choice": rows[0]["label"], "options": rows}


def render_strategy(result: dict[str, Any]) -> list[str]:
    s = result["strategy"]
    quota = "" if result.get("quota") is None else f" on {result['quota']:.0%} of a core"
    stay = ", frames stay on the device" if result.get("frames_stay") else ""
    lines = [f"per-request strategy (device{quota}, slowdown {result['slowdown']:.2g}{stay}): {s['choice']}"]
    for o in s["options"][:6]:
        lines.append(
            f"  {o['label'][:40]:<40} {o['expected_ms']:>9.2f} ms  (device {o['device_ms']:.2f}, xfer "
            f"{o['transfer_ms']:.2f}, rtt {o['rtt_ms']:.2f}, remote {o['remote_ms']:.2f})"
        )
    return lines


def render(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"{r['model']} on {r['dataset']}, {r['link']['mbit']:g} Mbit/s, {r['link']['rtt_ms']:g} ms RTT, hit rate "
        f"{r['hit_rate']:.2f}, device slowdown {r['slowdown']:g}, accuracy drop <= {r['max_drop_pp']:g} pp",
        f"{'plan (~ extrapolated)':<60} {'expected ms':>11} {'head':>6} {'xfer':>6} {'tail':>6} {'wire B':>7} {'drop pp':>7}",
    ]
    for p in r["plans"]:
        mark = "" if p["measured"] else "~"
        lines.append(
            f"{(mark + p['label'])[:60]:<60} {p['expected_ms']:>11.2f} {p['head_ms']:>6.2f} "
            f"{p['transfer_ms']:>6.2f} {p['tail_ms']:>6.2f} {p['wire_bytes']:>7.0f} {p['accuracy_drop_pp']:>7.2f}"
        )
    lines.append(f"recommended: {r['recommendation']['label']} ({r['recommendation']['expected_ms']:.2f} ms)")
    if r["best_split"] is not None:
        lines.append(f"best split:  {r['best_split']['label']} ({r['best_split']['expected_ms']:.2f} ms)")
    lines += render_strategy(r)
    return "\n".join(lines)


def plan(args: argparse.Namespace) -> int:
    """The ``ccied-p2p plan`` command: print the ranked plans (a table, or JSON with ``--json``)."""
    result = measure(args)
    text = json.dumps(result, indent=2, default=str) if args.json else render(result)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0
