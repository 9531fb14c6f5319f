"""sharing: collaborative cache on non-IID device streams, hit rate with sharing vs without.

Three nodes in one process on loopback, each streaming its own camera (mostly its own classes, with overlap:
``workloads.device_streams``) at the same time; the same run is done with cache sharing on and off. Reports the
hit rate and the agreement of hits with the uncached model (which the calibration holds near its budget).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import numpy as np
import torch

__all__ = ["add_arguments", "render", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vgg", choices=["lenet", "vgg"])
    parser.add_argument("--data", default=None)
    parser.add_argument("--amount", type=float, default=0.75)
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1500, help="requests per device")
    parser.add_argument("--pool", type=int, default=300, help="images in each device's pool")
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second per device")
    parser.add_argument(
        "--scenes",
        choices=["shared", "independent"],
        default="shared",
        help="shared: the overlap part of every pool is one common set of images (cameras that see the same "
        "things); independent: each device draws its own (workloads.device_streams)",
    )


async def _one_run(
    args: argparse.Namespace, share: bool, split: Any, data: Any, settings: Any, streams: list[Any]
) -> dict[str, Any]:
    from ccied_p2p.runtime.config import CacheConfig, NetworkConfig, NodeConfig
    from ccied_p2p.runtime.node import InferenceResult, Node

    secret = "bench-sharing-secret"
    nodes: list[Node] = []
    try:
        for d in range(args.devices):
            seeds = [nodes[0].address] if nodes else []
            config = NodeConfig(
                name=f"dev{d}",
                secret=secret,
                load_interval=0.25,
                network=NetworkConfig(mdns=False, seeds=seeds),
                cache=settings.config(CacheConfig(share=share)),
            )
            node = Node(split, config)
            await node.start()
            nodes.append(node)
        for node in nodes:
            await node.wait_for_peers(args.devices - 1)

        async def device(d: int) -> list[tuple[InferenceResult, int]]:
            x, ref = streams[d]
            out = []
            period = 1.0 / args.rate
            start = time.perf_counter()
            for i in range(len(x)):
                delay = start + i * period - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                r = await nodes[d].infer(x[i])
                out.append((r, int(ref[i])))
            return out

        per_device = await asyncio.gather(*(device(d) for d in range(args.devices)))
        merged = sum(n.cache.stats().merged for n in nodes)
    finally:
        for node in nodes:
            await node.close()
    flat = [pair for dev in per_device for pair in dev]
    hits = [(r, ref) for r, ref in flat if r.kind == "cache"]
    return {
        "hit_rate": len(hits) / len(flat),
        "hit_agreement": sum(r.label == ref for r, ref in hits) / len(hits) if hits else None,
        "agreement": sum(r.label == ref for r, ref in flat) / len(flat),
        "hit_rate_per_device": [sum(r.kind == "cache" for r, _ in dev) / len(dev) for dev in per_device],
        "entries_merged": merged,
        "failed": 0,
    }


def _shared_scene_streams(data: Any, args: argparse.Namespace, seed: int = 7) -> list[list[Any]]:
    """Per device: ``1 - overlap`` of the pool from its own two classes, ``overlap`` from one common set."""
    from ccied_p2p.workloads import CameraParams, StreamItem, perturb, zipf_weights

    params = CameraParams(pool_size=args.pool)
    rng = np.random.default_rng(seed)
    labels = data.test_labels
    n_shared = round(args.pool * args.overlap)
    shared = rng.choice(len(labels), size=n_shared, replace=False)
    streams = []
    for d in range(args.devices):
        own = np.flatnonzero(np.isin(labels, [(2 * d) % 10, (2 * d + 1) % 10]))
        own = np.setdiff1d(own, shared)
        pool = np.concatenate([rng.choice(own, size=args.pool - n_shared, replace=False), shared])
        pool = rng.permutation(pool)
        picks = pool[rng.choice(len(pool), size=args.requests, p=zipf_weights(len(pool), params.zipf_s))]
        streams.append(
            [
                StreamItem(int(i), perturb(data.test_images[int(i)], params, rng), int(labels[int(i)]))
                for i in picks
            ]
        )
    return streams


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from ccied_p2p import datasets
    from ccied_p2p.presets import activations, calibrate, reference_parts
    from ccied_p2p.workloads import CameraParams, device_streams

    data = datasets.load(args.data)
    split = reference_parts(args.model, data, amount=args.amount, progress=False)
    settings, _ = calibrate(split, data)
    params = CameraParams(pool_size=args.pool)
    streams = []
    raw = (
        _shared_scene_streams(data, args)
        if args.scenes == "shared"
        else [
            list(it)
            for it in device_streams(
                data.test_images,
                data.test_labels,
                args.devices,
                args.requests,
                params,
                seed=7,
                overlap=args.overlap,
            )
        ]
    )
    for items in raw:
        images = np.stack([s.image for s in items])
        _, ref, _ = activations(split, data, images)
        streams.append((data.normalize(images), ref))
    off = await _one_run(args, False, split, data, settings, streams)
    on = await _one_run(args, True, split, data, settings, streams)
    return {
        "model": args.model,
        "dataset": data.name,
        "devices": args.devices,
        "requests_per_device": args.requests,
        "overlap": args.overlap,
        "scenes": args.scenes,
        "calibration": {
            "threshold": settings.threshold,
            "k": settings.k,
            "votes": settings.votes,
            "budget": 0.01,
        },
        "without_sharing": off,
        "with_sharing": on,
        "hit_rate_without": off["hit_rate"],
        "hit_rate_with": on["hit_rate"],
        "hit_agreement_with": on["hit_agreement"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    return asyncio.run(_measure(args))


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} on {result['dataset']}: {result['devices']} devices x {result['requests_per_device']} "
        f"requests, non-IID (overlap {result['overlap']}, {result['scenes']} scenes)",
        f"{'sharing':<8} {'hit rate':>8} {'hit agreement':>13} {'agreement':>9} {'merged':>7}  per device",
    ]
    for name, key in (("off", "without_sharing"), ("on", "with_sharing")):
        r = result[key]
        agree = "-" if r["hit_agreement"] is None else f"{r['hit_agreement']:.4f}"
        per = " ".join(f"{h:.3f}" for h in r["hit_rate_per_device"])
        lines.append(
            f"{name:<8} {r['hit_rate']:>8.3f} {agree:>13} {r['agreement']:>9.4f} {r['entries_merged']:>7}  {per}"
        )
    return "\n".join(lines)
