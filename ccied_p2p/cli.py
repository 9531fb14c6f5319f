"""The ``ccied-p2p`` command: train, profile, prune, bench (and the runtime commands)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ccied_p2p.errors import CCIEDError
from ccied_p2p.launch import serve_argv

__all__ = ["BENCHES", "build_parser", "main", "serve_argv"]


BENCHES = (
    "codec",
    "cache",
    "calibration",
    "gossip",
    "transport",
    "serve",
    "sharing",
    "e2e",
    "quota",
    "regimes",
)
log = logging.getLogger("ccied_p2p.cli")


def _emit(obj: dict[str, Any] | list[dict[str, Any]], as_json: bool, text: str) -> None:
    sys.stdout.write((json.dumps(obj, indent=2, default=str) if as_json else text) + "\n")
    sys.stdout.flush()


def _data_and_threads(args: argparse.Namespace, threads: int | None = 1) -> Any:
    """The data set asked for; torch on ``threads`` threads (one per node process, see DESIGN.md)."""
    import torch

    from ccied_p2p import datasets

    if threads is not None:
        torch.set_num_threads(threads)
    return datasets.load(args.data)


def _cmd_train(args: argparse.Namespace) -> int:
    from ccied_p2p import models

    # Training is the one job that runs alone: let torch use every core (``--threads`` to pin it).
    data = _data_and_threads(args, threads=args.threads)
    rows = []
    for name in args.models:
        models.reference(
            name, data, epochs=args.epochs, seed=args.seed, progress=not args.json, retrain=args.retrain
        )
        report = models.last_report(name)
        assert report is not None
        rows.append(asdict(report))
    text = "\n".join(
        f"{r['model']:<6} {r['dataset']:<14} epochs {r['epochs']:>2}  test accuracy {r['test_accuracy']:.4f}  "
        f"{'reused' if r['reused'] else 'trained'} in {r['seconds']:.1f} s  {r['path']}"
        for r in rows
    )
    _emit({"models": rows}, args.json, text)
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from ccied_p2p import models
    from ccied_p2p.split import SplitModel

    data = _data_and_threads(args)
    net = models.reference(args.model, data, progress=not args.json)
    split = SplitModel.from_module(
        net, split_at=args.split or models.DEFAULT_SPLIT[args.model], example_input=data.test_x[:1]
    )
    prof = split.profile(repeats=args.repeats)
    _emit({"profile": asdict(prof), "fingerprint": split.fingerprint}, args.json, prof.table())
    return 0


def _cmd_prune_lite0(args: argparse.Namespace) -> int:
    import torch

    from ccied_p2p import lite

    torch.set_num_threads(1)
    if args.cuts:
        table = lite.cut_table()
        _emit(table, args.json, _render_cut_table(table))
        return 0
    cut = args.split or lite.DEFAULT_CUT
    amounts = [0.0, 0.5, 0.65, 0.75] if args.curve else [0.0 if args.amount is None else args.amount]
    channels = int(lite.lite0_split(cut, prune=False).activation_shape[0])
    rows = []
    for amount in amounts:
        keep = max(1, round((1.0 - amount) * channels))
        recipe = lite.DistillRecipe(keep=keep)
        rows.append(lite.prune_summary(cut, recipe, prune=keep < channels, seed=args.seed))
    out: Any = rows[0] if len(rows) == 1 else rows
    lines = [
        f"{'cut':<10} {'amount':>6} {'bytes':>7} {'f16 B':>7} {'unpruned':>8} {'JPEG':>7} {'agree':>6} "
        f"{'acc before':>10} {'acc after':>9} {'JPEG agree':>10} {'JPEG acc':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r['cut']:<10} {r['amount']:>6.3f} {r['bytes_per_transfer']:>7.0f} {r['bytes_per_transfer_f16']:>7.0f} "
            f"{r['unpruned_bytes']:>8.0f} {r['jpeg_bytes']:>7.0f} {r['agreement']:>6.3f} {r['accuracy_before']:>10.4f} "
            f"{r['accuracy_after']:>9.4f} {r['jpeg_agreement']:>10.3f} {r['jpeg_accuracy']:>8.4f}"
        )
    sys.stdout.write((json.dumps(out, indent=2) if args.json else "\n".join(lines)) + "\n")
    return 0


def _render_cut_table(rows: list[dict[str, Any]]) -> str:
    encodings = list(rows[0]["bytes"])
    head = f"{'cut':<10} {'shape':<11} {'head':>5} {'MACs':>5} {'JPEG':>6} " + " ".join(
        f"{e:>15} {'agree':>6}" for e in encodings
    )
    lines = [head]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        cells = " ".join(f"{r['bytes'][e]:>15.0f} {r['agreement'][e]:>6.3f}" for e in encodings)
        lines.append(
            f"{r['cut']:<10} {shape:<11} {r['head_share']:>5.2f} {r['head_macs_share']:>5.2f} {r['jpeg_bytes']:>6.0f} {cells}"
        )
    return "\n".join(lines)


def _cmd_prune(args: argparse.Namespace) -> int:
    if args.model == "efficientnet-lite0":
        return _cmd_prune_lite0(args)
    if args.amount is None:
        args.amount = 0.75
    from ccied_p2p import models
    from ccied_p2p.pruning import prune_report
    from ccied_p2p.split import SplitModel

    data = _data_and_threads(args)
    split_at = args.split or models.DEFAULT_SPLIT[args.model]
    net = models.reference(args.model, data, progress=not args.json)
    base = SplitModel.from_module(net, split_at=split_at, example_input=data.test_x[:1], name=args.model)
    amounts = [0.0, 0.5, 0.75, 0.9] if args.curve else [args.amount]
    reports = []
    for amount in amounts:
        start = time.perf_counter()
        pruned = (
            base
            if amount == 0
            else models.reference_split(
                args.model, data, split_at=split_at, amount=amount, progress=not args.json
            )
        )
        rep = asdict(prune_report(base, pruned, data, amount))
        rep["seconds"] = time.perf_counter() - start
        rep["fingerprint"] = pruned.fingerprint
        reports.append(rep)
    main_report = next((r for r in reports if r["amount"] == args.amount), reports[-1])
    out = {**main_report, "dataset": data.name, "curve": reports}
    header = f"{'amount':>6} {'pruned':>7} {'acc before':>10} {'acc after':>9} {'drop pp':>7} {'sparsity':>8} {'raw B':>6} {'nonzero B':>9}"
    lines = [f"{data.name}, {args.model} split at {split_at}", header]
    for r in reports:
        lines.append(
            f"{r['amount']:>6.2f} {r['channels_pruned']:>7.3f} {r['accuracy_before']:>10.4f} {r['accuracy_after']:>9.4f} "
            f"{100 * (r['accuracy_before'] - r['accuracy_after']):>7.2f} {r['sparsity']:>8.3f} {r['raw_bytes']:>6.0f} "
            f"{r['nonzero_bytes']:>9.0f}"
        )
    _emit(out, args.json, "\n".join(lines))
    return 0


def _secret(args: argparse.Namespace) -> str | None:
    import os
    from pathlib import Path

    if getattr(args, "secret", None):
        return str(args.secret)
    if getattr(args, "secret_file", None):
        return Path(args.secret_file).read_text().strip()
    return os.environ.get("CCIED_SECRET") or None


def _node_config(args: argparse.Namespace) -> Any:
    """The NodeConfig that ``serve``/``infer`` options describe (their defaults: a default NodeConfig)."""
    from ccied_p2p.gossip.membership import MembershipConfig
    from ccied_p2p.runtime.config import (
        CacheConfig,
        ConnectionLimits,
        NetworkConfig,
        NodeConfig,
        ServingConfig,
        StrategyConfig,
    )

    return NodeConfig(
        name=args.name or NodeConfig().name,
        secret=_secret(args),
        insecure=args.insecure,
        observe=not args.no_observe,
        cpu_quota=args.cpu_quota,
        membership=MembershipConfig.quick() if args.membership == "quick" else MembershipConfig(),
        network=NetworkConfig(
            host=args.host,
            port=args.port,
            advertise_host=args.advertise_host,
            advertise_port=args.advertise_port,
            seeds=tuple(s for s in (args.seeds or "").split(",") if s),
            mdns=not args.no_mdns,
            mdns_interfaces=tuple(args.interface or NetworkConfig().mdns_interfaces),
        ),
        connections=ConnectionLimits(
            header_timeout=args.header_timeout,
            max_connections=args.max_connections,
            max_connections_per_address=args.max_connections_per_address,
        ),
        cache=CacheConfig(
            share=not args.no_share_cache,
            threshold=getattr(args, "threshold", None),
            k=getattr(args, "k", None),
            votes=getattr(args, "votes", None),
            min_confidence=getattr(args, "min_confidence", None),
            radius=getattr(args, "radius", None),
        ),
        serving=ServingConfig(max_batch=args.max_batch),
        strategy=StrategyConfig(local_tail_ms=args.local_tail_ms),
    )


def _radius(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    try:
        return float(lo), float(hi)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,FULL, got {text!r}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from ccied_p2p.demo import serve_forever
    from ccied_p2p.presets import reference_parts

    data = _data_and_threads(args)
    config = _node_config(args)  # the cache's answer rule too (--threshold, --k, --votes, --min-confidence)
    split = reference_parts(args.model, data, amount=args.amount, split_at=args.split, progress=False)
    from ccied_p2p.runtime.quota import quota_or_null

    with quota_or_null(args.cpu_quota):  # after loading the model: a weak device, not a slow start
        asyncio.run(serve_forever(split, config))
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    import asyncio

    from ccied_p2p.demo import render_demo, stream
    from ccied_p2p.presets import calibrate, reference_parts

    data = _data_and_threads(args)
    split = reference_parts(args.model, data, amount=args.amount, split_at=args.split, progress=not args.json)
    from ccied_p2p.runtime.quota import quota_or_null

    config = _node_config(args)
    if not args.no_calibrate:
        config.cache = calibrate(split, data)[0].config(config.cache)
    with quota_or_null(args.cpu_quota):
        out = asyncio.run(
            stream(
                split,
                data,
                config,
                workload=args.workload,
                requests=args.requests,
                concurrency=args.concurrency,
                wait_peers=args.wait_peers,
                progress=not args.json,
            )
        )
    _emit(out, args.json, render_demo(out))
    return 0 if out["failed"] == 0 else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    if args.camera:
        from ccied_p2p.bench.regimes import camera_demo, render_camera_demo

        quota = args.cpu_quota if args.cpu_quota is not None else 0.25
        cam = camera_demo(quota, mbit=args.mbit, frames=args.frames)
        _emit(cam, args.json, render_camera_demo(cam))
        return 0 if cam["summary"]["failed"] == 0 else 1

    from ccied_p2p.demo import demo, render_demo
    from ccied_p2p.presets import reference_parts

    data = _data_and_threads(args)
    split = reference_parts(args.model, data, amount=args.amount, progress=not args.json)
    out = asyncio.run(
        demo(
            split,
            data,
            args.model,
            args.amount,
            requests=args.requests,
            progress=not args.json,
            mdns=not args.no_mdns,
            cpu_quota=args.cpu_quota,
        )
    )
    _emit(out, args.json, render_demo(out))
    return 0 if out["failed"] == 0 else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"ccied_p2p.bench.{args.bench}")
    result = module.run(args)
    _emit(result, args.json, module.render(result))
    return 0


def build_parser(benches: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``benches=False`` leaves the bench commands' options out.

    The bench modules import torch, which costs seconds; ``main`` asks for them only when ``bench`` is the
    command, so ``status`` and ``dashboard`` answer without loading a model stack.
    """
    parser = argparse.ArgumentParser(prog="ccied-p2p", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log as text or JSON lines"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, model: bool = True) -> None:
        p.add_argument("--data", default=None, help="data set name (default: the best one present)")
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        if model:
            p.add_argument("--model", default="vgg", choices=["lenet", "vgg"])
            p.add_argument("--split", default=None, help="split point (default: after the second conv block)")

    p = sub.add_parser("train", help="train (or reuse) the reference models")
    common(p, model=False)
    p.add_argument("models", nargs="*", default=["lenet", "vgg"], choices=["lenet", "vgg"])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="ignore cached weights")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, every core)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("profile", help="per-layer latency, shapes, bytes, parameters and MACs of a split")
    common(p)
    p.add_argument("--repeats", type=int, default=30)
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("prune", help="prune the split layer and report accuracy, sparsity and bytes")
    common(p)
    for action in p._actions:
        if action.dest == "model":
            action.choices = ["lenet", "vgg", "efficientnet-lite0"]
    p.add_argument(
        "--amount",
        type=float,
        default=None,
        help="share pruned (default 0.75; Lite0: 0, every channel in 4 bits)",
    )
    p.add_argument(
        "--cuts", action="store_true", help="Lite0: head share, bytes and agreement per cut, unpruned"
    )
    p.add_argument("--curve", action="store_true", help="also report amounts 0, 0.5, 0.75, 0.9")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Lite0: the photo-camera stream (over the evaluation photos) agreement and accuracy are scored on",
    )
    p.set_defaults(func=_cmd_prune)

    def cpu_quota_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cpu-quota",
            type=float,
            default=None,
            metavar="FRACTION",
            help="run this node on a fraction of one core (0.25: a weak device), enforced with the cgroup cpu "
            "controller at a 10 ms period; needs a writable cgroup (root on Linux)",
        )

    def node_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--amount", type=float, default=0.75, help="fraction of split-layer channels pruned")
        p.add_argument("--name", default=None, help="node name (default: hostname-pid)")
        p.add_argument(
            "--secret", default=None, help="cluster secret (prefer --secret-file or $CCIED_SECRET)"
        )
        p.add_argument("--secret-file", default=None)
        p.add_argument(
            "--insecure", action="store_true", help="run without a secret (local experiments only)"
        )
        p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 on a LAN)")
        p.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
        p.add_argument("--seeds", default="", help="comma-separated host:port of nodes to join through")
        p.add_argument("--no-mdns", action="store_true", help="no mDNS (seeds only)")
        p.add_argument(
            "--interface",
            action="append",
            default=None,
            help="mDNS interface address (repeatable; 'all' for every one)",
        )
        p.add_argument(
            "--no-share-cache", action="store_true", help="do not replicate cache entries to peers"
        )
        p.add_argument(
            "--no-observe", action="store_true", help="do not serve /status, /metrics, the dashboard"
        )
        p.add_argument(
            "--advertise-host", default=None, help="address peers should dial (e.g. behind a relay)"
        )
        p.add_argument("--advertise-port", type=int, default=None, help="port peers should dial")
        p.add_argument(
            "--local-tail-ms",
            type=float,
            default=None,
            help="what the scheduler assumes this device's own tail costs (default: measured); "
            "large on a weak device, so that misses go to peers",
        )
        cpu_quota_arg(p)
        p.add_argument(
            "--header-timeout",
            type=float,
            default=10.0,
            help="seconds a client has to send a complete request head (default 10)",
        )
        p.add_argument(
            "--max-connections", type=int, default=512, help="inbound connections held at most (default 512)"
        )
        p.add_argument(
            "--max-connections-per-address",
            type=int,
            default=64,
            help="inbound connections from one address at most (default 64)",
        )
        p.add_argument(
            "--max-batch", type=int, default=32, help="most tail rows computed at once (1: no batching)"
        )
        p.add_argument(
            "--membership",
            choices=["default", "quick"],
            default="default",
            help="SWIM timings (quick: tests)",
        )

    p = sub.add_parser("serve", help="run one node until Ctrl-C (serves tails, answers from its cache)")
    common(p)
    node_args(p)
    # The cache's answer rule (CacheConfig; presets.CacheSettings.as_args gives calibration's); unset: the
    # cache's defaults.
    p.add_argument(
        "--threshold", type=float, default=None, help="cache distance threshold (from calibration)"
    )
    p.add_argument("--k", type=int, default=None, help="neighbours the cache looks at")
    p.add_argument("--votes", type=int, default=None, help="neighbours that must agree for a hit")
    p.add_argument("--min-confidence", type=float, default=None, help="least confidence of a vote")
    p.add_argument(
        "--radius",
        type=_radius,
        default=None,
        help="LOW,FULL: an entry answers within the whole threshold from confidence FULL, less below it",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "infer", help="join the cluster and stream a workload through this node; print a table"
    )
    common(p)
    node_args(p)
    p.add_argument("--workload", default="camera", choices=["camera", "control"])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--wait-peers", type=int, default=0, help="wait until this many peers are connected")
    p.add_argument("--no-calibrate", action="store_true", help="use the cache's default threshold")
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser(
        "demo", help="3 nodes in 3 processes on loopback, the camera workload, a summary table"
    )
    common(p)
    p.add_argument("--amount", type=float, default=0.75)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--no-mdns", action="store_true", help="join by seeds only")
    p.add_argument(
        "--camera",
        action="store_true",
        help="EfficientNet-Lite0 on a 224-px camera stream from a weak device (--cpu-quota, default 0.25) to "
        "two full-speed peers: what the node chose per frame, against local and offload",
    )
    p.add_argument("--mbit", type=float, default=10.0, help="with --camera: the link's rate (20 ms RTT)")
    p.add_argument("--frames", type=int, default=24, help="with --camera: frames")
    cpu_quota_arg(p)
    p.set_defaults(func=_cmd_demo)

    from ccied_p2p import observe_cli

    p = sub.add_parser(
        "status", help="ask the nodes found (mDNS on loopback, --nodes) for /status; print a table"
    )
    observe_cli.add_status_arguments(p)
    p.set_defaults(func=observe_cli.status)
    p = sub.add_parser("dashboard", help="print (or --open) the dashboard URL of a local node")
    observe_cli.add_dashboard_arguments(p)
    p.set_defaults(func=observe_cli.dashboard)

    from ccied_p2p import plan_cli

    p = sub.add_parser("plan", help="recommend the split point and pruning amount for a link and hit rate")
    plan_cli.add_arguments(p)
    p.set_defaults(func=plan_cli.plan)

    p = sub.add_parser("bench", help="benchmarks (see README)")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    for name in BENCHES if benches else ():
        try:
            module = importlib.import_module(f"ccied_p2p.bench.{name}")
        except ImportError:
            continue
        bp = bench_sub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        bp.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        module.add_arguments(bp)
        bp.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(benches="bench" in argv)
    args = parser.parse_args(argv)
    if getattr(args, "interface", "unset") is None:
        args.interface = ["127.0.0.1"]
    from ccied_p2p.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    try:
        code: int = args.func(args)
    except CCIEDError as exc:
        sys.stderr.write(f"ccied-p2p: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
