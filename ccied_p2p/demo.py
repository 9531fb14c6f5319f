"""``ccied-p2p serve`` and ``ccied-p2p demo``: one node until stopped, and a 3-process cluster on loopback."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ccied_p2p.datasets import Dataset
from ccied_p2p.launch import READY, start_serve, stop_serve
from ccied_p2p.presets import activations, calibrate
from ccied_p2p.runtime.config import NetworkConfig
from ccied_p2p.runtime.node import InferenceResult, Node, NodeConfig
from ccied_p2p.split import SplitModel
from ccied_p2p.workloads import camera_stream

__all__ = [
    "demo",
    "render_demo",
    "serve_forever",
    "stream",
    "summarize",
]


async def serve_forever(split: SplitModel, config: NodeConfig) -> None:
    """Run one node until SIGINT or SIGTERM; print ``READY <address> <fingerprint>`` once it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Node(split, config) as node:
        sys.stdout.write(f"{READY} {node.address} {split.fingerprint} {node.node_id.hex()}\n")
        sys.stdout.flush()
        await stop.wait()


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summarize(
    results: Sequence[InferenceResult], reference: np.ndarray[Any, Any], truth: np.ndarray[Any, Any]
) -> dict[str, Any]:
    """The demo's table: hit rate, agreement with the uncached model, bytes, latency by source, sources."""
    labels = np.array([r.label for r in results])
    hits = np.array([r.kind == "cache" for r in results])
    transfers = [r for r in results if r.kind == "peer"]
    by_kind: dict[str, list[float]] = {}
    for r in results:
        by_kind.setdefault(r.kind, []).append(r.latency * 1000)
    return {
        "requests": len(results),
        "failed": 0,
        "hit_rate": float(hits.mean()) if len(results) else 0.0,
        "agreement": float((labels == reference).mean()) if len(results) else 0.0,
        "hit_agreement": float((labels[hits] == reference[hits]).mean()) if hits.any() else None,
        "accuracy": float((labels == truth).mean()) if len(results) else 0.0,
        "accuracy_uncached": float((reference == truth).mean()) if len(results) else 0.0,
        "bytes_per_transfer": statistics.mean(r.bytes_sent for r in transfers) if transfers else 0.0,
        "raw_bytes_per_transfer": statistics.mean(r.bytes_raw for r in transfers) if transfers else 0.0,
        "latency_ms": {
            kind: {"n": len(v), "p50": _percentile(v, 50), "p95": _percentile(v, 95)}
            for kind, v in by_kind.items()
        },
        "sources": dict(Counter(r.source for r in results)),
    }


def render_demo(out: dict[str, Any]) -> str:
    lines = [
        f"requests {out['requests']}  failed {out['failed']}  hit rate {out['hit_rate']:.3f}  "
        f"agreement with the uncached model {out['agreement']:.4f} (hits: {out['hit_agreement']})",
        f"accuracy {out['accuracy']:.4f} (uncached model {out['accuracy_uncached']:.4f})",
        f"bytes per transfer {out['bytes_per_transfer']:.0f} vs raw fp32 {out['raw_bytes_per_transfer']:.0f}"
        + (
            f" ({out['raw_bytes_per_transfer'] / out['bytes_per_transfer']:.1f}x smaller)"
            if out["bytes_per_transfer"]
            else ""
        ),
        f"{'source':<10} {'n':>6} {'p50 ms':>8} {'p95 ms':>8}",
    ]
    for kind, row in sorted(out["latency_ms"].items()):
        lines.append(f"{kind:<10} {row['n']:>6} {row['p50']:>8.3f} {row['p95']:>8.3f}")
    lines.append("requests by source: " + ", ".join(f"{k} {v}" for k, v in sorted(out["sources"].items())))
    return "\n".join(lines)


