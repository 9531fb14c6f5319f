"""How ``bench e2e`` drives a configuration: real nodes over emulated links, tensors (``infer``) or camera frames
offloaded as JPEG (``infer_frame``, the ``InferInput`` message)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

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
        await _measure(cluster, asker, rec, config, len(stream.x), lambda i: asker.infer(stream.x[i]), tick)
        rec.merged = (asker.cache.stats().merged - merged0) if cache_on else 0
    return rec


async def _measure(
    cluster: Any,
    asker: Any,
    rec: RunRecord,
    what: str,
    n: int,
    ask: Callable[[int], Awaitable[Any]],
    tick: Any,
    expect: str | None = None,
) -> None:
    """Run requests ``ask(0) .. ask(n - 1)`` in order into ``rec``: a sample each, the wall and CPU time, the bytes
    the link carried. A request that fails, or that ``expect``'s strategy did not answer, counts as failed."""
    bytes0 = _relay_bytes(cluster)
    cpu0 = await _compute_cpu(asker)
    proc0 = time.process_time()
    start = time.perf_counter()
    on_loop = 0.0
    for i in range(n):
        try:
            r = await ask(i)
        except Exception as exc:  # a failed request is counted, not fatal to the bench
            rec.failed += 1
            log.warning("%s request %d failed: %s", what, i, exc)
            tick()
            continue
        if expect is not None and r.strategy != expect:
            rec.failed += 1  # answered, but by the asker's own fallback: not what this row measures
            log.warning("%s request %d answered by %s", what, i, r.strategy)
        timings = dict(r.timings)
        if "jpeg" in timings:  # an offload's JPEG encode is its encode stage, beside the message framing
            timings["encode"] = timings.get("encode", 0.0) + timings.pop("jpeg")
        on_loop += timings.get("lookup", 0.0) + timings.get("encode", 0.0)
        rec.samples.append(Sample(i, r.label, r.source, r.latency, timings, r.bytes_sent))
        tick()
    rec.wall_s = time.perf_counter() - start
    rec.process_cpu_s = time.process_time() - proc0
    rec.asker_cpu_s = (await _compute_cpu(asker)) - cpu0 + on_loop
    rec.link_bytes = _relay_bytes(cluster) - bytes0


async def _run_input_offload(
    parts: Parts, stream: Stream, mbit: float, rtt_ms: float, quality: int, tick: Any
) -> RunRecord:
    """Full offload of camera frames as JPEG through two nodes (``InferInput``) behind the same link emulation:
    the asker sends each frame at the model's input size, the peer decodes it and runs the whole model."""
    from ccied_p2p.inputs import LITE_SPEC
    from ccied_p2p.runtime.config import CacheConfig, NetworkConfig, StrategyConfig
    from ccied_p2p.strategy import Strategy
    from ccied_p2p.testing import LinkSpec, LocalCluster

    assert stream.frames is not None
    options: dict[str, Any] = {
        "network": NetworkConfig(request_timeout=10.0),
        "cache": CacheConfig(enabled=False),
        "strategy": StrategyConfig(input_spec=LITE_SPEC, offload_format="jpeg", jpeg_quality=quality),
    }
    rec = RunRecord()
    async with LocalCluster(
        2,
        split=parts.full,
        link=LinkSpec.mbit(mbit, delay=rtt_ms / 2000.0),
        secret=SECRET,
        node_options=options,
        startup_timeout=60.0,
    ) as cluster:
        asker = cluster.node(0)
        await asker.wait_for_peers(1, timeout=30.0)
        good = 0
        for i in range(40):  # open the link on held-out frames until three in a row went to the peer
            frame = stream.frames[-1 - i % 4]
            try:
                r = await asker.infer_frame(frame, only=Strategy.OFFLOAD)
                good = good + 1 if r.strategy == "offload" else 0
            except Exception:  # a link being replaced: try again
                good = 0
            if good >= 3:
                break
            await asyncio.sleep(0.05)
        frames = stream.frames
        await _measure(
            cluster,
            asker,
            rec,
            "offload",
            len(stream.x),
            lambda i: asker.infer_frame(frames[i], only=Strategy.OFFLOAD),
            tick,
            expect="offload",
        )
    return rec
