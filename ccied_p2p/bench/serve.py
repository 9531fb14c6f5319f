"""serve: tail serving with dynamic batching vs batch-1, requests/s at saturation and p50 at low load.

The server is a real ``ccied-p2p serve`` process; this process is a bare authenticated client that sends
pre-encoded activations (no head work here, so the client costs little CPU). Saturation: ``--in-flight``
requests outstanding; low load: one at a time. Both servers run in the same invocation, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

__all__ = ["add_arguments", "render", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="lenet,vgg", help="comma-separated reference models")
    parser.add_argument("--data", default=None)
    parser.add_argument("--amount", type=float, default=0.75)
    parser.add_argument("--requests", type=int, default=3000, help="requests at saturation, per server")
    parser.add_argument("--low-load", type=int, default=300, help="sequential requests for the p50")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)


async def _client(address: str, secret: str, fingerprint: str, split_at: str) -> Any:
    import aiohttp

    from ccied_p2p.codec.auth import Role, new_nonce
    from ccied_p2p.codec.messages import Ack, Hello, Ping
    from ccied_p2p.codec.tensor import DEFAULT_LIMITS
    from ccied_p2p.runtime.transport import PROTOCOL_VERSION, WS_PATH, Link, handshake

    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"http://{address}{WS_PATH}", max_msg_size=16 << 20)
    me = Hello(os.urandom(16), "bench-client", fingerprint, PROTOCOL_VERSION, new_nonce(), 1)
    opened = await handshake(ws, Role.INITIATOR, me, secret, DEFAULT_LIMITS)

    async def answer_probes(link: Link, msg: object, _decode_s: float) -> None:
        # The server runs SWIM over the link: a client that never acks would be declared dead.
        if isinstance(msg, Ping):
            await link.send(Ack(msg.seq, me.node_id))

    link = Link(ws, opened, answer_probes, max_in_flight=1024)
    return session, link


async def _start_server(
    args: argparse.Namespace, model: str, max_batch: int, data_name: str, secret: str
) -> tuple[asyncio.subprocess.Process, str]:
    from ccied_p2p.launch import start_serve

    return await start_serve(
        ["serve", "--model", model, "--data", data_name, "--amount", str(args.amount), "--no-mdns",
         "--max-batch", str(max_batch), "--name", f"bench-{max_batch}"],
        {**os.environ, "CCIED_SECRET": secret},
        timeout=600,
    )  # fmt: skip


async def _compare(
    args: argparse.Namespace, model: str, acts: np.ndarray[Any, Any], fp: str, split_at: str, data_name: str
) -> dict[str, float]:
    """Both servers up at once; low-load and saturation runs alternate between them, medians per server."""
    from ccied_p2p.codec.messages import InferRequest
    from ccied_p2p.launch import stop_serve

    secret = "bench-serve-secret"
    procs: list[asyncio.subprocess.Process] = []
    clients: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for max_batch in (args.max_batch, 1):
            proc, address = await _start_server(args, model, max_batch, data_name, secret)
            procs.append(proc)
            session, link = await _client(address, secret, fp, split_at)
            clients.append((session, link))
            tasks.append(asyncio.ensure_future(link.run()))

        async def one(link: Any, i: int) -> float:
            start = time.perf_counter()
            await link.request(
                InferRequest(0, fp, split_at, acts[i % len(acts)][None], "sparse-f16-lz4"), 30.0
            )
            return time.perf_counter() - start

        async def saturate(link: Any) -> float:
            sem = asyncio.Semaphore(args.in_flight)

            async def limited(i: int) -> float:
                async with sem:
                    return await one(link, i)

            start = time.perf_counter()
            await asyncio.gather(*(limited(i) for i in range(args.requests)))
            return float(args.requests) / (time.perf_counter() - start)

        for _, link in clients:  # warm-up
            for i in range(100):
                await one(link, i)
        low: list[list[float]] = [[], []]
        rps: list[list[float]] = [[], []]
        block = max(1, args.low_load // 10)
        for _ in range(10):
            for k, (_, link) in enumerate(clients):
                low[k] += [await one(link, i) for i in range(block)]
        for _ in range(args.repeats):
            for k, (_, link) in enumerate(clients):
                rps[k].append(await saturate(link))
    finally:
        for _, link in clients:
            await link.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session, _ in clients:
            await session.close()
        for proc in procs:
            await stop_serve(proc)
    return {
        "rps_batched": statistics.median(rps[0]),
        "rps_batch1": statistics.median(rps[1]),
        "p50_low_load_ms_batched": statistics.median(low[0]) * 1000,
        "p50_low_load_ms_batch1": statistics.median(low[1]) * 1000,
    }


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from ccied_p2p import datasets
    from ccied_p2p.presets import reference_parts

    data = datasets.load(args.data)
    out: dict[str, Any] = {
        "dataset": data.name,
        "in_flight": args.in_flight,
        "max_batch": args.max_batch,
        "models": {},
    }
    for model in [m for m in args.models.split(",") if m]:
        split = reference_parts(model, data, amount=args.amount, progress=False)
        acts = split.head(data.test_x[:512]).numpy()
        r = await _compare(args, model, acts, split.fingerprint, split.split_at, data.name)
        out["models"][model] = {**r, "speedup": r["rps_batched"] / r["rps_batch1"]}
    first = next(iter(out["models"].values()))
    out.update(
        {
            k: first[k]
            for k in ("rps_batched", "rps_batch1", "p50_low_load_ms_batched", "p50_low_load_ms_batch1")
        }
    )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    return asyncio.run(_measure(args))


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{result['dataset']}: {result['in_flight']} in flight at saturation, max batch {result['max_batch']}",
        f"{'model':<6} {'rps batched':>11} {'rps batch-1':>11} {'speedup':>7} {'p50 low ms (b)':>14} {'p50 low ms (1)':>14}",
    ]
    for model, r in result["models"].items():
        lines.append(
            f"{model:<6} {r['rps_batched']:>11.0f} {r['rps_batch1']:>11.0f} {r['speedup']:>7.2f} "
            f"{r['p50_low_load_ms_batched']:>14.3f} {r['p50_low_load_ms_batch1']:>14.3f}"
        )
    return "\n".join(lines)
