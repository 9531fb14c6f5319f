"""The two ways ``bench e2e`` drives a configuration: real nodes over emulated links, and the JPEG offload.

The JPEG baseline still speaks its own frame over a bare WebSocket (an ``InferRequest`` carries float
tensors only); it moves onto the node's protocol when the runtime has an offload message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ccied_p2p.bench.e2e_parts import (
    OFFLOAD_ENCODING,
    PRUNED_ENCODING,
    SECRET,
    SPLIT_ENCODING,
    Parts,
    RunRecord,
    Sample,
    Stream,
)
from ccied_p2p.errors import LocalError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- runners


def _thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


async def _compute_cpu(node: Any) -> float:
    """CPU seconds of the node's compute thread so far (its head and local tails run there)."""
    loop = asyncio.get_running_loop()
    value: float = await loop.run_in_executor(node._compute.executor, _thread_cpu)
    return value


def _pp(fraction: float) -> str:
    """A difference of two accuracies (0..1) in percentage points, signed, never "-0.0"."""
    return f"{round(100 * fraction, 1) + 0.0:+.1f}"


def _force_offload(node: Any) -> None:
    # The asker stands for a device too weak to run the tail: its own tail looks slow to the scheduler (as in
    # bench transport); it is still the fallback if no peer answers.
    node.config.strategy.local_tail_ms = 10_000.0


def _relay_bytes(cluster: Any) -> int:
    total = 0
    for i in range(cluster.n):
        with contextlib.suppress(LocalError):  # no relay in front of node i
            stats = cluster.relay(i).stats
            total += stats.bytes_up + stats.bytes_down
    return total


async def _wait_shared(asker: Any, timeout: float = 15.0) -> int:
    """Wait until the asker's cache stops growing (entries merged from peers); returns its size."""
    last, stable_since = -1, time.monotonic()
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        size = len(asker.cache)
        if size != last:
            last, stable_since = size, time.monotonic()
        elif size > 0 and time.monotonic() - stable_since > 1.0:
            break
        await asyncio.sleep(0.1)
    return last


async def _run_nodes(
    config: str, parts: Parts, stream: Stream, mbit: float, rtt_ms: float, tick: Any
) -> RunRecord:
    from ccied_p2p.runtime.config import CacheConfig, NetworkConfig, StrategyConfig
    from ccied_p2p.testing import LinkSpec, LocalCluster

    options: dict[str, Any] = {"network": NetworkConfig(request_timeout=10.0)}
    split = parts.pruned
    n_nodes = 2
    link: Any = LinkSpec.mbit(mbit, delay=rtt_ms / 2000.0)
    settings = None
    if config == "local":
        split, n_nodes, link = parts.full, 1, None
        options.update(cache=CacheConfig(enabled=False), strategy=StrategyConfig(offload=False))
    elif config == "offload":
        split = parts.whole
        options.update(cache=CacheConfig(enabled=False), strategy=StrategyConfig(encoding=OFFLOAD_ENCODING))
    elif config == "split":
        split = parts.full
        options.update(cache=CacheConfig(enabled=False), strategy=StrategyConfig(encoding=SPLIT_ENCODING))
    elif config == "split_pruned":
        options.update(cache=CacheConfig(enabled=False), strategy=StrategyConfig(encoding=PRUNED_ENCODING))
    elif config == "ccied":
        options.update(cache=CacheConfig(share=False), strategy=StrategyConfig(encoding=PRUNED_ENCODING))
        settings = parts.settings
    elif config == "ccied_shared":
        options.update(
            cache=CacheConfig(share=True),
            strategy=StrategyConfig(encoding=PRUNED_ENCODING),
            load_interval=0.1,
        )
        settings = parts.settings
        n_nodes = 3
    else:
        raise ValueError(config)
    rec = RunRecord()
    async with LocalCluster(
        n_nodes,
        split=split,
        link=link,
        secret=SECRET,
        cache_settings=settings,
        node_options=options,
        startup_timeout=60.0,
    ) as cluster:
        asker = cluster.node(0)
        if n_nodes > 1:
            await asker.wait_for_peers(n_nodes - 1, timeout=30.0)
            for i in range(n_nodes):
                if i != 1:
                    _force_offload(cluster.node(i))
        if config == "ccied_shared":
            other = cluster.node(2)
            await other.wait_for_peers(n_nodes - 1, timeout=30.0)
            await other.infer_batch(stream.warm_x, concurrency=8)
            rec.warm_entries = len(other.cache)
            await _wait_shared(asker)
        # Open the links on held-out inputs, with the asker's cache off, until the tails go to a peer three
        # times in a row: both nodes dial each other at start and one of the two links is then closed.
        cache_on = asker.config.cache.enabled
        asker.config.cache.enabled = False
        warm = stream.warmup_x if stream.warmup_x is not None else stream.x[:4]
        good = 0
        for i in range(40 if n_nodes > 1 else 3):
            try:
                r = await asker.infer(warm[i % len(warm)])
                good = good + 1 if n_nodes == 1 or r.kind == "peer" else 0
            except Exception:  # a link being replaced: try again
                good = 0
            if good >= 3:
                break
            if n_nodes > 1:
                asker._inference.estimators.clear()
                await asyncio.sleep(0.05)
        asker.config.cache.enabled = cache_on
        merged0 = asker.cache.stats().merged if cache_on else 0
        bytes0 = _relay_bytes(cluster)
        cpu0 = await _compute_cpu(asker)
        proc0 = time.process_time()
        start = time.perf_counter()
        on_loop = 0.0
        for i in range(len(stream.x)):
            try:
                r = await asker.infer(stream.x[i])
            except Exception as exc:  # a failed request is counted, not fatal to the bench
                rec.failed += 1
                log.warning("%s request %d failed: %s", config, i, exc)
                tick()
                continue
            on_loop += r.timings.get("lookup", 0.0) + r.timings.get("encode", 0.0)
            rec.samples.append(Sample(i, r.label, r.source, r.latency, dict(r.timings), r.bytes_sent))
            tick()
        rec.wall_s = time.perf_counter() - start
        rec.process_cpu_s = time.process_time() - proc0
        rec.asker_cpu_s = (await _compute_cpu(asker)) - cpu0 + on_loop
        rec.link_bytes = _relay_bytes(cluster) - bytes0
        rec.merged = (asker.cache.stats().merged - merged0) if cache_on else 0
    return rec