async def _drive(
    node: Node, x: torch.Tensor, concurrency: int, desc: str, progress: bool
) -> tuple[list[InferenceResult], float]:
    """Infer every row of ``x`` through ``node`` with ``concurrency`` in flight; results and seconds taken."""
    bar = tqdm(total=len(x), desc=desc, unit="req", disable=None if progress else True, leave=False)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> InferenceResult:
        async with sem:
            r = await node.infer(x[i])
            bar.update()
            return r

    start = time.perf_counter()
    try:
        results = list(await asyncio.gather(*(one(i) for i in range(len(x)))))
    finally:
        bar.close()
    return results, time.perf_counter() - start


async def demo(
    split: SplitModel,
    data: Dataset,
    model: str,
    amount: float,
    requests: int = 1000,
    concurrency: int = 4,
    progress: bool = True,
    mdns: bool = True,
    cpu_quota: float | None = None,
) -> dict[str, Any]:
    """Three nodes in three processes on loopback; stream the camera workload from this one.

    ``cpu_quota``: this node (the asking device) runs on that fraction of one core once its peers are up (they
    are spawned first, so they do not inherit the quota).
    """
    from ccied_p2p.runtime.quota import quota_or_null

    settings, _ = calibrate(split, data)
    secret = secrets.token_urlsafe(24)
    env = {**os.environ, "CCIED_SECRET": secret}
    stream = list(camera_stream(data.test_images, data.test_labels, requests, seed=1))
    images = np.stack([it.image for it in stream])
    truth = np.array([it.label for it in stream])
    _, reference, _ = activations(split, data, images)
    x = data.normalize(images)

    config = NodeConfig(
        name="demo-a",
        secret=secret,
        cpu_quota=cpu_quota,
        network=NetworkConfig(mdns=mdns),
        cache=settings.config(),
    )
    children: list[asyncio.subprocess.Process] = []
    async with Node(split, config) as node:
        try:
            for name in ("demo-b", "demo-c"):
                proc, _addr = await start_serve(
                    [
                        "serve",
                        "--model",
                        model,
                        "--amount",
                        str(amount),
                        "--data",
                        data.name,
                        "--name",
                        name,
                        "--seeds",
                        node.address,
                        *settings.as_args(),
                        *([] if mdns else ["--no-mdns"]),
                    ],
                    env,
                )
                children.append(proc)
            await node.wait_for_peers(2, timeout=10)
            with quota_or_null(cpu_quota):
                results, elapsed = await _drive(node, x, concurrency, "demo", progress)
        finally:
            for proc in children:
                await stop_serve(proc)
    out = summarize(results, reference, truth)
    out.update(
        {
            "model": model,
            "dataset": data.name,
            "amount": amount,
            "requests_per_s": requests / elapsed,
            "cache": {"threshold": settings.threshold, "k": settings.k, "votes": settings.votes},
            "failed": node.counters.failed,
            "cpu_quota": cpu_quota,
        }
    )
    return out


async def stream(
    split: SplitModel,
    data: Dataset,
    config: NodeConfig,
    workload: str = "camera",
    requests: int = 1000,
    concurrency: int = 4,
    wait_peers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Join the cluster as one node and stream a workload through it (``ccied-p2p infer``); the node's cache
    is configured by ``config.cache``."""
    from ccied_p2p.workloads import control_stream

    if workload == "camera":
        items = list(camera_stream(data.test_images, data.test_labels, requests, seed=1))
    else:
        items = list(control_stream(data.test_images, data.test_labels, seed=1, limit=requests))
    images = np.stack([it.image for it in items])
    truth = np.array([it.label for it in items])
    _, reference, _ = activations(split, data, images)
    x = data.normalize(images)
    async with Node(split, config) as node:
        await node.wait_for_peers(wait_peers, timeout=30)
        results, elapsed = await _drive(node, x, concurrency, f"infer {workload}", progress)
        failed = node.counters.failed
    out = summarize(results, reference, truth)
    out.update(
        {"workload": workload, "dataset": data.name, "requests_per_s": len(items) / elapsed, "failed": failed}
    )
    return out
