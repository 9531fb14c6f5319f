"""transport: remote-tail round trip vs a raw aiohttp echo of the same bytes, on loopback.

Two nodes in one process and event loop (asker with its cache off and its own tail made to look slow, so
every request goes to the peer), and a bare aiohttp WebSocket echo server in the same run. Per request:
``overhead = remote round trip - tail compute (as the server timed it) - echo round trip of the same number
of bytes``; medians over ``--requests``. Also requests/s with 1 and 16 requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp
import numpy as np
import torch
from aiohttp import web

__all__ = ["add_arguments", "render", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vgg", choices=["lenet", "vgg"])
    parser.add_argument("--data", default=None)
    parser.add_argument("--amount", type=float, default=0.75)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--encoding", default="sparse-f16-lz4")


async def _echo_server() -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 << 20)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/echo", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from ccied_p2p import datasets
    from ccied_p2p.presets import reference_parts
    from ccied_p2p.runtime.config import CacheConfig, NetworkConfig, NodeConfig, StrategyConfig
    from ccied_p2p.runtime.node import Node

    data = datasets.load(args.data)
    split = reference_parts(args.model, data, amount=args.amount, progress=False)
    x = data.test_x[: args.requests]
    secret = "bench-transport-secret"
    runner, echo_port = await _echo_server()
    try:
        async with (
            Node(
                split,
                NodeConfig(
                    name="server",
                    secret=secret,
                    network=NetworkConfig(mdns=False),
                    cache=CacheConfig(enabled=False),
                ),
            ) as server,
            Node(
                split,
                NodeConfig(
                    name="asker",
                    secret=secret,
                    network=NetworkConfig(mdns=False, seeds=[server.address]),
                    cache=CacheConfig(enabled=False),
                    strategy=StrategyConfig(encoding=args.encoding),
                ),
            ) as asker,
            aiohttp.ClientSession() as session,
        ):
            await asker.wait_for_peers(1)
            asker.config.strategy.local_tail_ms = (
                10_000.0  # a device whose own tail is slow: every request goes to the peer
            )
            async with session.ws_connect(
                f"http://127.0.0.1:{echo_port}/echo", max_msg_size=16 << 20
            ) as echo:
                rtts, tails, echos, overheads, sizes = [], [], [], [], []
                for i in range(min(50, len(x))):  # warm-up
                    await asker.infer(x[i])
                for i in range(len(x)):
                    r = await asker.infer(x[i])
                    if r.kind != "peer":
                        continue
                    rtt = r.timings["rtt"]  # from handing the request to the link to holding the answer
                    payload = b"\0" * r.bytes_sent
                    t0 = time.perf_counter()
                    await echo.send_bytes(payload)
                    await echo.receive()
                    echo_rtt = time.perf_counter() - t0
                    rtts.append(rtt)
                    tails.append(r.timings["tail"])
                    echos.append(echo_rtt)
                    overheads.append(rtt - r.timings["tail"] - echo_rtt)
                    sizes.append(r.bytes_sent)

            async def throughput(in_flight: int, n: int) -> float:
                sem = asyncio.Semaphore(in_flight)

                async def one(i: int) -> None:
                    async with sem:
                        await asker.infer(x[i % len(x)])

                start = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(n)))
                return n / (time.perf_counter() - start)

            rps_1 = await throughput(1, min(500, len(x)))
            rps_16 = await throughput(16, min(1000, 2 * len(x)))
            failed = asker.counters.failed
    finally:
        await runner.cleanup()
    ms = 1000.0
    return {
        "model": args.model,
        "dataset": data.name,
        "encoding": args.encoding,
        "requests": len(rtts),
        "bytes_per_request": statistics.mean(sizes) if sizes else 0,
        "raw_bytes": split.activation_bytes,
        "rtt_p50_ms": _pct(rtts, 50) * ms,
        "rtt_p95_ms": _pct(rtts, 95) * ms,
        "tail_p50_ms": _pct(tails, 50) * ms,
        "echo_p50_ms": _pct(echos, 50) * ms,
        "overhead_p50_ms": _pct(overheads, 50) * ms,
        "overhead_p95_ms": _pct(overheads, 95) * ms,
        "rps_1": rps_1,
        "rps_16": rps_16,
        "failed": failed,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    return asyncio.run(_measure(args))


def render(result: dict[str, Any]) -> str:
    r = result
    return "\n".join(
        [
            f"{r['model']} on {r['dataset']}, {r['encoding']}: {r['bytes_per_request']:.0f} B per request "
            f"(raw fp32 {r['raw_bytes']} B), {r['requests']} requests",
            f"remote tail round trip  p50 {r['rtt_p50_ms']:.3f} ms  p95 {r['rtt_p95_ms']:.3f} ms",
            f"tail compute            p50 {r['tail_p50_ms']:.3f} ms",
            f"raw aiohttp echo        p50 {r['echo_p50_ms']:.3f} ms",
            f"framework overhead      p50 {r['overhead_p50_ms']:.3f} ms  p95 {r['overhead_p95_ms']:.3f} ms",
            f"requests/s: {r['rps_1']:.0f} with 1 in flight, {r['rps_16']:.0f} with 16 (failed {r['failed']})",
        ]
    )