_REPLY = struct.Struct("<ifff")  # label, confidence, tail seconds, decode seconds


async def _run_jpeg_offload(
    net: torch.nn.Module, stream: Stream, mbit: float, rtt_ms: float, quality: int, tick: Any
) -> RunRecord:
    """Full offload of camera frames as JPEG over a bare WebSocket behind the same link emulation."""
    import aiohttp
    from aiohttp import web

    from ccied_p2p.camera import jpeg_decode, jpeg_encode, normalize
    from ccied_p2p.testing import LinkSpec, Relay

    assert stream.frames is not None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2e-offload")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(pool, torch.set_num_threads, 1)

    def serve(data: bytes) -> bytes:
        t0 = time.perf_counter()
        x = torch.from_numpy(normalize(jpeg_decode(data)))
        t1 = time.perf_counter()
        with torch.inference_mode():
            probs = torch.softmax(net(x), dim=1)
        conf, label = probs.max(dim=1)
        return _REPLY.pack(int(label), float(conf), time.perf_counter() - t1, t1 - t0)

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 << 20)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(await loop.run_in_executor(pool, serve, msg.data))
        return ws

    app = web.Application()
    app.router.add_get("/jpeg", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.60", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    rec = RunRecord()
    try:
        spec = LinkSpec.mbit(mbit, delay=rtt_ms / 2000.0)
        async with (
            Relay("127.0.1.60", 0, ("127.0.0.60", port), spec=spec, name="jpeg") as relay,
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.1.60:{relay.port}/jpeg", max_msg_size=16 << 20) as ws,
        ):
            for frame in stream.frames[-4:]:  # open the link
                await ws.send_bytes(jpeg_encode(frame, quality))
                await ws.receive()
            bytes0 = relay.stats.bytes_up + relay.stats.bytes_down
            proc0 = time.process_time()
            start = time.perf_counter()
            for i, frame in enumerate(stream.frames[: len(stream.x)]):
                t0 = time.perf_counter()
                c0 = time.thread_time()
                data = jpeg_encode(frame, quality)
                encode_s = time.perf_counter() - t0
                rec.asker_cpu_s += time.thread_time() - c0
                await ws.send_bytes(data)
                reply = await ws.receive()
                total = time.perf_counter() - t0
                if reply.type is not aiohttp.WSMsgType.BINARY:
                    rec.failed += 1
                    tick()
                    continue
                label, _conf, tail_s, decode_s = _REPLY.unpack(reply.data)
                rtt = total - encode_s
                timings = {
                    "encode": encode_s,
                    "decode": decode_s,
                    "tail": tail_s,
                    "transfer": max(0.0, rtt - tail_s - decode_s),
                    "rtt": rtt,
                    "total": total,
                }
                rec.samples.append(Sample(i, label, "peer:jpeg", total, timings, len(data)))
                tick()
            rec.wall_s = time.perf_counter() - start
            rec.process_cpu_s = time.process_time() - proc0
            rec.link_bytes = relay.stats.bytes_up + relay.stats.bytes_down - bytes0
    finally:
        await runner.cleanup()
        pool.shutdown(wait=True)
    return rec
