"""e2e: CCIED against the baselines a user would pick, end to end over emulated edge links (paper-style).

Every configuration runs once on the same requests, one request in flight, from an asking node to peers
behind the link emulator (:class:`~ccied_p2p.testing.LocalCluster`: user-space relays with rate and delay):

============== =====================================================================================
local          the whole model on the asking node (no network)
offload        the raw input to a peer that runs the whole model (28x28: the normalised image as
               dense-f16-lz4 through a head that is the identity; camera frames: JPEG, quality 90, over a
               bare WebSocket behind the same relay, since an InferRequest carries float tensors only)
split          Neurosurgeon-style: head on the asker, the unpruned activation as dense float32, tail on a peer
split_pruned   the split layer pruned (fine-tuned), the activation as sparse-f16-lz4, no cache
ccied          split_pruned plus the asker's semantic cache (calibrated on a stream of another seed)
ccied_shared   ccied plus cache sharing: a second camera of the same scene (other captures) ran first, and
               its entries reach the asker by the nodes' anti-entropy
============== =====================================================================================

The asker is made to offload every tail (it stands for a device too weak to run it; on this machine its own
tail would be as fast as the peer's), like ``bench transport``. Workloads: the camera stream (redundant) and
the control stream (each test image once) on Fashion-MNIST with the VGG and LeNet references, over 1, 10 and
100 Mbit/s links of 20 ms round trip; and a camera-resolution workload: the pretrained EfficientNet-Lite0 on a
virtual camera over real photos (:mod:`ccied_p2p.camera`), scored by agreement with the uncached model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime as _dt
import logging
import os
import platform
import resource
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ccied_p2p.report import CONFIG_ORDER, STAGES

__all__ = ["CONFIGS", "add_arguments", "render", "run"]

log = logging.getLogger(__name__)

CONFIGS = CONFIG_ORDER  # the six configurations, in the order every table and plot shows them
SECRET = "bench-e2e-cluster-secret"
OFFLOAD_ENCODING = "dense-f16-lz4"
SPLIT_ENCODING = "dense-f32"
PRUNED_ENCODING = "sparse-f16-lz4"
EFFNET = "efficientnet-lite0"
EFFNET_SPLIT = "_avg_pooling"
EFFNET_CUTS = ("_blocks.3._bn2", "_blocks.5._bn2", "_blocks.11._bn2", "_blocks.15._bn2", "_avg_pooling")
# The largest amount each model prunes at within 1 pp on the clean test set (``ccied-p2p prune --curve``):
# LeNet's split layer has 6 channels, and keeping 2 of them (75%) costs it 1.05 pp.
DEFAULT_AMOUNT = {"vgg": 0.75, "lenet": 0.5}
CALIBRATION_SEED = 10_000
STREAM_SEED = 1
WARM_SEED = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="data set (default: the best one present)")
    parser.add_argument("--quick", action="store_true", help="headline combination only, fewer requests (CI)")
    parser.add_argument("--plots", default=None, metavar="DIR", help="write report.md and PNG plots here")
    parser.add_argument("--models", default="vgg,lenet", help="comma-separated: vgg, lenet")
    parser.add_argument("--workloads", default="camera,control", help="comma-separated: camera, control")
    parser.add_argument("--links", default="1,10,100", help="link rates in Mbit/s, comma-separated")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round trip of every link (ms)")
    parser.add_argument(
        "--amount",
        type=float,
        default=None,
        help="split-layer pruning amount (default per model: "
        + ", ".join(f"{m} {a:g}" for m, a in DEFAULT_AMOUNT.items())
        + ")",
    )
    parser.add_argument("--requests", type=int, default=None, help="requests of the headline combination")
    parser.add_argument(
        "--sweep-requests", type=int, default=None, help="requests of every other combination"
    )
    parser.add_argument(
        "--effnet-requests", type=int, default=None, help="camera-resolution requests (0: skip)"
    )
    parser.add_argument("--effnet-split", default=EFFNET_SPLIT, help="EfficientNet-Lite0 cut")
    parser.add_argument(
        "--false-hit-budget", type=float, default=0.01, help="cache calibration: most false hits per hit"
    )


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class Parts:
    """Everything one model needs in every configuration."""

    name: str
    full: Any  # SplitModel, unpruned, at the default cut
    pruned: Any  # SplitModel, split layer pruned (the same object as ``full`` when nothing is pruned)
    whole: Any | None  # SplitModel cut at the input (offload through a node); None: JPEG offload
    settings: Any  # CacheSettings
    calibration: Any  # Calibration
    amount: float
    calibrate_s: float = 0.0


@dataclass
class Stream:
    """One workload's requests for the asker, with the reference answers, and the second camera's."""

    workload: str
    x: torch.Tensor
    labels: npt.NDArray[np.int64] | None
    reference: npt.NDArray[np.int64]  # the uncached, unpruned model on the asker's inputs
    pruned_reference: npt.NDArray[np.int64]  # the uncached pruned model (what a cache hit should say)
    warm_x: torch.Tensor
    frames: npt.NDArray[np.uint8] | None = None  # camera-resolution frames, for the JPEG offload
    warmup_x: torch.Tensor | None = None  # a few held-out inputs to open the links with


@dataclass
class Sample:
    index: int  # position in the stream
    label: int
    source: str
    latency: float
    timings: dict[str, float]
    bytes_sent: int


@dataclass
class RunRecord:
    samples: list[Sample] = field(default_factory=list)
    failed: int = 0
    wall_s: float = 0.0
    asker_cpu_s: float = 0.0
    process_cpu_s: float = 0.0
    link_bytes: int = 0
    merged: int = 0
    warm_entries: int = 0


def _labels(split: Any, x: torch.Tensor, batch: int = 500) -> tuple[npt.NDArray[np.int64], Any]:
    outs = []
    for i in range(0, len(x), batch):
        outs.append(split(x[i : i + batch]))
    logits = torch.cat(outs) if outs else torch.zeros(0)
    return logits.argmax(1).numpy().astype(np.int64), logits


def _same_scene(data: Any, n: int, seed: int, other_seed: int) -> npt.NDArray[np.uint8]:
    """Another camera's captures of the scene ``camera_stream(seed=seed)`` sees: same pool and popularity."""
    from ccied_p2p.workloads import CameraParams, perturb, zipf_weights

    params = CameraParams()
    rng_scene = np.random.default_rng(seed)  # replays camera_stream's first two draws: the pool, its ranking
    pool = rng_scene.choice(len(data.test_images), size=params.pool_size, replace=False)
    ranked = rng_scene.permutation(pool)
    rng = np.random.default_rng(other_seed)
    picks = ranked[rng.choice(len(ranked), size=n, p=zipf_weights(len(ranked), params.zipf_s))]
    return np.stack([perturb(data.test_images[int(i)], params, rng) for i in picks])


def _stream_28(data: Any, parts: Parts, workload: str, n: int, warm: int) -> Stream:
    from ccied_p2p.workloads import camera_stream, collect, control_stream

    if workload == "camera":
        _, images, labels = collect(camera_stream(data.test_images, data.test_labels, n, seed=STREAM_SEED))
        warm_images = _same_scene(data, warm, STREAM_SEED, WARM_SEED)
        _, held, _ = collect(camera_stream(data.test_images, data.test_labels, 8, seed=CALIBRATION_SEED + 1))
    else:
        _, images_all, labels_all = collect(
            control_stream(data.test_images, data.test_labels, seed=STREAM_SEED, limit=n + warm + 8)
        )
        images, labels = images_all[:n], labels_all[:n]
        warm_images = images_all[n : n + warm]
        held = images_all[n + warm :]
    x = data.normalize(images)
    ref, _ = _labels(parts.full, x)
    pref, _ = _labels(parts.pruned, x)
    return Stream(
        workload,
        x,
        labels.astype(np.int64),
        ref,
        pref,
        data.normalize(warm_images),
        warmup_x=data.normalize(held),
    )


# ---------------------------------------------------------------------------------------------- runners


def _thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


async def _compute_cpu(node: Any) -> float:
    """CPU seconds of the node's compute thread so far (its head and local tails run there)."""
    loop = asyncio.get_running_loop()
    value: float = await loop.run_in_executor(node._executor, _thread_cpu)
    return value


def _pp(fraction: float) -> str:
    """A difference of two accuracies (0..1) in percentage points, signed, never "-0.0"."""
    return f"{round(100 * fraction, 1) + 0.0:+.1f}"


def _force_offload(node: Any) -> None:
    # The asker stands for a device too weak to run the tail: its own tail looks slow to the scheduler (as in
    # bench transport); it is still the fallback if no peer answers.
    node.config.local_tail_ms = 10_000.0


def _relay_bytes(cluster: Any) -> int:
    total = 0
    for i in range(cluster.n):
        with contextlib.suppress(Exception):
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
    from ccied_p2p.testing import LinkSpec, LocalCluster

    options: dict[str, Any] = {"request_timeout": 10.0}
    split = parts.pruned
    n_nodes = 2
    link: Any = LinkSpec.mbit(mbit, delay=rtt_ms / 2000.0)
    settings = None
    if config == "local":
        split, n_nodes, link = parts.full, 1, None
        options.update(cache=False, offload=False)
    elif config == "offload":
        split = parts.whole
        options.update(cache=False, encoding=OFFLOAD_ENCODING)
    elif config == "split":
        split = parts.full
        options.update(cache=False, encoding=SPLIT_ENCODING)
    elif config == "split_pruned":
        options.update(cache=False, encoding=PRUNED_ENCODING)
    elif config == "ccied":
        options.update(cache=True, share_cache=False, encoding=PRUNED_ENCODING)
        settings = parts.settings
    elif config == "ccied_shared":
        options.update(cache=True, share_cache=True, encoding=PRUNED_ENCODING, load_interval=0.1)
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
            await other.infer(stream.warm_x, concurrency=8)
            rec.warm_entries = len(other.cache)
            await _wait_shared(asker)
        # Open the links on held-out inputs, with the asker's cache off, until the tails go to a peer three
        # times in a row: both nodes dial each other at start and one of the two links is then closed.
        cache_on = asker.config.cache
        asker.config.cache = False
        warm = stream.warmup_x if stream.warmup_x is not None else stream.x[:4]
        good = 0
        for i in range(40 if n_nodes > 1 else 3):
            try:
                r = await asker.infer(warm[i % len(warm)])
                good = good + 1 if n_nodes == 1 or getattr(r, "source", "").startswith("peer:") else 0
            except Exception:  # a link being replaced: try again
                good = 0
            if good >= 3:
                break
            if n_nodes > 1:
                asker._estimators.clear()
                await asyncio.sleep(0.05)
        asker.config.cache = cache_on
        merged0 = asker.cache.stats().merged if cache_on else 0
        bytes0 = _relay_bytes(cluster)
        cpu0 = await _compute_cpu(asker)
        proc0 = time.process_time()
        start = time.perf_counter()
        on_loop = 0.0
        for i in range(len(stream.x)):
            try:
                r = await asker.infer(stream.x[i])
                assert not isinstance(r, list)
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


# ---------------------------------------------------------------------------------------------- metrics


def _ms(values: Sequence[float]) -> float | None:
    return float(statistics.fmean(values) * 1000.0) if values else None


def _pct_ms(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q) * 1000.0) if values else None


def _metrics(rec: RunRecord, stream: Stream, keep_latencies: bool) -> dict[str, Any]:
    s = rec.samples
    n = len(s)
    labels = np.array([x.label for x in s], dtype=np.int64)
    idx = np.array([x.index for x in s], dtype=np.int64)
    lat = [x.latency for x in s]
    hits = [x for x in s if x.source == "cache"]
    misses = [x for x in s if x.source != "cache"]
    sent = [x.bytes_sent for x in s]
    moved = [b for b in sent if b > 0]
    stages = {k: (_ms([x.timings.get(k, 0.0) for x in s]) or 0.0) for k in STAGES}
    hit_agree = [x.label == int(stream.pruned_reference[x.index]) for x in hits]
    out: dict[str, Any] = {
        "requests": n,
        "failed": rec.failed,
        "accuracy": float(np.mean(labels == stream.labels[idx])) if stream.labels is not None and n else None,
        "agreement": float(np.mean(labels == stream.reference[idx])) if n else None,
        "hit_rate": len(hits) / n if n else 0.0,
        "hit_agreement": float(np.mean(hit_agree)) if hit_agree else None,
        "bytes_per_request": float(np.mean(sent)) if n else 0.0,
        "bytes_per_transfer": float(np.mean(moved)) if moved else 0.0,
        "link_bytes_per_request": rec.link_bytes / n if n else 0.0,
        "latency_mean_ms": _ms(lat),
        "latency_p50_ms": _pct_ms(lat, 50),
        "latency_p95_ms": _pct_ms(lat, 95),
        "latency_p99_ms": _pct_ms(lat, 99),
        "hit_latency_mean_ms": _ms([x.latency for x in hits]),
        "hit_latency_p50_ms": _pct_ms([x.latency for x in hits], 50),
        "miss_latency_mean_ms": _ms([x.latency for x in misses]),
        "miss_latency_p50_ms": _pct_ms([x.latency for x in misses], 50),
        "requests_per_s": n / rec.wall_s if rec.wall_s > 0 else None,
        "cpu_ms_per_request": rec.asker_cpu_s * 1000.0 / n if n else None,
        "process_cpu_ms_per_request": rec.process_cpu_s * 1000.0 / n if n else None,
        "stages_ms": stages,
        "sources": {
            src: sum(1 for x in s if x.source.split(":")[0] == src) for src in ("cache", "local", "peer")
        },
    }
    if rec.warm_entries or rec.merged:
        out["warm_entries"] = rec.warm_entries
        out["merged_during_run"] = rec.merged
    if keep_latencies:
        out["latencies_ms"] = [round(v * 1000.0, 3) for v in lat]
        out["hit_flags"] = [x.source == "cache" for x in s]
    return out


# ---------------------------------------------------------------------------------------------- parts


def _parts_28(model: str, data: Any, amount: float, calib_requests: int, budget: float = 0.01) -> Parts:
    from ccied_p2p import models
    from ccied_p2p.presets import calibrate
    from ccied_p2p.split import SplitModel

    full = models.reference_split(model, data, amount=0, progress=False)
    pruned = models.reference_split(model, data, amount=amount, progress=False)
    net = models.reference(model, data, progress=False)
    whole = SplitModel.from_module(net, split_at="x", example_input=data.test_x[:1], name=f"{model}-whole")
    t0 = time.perf_counter()
    settings, cal = calibrate(pruned, data, requests=calib_requests, max_false_hit_rate=budget)
    return Parts(model, full, pruned, whole, settings, cal, amount, time.perf_counter() - t0)


def _bn_prune_agreement(
    split: Any, x: torch.Tensor, ref: npt.NDArray[np.int64], amounts: Sequence[float]
) -> dict[str, float]:
    """Agreement after zeroing the weakest channels of the BatchNorm at the cut, with no fine-tuning."""
    out: dict[str, float] = {}
    for amount in amounts:
        head = copy.deepcopy(split.head_module)
        modules = dict(head.named_modules())
        # The last BatchNorm before the cut (what comes after it maps zero channels to zeros here: ReLU6,
        # pooling).
        bn = next(
            (
                modules[str(node.target)]
                for node in reversed(list(head.graph.nodes))
                if node.op == "call_module"
                and isinstance(modules.get(str(node.target)), torch.nn.BatchNorm2d)
            ),
            None,
        )
        if not isinstance(bn, torch.nn.BatchNorm2d) or bn.running_var is None:
            break
        importance = bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps)
        drop = importance.argsort()[: round(amount * len(importance))]
        with torch.no_grad():
            bn.weight[drop] = 0.0
            bn.bias[drop] = 0.0
        with torch.inference_mode():
            got = torch.cat([split.tail(head(x[i : i + 32])) for i in range(0, len(x), 32)]).argmax(1)
        out[f"{amount:g}"] = float(np.mean(got.numpy() == ref))
    return out


def _effnet_planner(
    net: torch.nn.Module, x: torch.Tensor, jpeg_bytes: float, hit: float, mbit: float, rtt_ms: float
) -> dict[str, Any]:
    """The planner over EfficientNet-Lite0 block boundaries, with wire ratios measured on camera frames."""
    from ccied_p2p.codec.tensor import encode_tensor
    from ccied_p2p.planner import Link, PruneOption, plan
    from ccied_p2p.split import SplitModel

    options: dict[str, list[PruneOption]] = {}
    profile = None
    for cut in EFFNET_CUTS:
        split = SplitModel.from_module(net, split_at=cut, example_input=x[:1], name=EFFNET)
        if profile is None:
            profile = split.profile(repeats=5, x=x[:1])
        with torch.inference_mode():
            acts = split.head(x[:16]).numpy()
        raw = float(split.activation_bytes)
        sizes = {
            e: float(np.mean([len(encode_tensor(a[None], e)) for a in acts]))
            for e in (SPLIT_ENCODING, PRUNED_ENCODING)
        }
        options[cut] = [PruneOption(0.0, sizes[e] / raw, 0.0, True, e) for e in sizes]
    assert profile is not None
    plans = plan(profile, Link.mbit(mbit, rtt_ms), hit, options, input_wire_bytes=jpeg_bytes)
    best_split = min((p for p in plans if p.kind == "split"), key=lambda p: p.expected_ms)
    return {
        "link": {"mbit": mbit, "rtt_ms": rtt_ms},
        "hit_rate": hit,
        "recommendation": {"label": plans[0].label, "expected_ms": plans[0].expected_ms},
        "recommended_split": {"label": best_split.label, "expected_ms": best_split.expected_ms},
        "plans": [
            {"label": p.label, "expected_ms": p.expected_ms, "wire_bytes": p.wire_bytes} for p in plans[:10]
        ],
    }


def _effnet(
    split_at: str, n: int, warm: int, calib: int, budget: float = 0.01
) -> tuple[Parts, Stream, torch.nn.Module, dict[str, Any]]:
    from ccied_p2p import models
    from ccied_p2p.cache import SemanticCache
    from ccied_p2p.camera import jpeg_encode, normalize, render, sample_photos, virtual_camera
    from ccied_p2p.presets import CacheSettings, reducer_for
    from ccied_p2p.split import SplitModel

    net = models.efficientnet_lite0()
    photos = sample_photos()

    def frames(count: int, seed: int) -> npt.NDArray[np.uint8]:
        return np.stack([f.image for f in virtual_camera(photos, count, seed=seed)])

    shots = list(virtual_camera(photos, n, seed=STREAM_SEED))
    imgs = np.stack([f.image for f in shots])
    x = torch.from_numpy(normalize(imgs))
    split = SplitModel.from_module(net, split_at=split_at, example_input=x[:1], name=EFFNET)
    t0 = time.perf_counter()
    cal_x = torch.from_numpy(normalize(frames(calib, CALIBRATION_SEED)))
    with torch.inference_mode():
        acts = torch.cat([split.head(cal_x[i : i + 32]) for i in range(0, len(cal_x), 32)])
        probs = torch.softmax(torch.cat([split.tail(acts[i : i + 32]) for i in range(0, len(acts), 32)]), 1)
    conf, lab = probs.max(1)
    cache = SemanticCache(b"calibration", reducer=reducer_for(split.activation_shape))
    cal = cache.calibrate(acts.numpy(), lab.numpy(), max_false_hit_rate=budget, confidences=conf.numpy())
    settings = CacheSettings(cache.threshold, cache.k, cache.votes, cache.min_confidence)
    parts = Parts(EFFNET, split, split, None, settings, cal, 0.0, time.perf_counter() - t0)
    ref, _ = _labels(split, x, batch=32)
    stream = Stream(
        "camera-224",
        x,
        None,
        ref,
        ref,
        torch.from_numpy(normalize(frames(warm, WARM_SEED))),
        frames=imgs,
        warmup_x=torch.from_numpy(normalize(frames(4, CALIBRATION_SEED + 1))),
    )
    jpeg = [len(jpeg_encode(im, 90)) for im in imgs[: min(50, len(imgs))]]
    # How stable the uncached model's top-1 is on these frames: the same views without sensor noise.
    m = min(100, n)
    clean = np.stack([render(photos[f.view.photo].pixels, f.view, imgs.shape[1]) for f in shots[:m]])
    clean_labels, _ = _labels(split, torch.from_numpy(normalize(clean)), batch=32)
    with torch.inference_mode():
        confs = torch.softmax(split(x[:m]), 1).max(1).values.numpy()
    info = {
        "photos": [p.name for p in photos],
        "split_at": split_at,
        "activation_shape": list(split.activation_shape),
        "activation_bytes": split.activation_bytes,
        "jpeg_bytes_mean": float(np.mean(jpeg)),
        "distinct_labels": len(np.unique(ref)),
        "noise_free_agreement": float(np.mean(clean_labels == ref[:m])),
        "median_confidence": float(np.median(confs)),
        "pruning_without_finetune": _bn_prune_agreement(split, x[:m], ref[:m], (0.25, 0.5)),
    }
    return parts, stream, net, info


# ---------------------------------------------------------------------------------------------- analyses


def _threshold_sweep(parts: Parts, stream: Stream, points: int = 13) -> list[dict[str, float]]:
    """Hit rate and false-hit rate of a fresh cache replaying the measured stream, per threshold."""
    from ccied_p2p.cache import Hit, SemanticCache
    from ccied_p2p.presets import reducer_for

    with torch.inference_mode():
        acts = torch.cat([parts.pruned.head(stream.x[i : i + 256]) for i in range(0, len(stream.x), 256)])
        probs = torch.softmax(parts.pruned.tail(acts), 1)
    conf = probs.max(1).values.numpy()
    acts_np = acts.numpy()
    ref = stream.pruned_reference
    base = parts.settings.threshold
    # Around the calibrated threshold; if calibration found none within budget (threshold < 0), over the
    # whole useful range of cosine distances.
    grid = np.geomspace(base / 8, base * 8, points) if base > 0 else np.geomspace(1e-3, 0.5, points)
    out = []
    for t in grid:
        cache = SemanticCache(
            b"sweep", reducer=reducer_for(parts.pruned.activation_shape, parts.pruned.channel_mask)
        )
        parts.settings.apply(cache)
        cache.threshold = float(t)
        hits = false = 0
        for i in range(len(acts_np)):
            r = cache.lookup(acts_np[i : i + 1], "fp", 0.0)
            if isinstance(r, Hit):
                hits += 1
                false += int(r.label != int(ref[i]))
            else:
                cache.insert(acts_np[i : i + 1], int(ref[i]), float(conf[i]), "fp", 0.0)
        out.append(
            {
                "threshold": float(t),
                "hit_rate": hits / max(1, len(acts_np)),
                "false_hit_rate": false / hits if hits else 0.0,
            }
        )
    return out


def _pruning_curve(model: str, data: Any, parts: Parts, n_eval: int) -> list[dict[str, Any]]:
    from ccied_p2p import models
    from ccied_p2p.codec.tensor import encode_tensor
    from ccied_p2p.plan_cli import cached_amounts

    amounts = sorted(set(cached_amounts(model, data, (0.0, 0.5, 0.75, 0.9))) | {0.0, parts.amount})
    x, y = data.test_x[:n_eval], data.test_y[:n_eval].numpy()
    base_labels, _ = _labels(parts.full, x, batch=1000)
    rows = []
    for amount in amounts:
        split = (
            parts.full if amount == 0 else models.reference_split(model, data, amount=amount, progress=False)
        )
        lab, _ = _labels(split, x, batch=1000)
        with torch.inference_mode():
            acts = split.head(x[:200]).numpy()
        wire = float(
            np.mean([len(encode_tensor(acts[i : i + 1], PRUNED_ENCODING)) for i in range(len(acts))])
        )
        rows.append(
            {
                "amount": amount,
                "accuracy": float(np.mean(lab == y)),
                "agreement": float(np.mean(lab == base_labels)),
                "zero_fraction": float(np.mean(acts == 0)),
                "sparse_bytes": wire,
                "raw_bytes": split.activation_bytes,
            }
        )
    return rows


def _offline(parts: Parts, data: Any, camera_n: int, control_n: int) -> dict[str, Any]:
    """Accuracy, agreement and hit rate on long streams replayed through a fresh cache (no network): camera
    requests, the control images, and the control images each captured once through the camera."""
    from ccied_p2p.cache import Hit, SemanticCache
    from ccied_p2p.presets import reducer_for
    from ccied_p2p.workloads import CameraParams, camera_stream, collect, control_stream

    out: dict[str, Any] = {}
    for name, items in (
        ("camera", camera_stream(data.test_images, data.test_labels, camera_n, seed=STREAM_SEED + 100)),
        ("control", control_stream(data.test_images, data.test_labels, seed=STREAM_SEED, limit=control_n)),
        (
            "captures",
            control_stream(
                data.test_images,
                data.test_labels,
                seed=STREAM_SEED + 200,
                limit=control_n,
                camera=CameraParams(),
            ),
        ),
    ):
        _, images, labels = collect(items)
        x = data.normalize(images)
        full, _ = _labels(parts.full, x, batch=1000)
        with torch.inference_mode():
            acts = torch.cat([parts.pruned.head(x[i : i + 1000]) for i in range(0, len(x), 1000)])
            probs = torch.softmax(
                torch.cat([parts.pruned.tail(acts[i : i + 1000]) for i in range(0, len(acts), 1000)]), 1
            )
        conf, pl = probs.max(1)
        pruned = pl.numpy()
        cache = SemanticCache(
            b"offline", reducer=reducer_for(parts.pruned.activation_shape, parts.pruned.channel_mask)
        )
        parts.settings.apply(cache)
        answers = np.empty(len(x), dtype=np.int64)
        hits = 0
        a = acts.numpy()
        for i in range(len(a)):
            r = cache.lookup(a[i : i + 1], "fp", 0.0)
            if isinstance(r, Hit):
                answers[i] = r.label
                hits += 1
            else:
                answers[i] = pruned[i]
                cache.insert(a[i : i + 1], int(pruned[i]), float(conf[i]), "fp", 0.0)
        out[name] = {
            "requests": len(x),
            "local_accuracy": float(np.mean(full == labels)),
            "split_pruned_accuracy": float(np.mean(pruned == labels)),
            "ccied_accuracy": float(np.mean(answers == labels)),
            "ccied_agreement": float(np.mean(answers == full)),
            "ccied_hit_rate": hits / len(x),
        }
    return out


def _planner_view(parts: Parts, data: Any, res: dict[str, Any], mbit: float, rtt_ms: float) -> dict[str, Any]:
    """The planner's prediction for each measured configuration, its recommendation, and the measured best."""
    from ccied_p2p.codec.tensor import encode_tensor
    from ccied_p2p.planner import Link, PruneOption, cuts_from_profile, expected, plan

    prof = parts.full.profile(repeats=20)
    cut = parts.full.split_at
    raw = parts.full.activation_bytes
    with torch.inference_mode():
        acts = parts.full.head(data.test_x[:200]).numpy()
    sparse0 = float(np.mean([len(encode_tensor(acts[i : i + 1], PRUNED_ENCODING)) for i in range(len(acts))]))
    c = res["configs"]
    drop = 100.0 * ((c["local"]["accuracy"] or 0.0) - (c["split_pruned"]["accuracy"] or 0.0))
    opts = [
        PruneOption(0.0, max(c["split"]["bytes_per_transfer"] - 120, 1) / raw, 0.0, True, SPLIT_ENCODING),
        PruneOption(0.0, sparse0 / raw, 0.0, True, PRUNED_ENCODING),
        PruneOption(
            parts.amount, max(c["split_pruned"]["bytes_per_transfer"] - 120, 1) / raw, max(drop, 0.0), True
        ),
    ]
    link = Link.mbit(mbit, rtt_ms)
    hit = c["ccied"]["hit_rate"]
    plans = plan(
        prof,
        link,
        hit,
        {cut: opts},
        input_wire_bytes=c["offload"]["bytes_per_transfer"] - 120,
        max_drop_pp=1.0,
    )
    cuts = {cc.name: cc for cc in cuts_from_profile(prof, [cut])}
    predicted = {
        "local": next(p for p in plans if p.kind == "local").expected_ms,
        "offload": next(p for p in plans if p.kind == "offload").expected_ms,
        "split": expected(cuts[cut], opts[0], link, 0.0).expected_ms,
        "split_pruned": expected(cuts[cut], opts[2], link, 0.0).expected_ms,
        "ccied": expected(cuts[cut], opts[2], link, hit).expected_ms,
    }
    measured = {k: c[k]["latency_mean_ms"] for k in CONFIGS if c[k]["latency_mean_ms"] is not None}
    collaborative = {k: v for k, v in measured.items() if k != "local"}
    best = min(plans, key=lambda p: p.expected_ms)
    best_split = min((p for p in plans if p.kind == "split"), key=lambda p: p.expected_ms)
    return {
        "link": {"mbit": mbit, "rtt_ms": rtt_ms},
        "hit_rate": hit,
        "recommendation": {"label": best.label, "expected_ms": best.expected_ms},
        "recommended_split": {"label": best_split.label, "expected_ms": best_split.expected_ms},
        "predicted_ms": predicted,
        "measured_ms": measured,
        "measured_best": min(measured, key=lambda k: measured[k]),
        "measured_best_collaborative": min(collaborative, key=lambda k: collaborative[k]),
        "plans": [
            {"label": p.label, "expected_ms": p.expected_ms, "wire_bytes": p.wire_bytes} for p in plans[:8]
        ],
    }


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------------------------- run


def _targets(res: dict[str, Any]) -> dict[str, Any]:
    c = res["configs"]
    out: dict[str, Any] = {}
    split_mean, ccied_mean = c["split"]["latency_mean_ms"], c["ccied"]["latency_mean_ms"]
    if split_mean and ccied_mean:
        r = ccied_mean / split_mean
        out["ccied_vs_split_latency"] = {"value": r, "target": 0.5, "met": r <= 0.5}
    hit, miss = c["ccied"]["hit_latency_mean_ms"], c["ccied"]["miss_latency_mean_ms"]
    if hit and miss:
        r = hit / miss
        out["ccied_hit_vs_miss_latency"] = {"value": r, "target": 0.2, "met": r <= 0.2}
    if c["split"]["bytes_per_transfer"]:
        r = c["ccied"]["bytes_per_transfer"] / c["split"]["bytes_per_transfer"]
        out["ccied_vs_split_bytes_per_transfer"] = {"value": r, "target": 0.1, "met": r <= 0.1}
    for stream, o in res.get("offline", {}).get(res["model"], {}).items():
        d = 100.0 * (o["ccied_accuracy"] - o["local_accuracy"])
        out[f"ccied_accuracy_vs_local_pp_{stream}_offline_{o['requests']}"] = {
            "value": d,
            "target": -1.0,
            "met": d >= -1.0,
        }
    for run in res["runs"]:
        if run["model"] != res["model"] or run["link"]["mbit"] != res["link"]["mbit"]:
            continue
        cc = run["configs"]
        if cc["ccied"]["accuracy"] is None or cc["local"]["accuracy"] is None:
            continue
        d = 100.0 * (cc["ccied"]["accuracy"] - cc["local"]["accuracy"])
        out[f"ccied_accuracy_vs_local_pp_{run['workload']}"] = {"value": d, "target": -1.0, "met": d >= -1.0}
    return out


def _notes(res: dict[str, Any]) -> list[str]:
    """Plain statements of where the measurement favours a baseline, and why (from the measured figures)."""
    notes: list[str] = []
    c = res["configs"]
    lat = {k: v["latency_mean_ms"] for k, v in c.items() if v["latency_mean_ms"] is not None}
    others = {k: v for k, v in lat.items() if k != "local"}
    if "local" in lat and others and lat["local"] < min(others.values()):
        notes.append(
            f"`local` is the fastest configuration here ({lat['local']:.1f} ms mean): the asking node and its "
            f"peer are the same CPU, so the whole {res['model']} costs about a millisecond while any trip over "
            f"the link costs at least its {res['link']['rtt_ms']:g} ms round trip. The asker is made to offload "
            "every tail (it stands for a device too weak to run it); `ccied-p2p plan --slowdown N` shows when "
            "offloading pays."
        )
    off, sp = c["offload"]["bytes_per_transfer"], c["split"]["bytes_per_transfer"]
    pr = c["split_pruned"]["bytes_per_transfer"]
    if off and sp and off < sp:
        notes.append(
            f"On 28x28 inputs full offload sends {off:.0f} B per request (the normalised image as "
            f"{OFFLOAD_ENCODING}; the raw uint8 image is 784 B), less than the unpruned activation ({sp:.0f} B as "
            f"dense float32) and about as much as the pruned one ({pr:.0f} B): `offload` beats `split` "
            f"({lat.get('offload', 0):.1f} vs {lat.get('split', 0):.1f} ms) and ties `split_pruned`; CCIED gets "
            "ahead of it only through cache hits."
        )
    for run in res["runs"]:
        cc = run["configs"]
        if run["workload"] != "control" or run["model"] != res["model"]:
            continue
        off = res.get("offline", {}).get(run["model"], {}).get("control", {})
        agree = cc["ccied"]["hit_agreement"]
        notes.append(
            f"Control stream ({run['model']}): every test image once, no repeated capture, yet `ccied` answers "
            f"{cc['ccied']['hit_rate']:.0%} from its cache ({off.get('ccied_hit_rate', 0):.0%} over "
            f"{off.get('requests', 0)} images offline): Fashion-MNIST items of one class look alike and the "
            f"cache is semantic. Those hits agree with the uncached pruned model "
            f"{'–' if agree is None else f'{agree:.0%}'} of the time."
        )
        break
    off = res.get("offline", {}).get(res["model"], {})
    if "camera" in off:
        o = off["camera"]
        test = next(
            (r for r in res.get("pruning", {}).get(res["model"], []) if r["amount"] == res["amount"]), None
        )
        clean = (
            ""
            if test is None
            else f" and {_pp(test['accuracy'] - res['pruning'][res['model']][0]['accuracy'])} pp on the clean test set"
        )
        notes.append(
            f"Accuracy over {o['requests']} camera requests replayed offline: pruning {res['amount']:.0%} of the "
            f"split layer moves it {_pp(o['split_pruned_accuracy'] - o['local_accuracy'])} pp on camera captures "
            f"(shifted, noisy, re-exposed){clean}; cache hits move it "
            f"{_pp(o['ccied_accuracy'] - o['split_pruned_accuracy'])} pp more, so `ccied` ends "
            f"{_pp(o['ccied_accuracy'] - o['local_accuracy'])} pp from `local`. The live runs are too short to "
            "resolve 1 pp; the replay is the better estimate."
        )
    sh = c["ccied_shared"]
    if "warm_entries" in sh:
        notes.append(
            f"`ccied_shared`: a second camera of the same scene (other captures) ran {res['requests']} requests "
            f"first and held {sh['warm_entries']} entries; the asker's hit rate went from "
            f"{c['ccied']['hit_rate']:.2f} to {sh['hit_rate']:.2f}."
        )
    cam = res.get("camera_resolution")
    if cam:
        cc = cam["configs"]
        notes.append(
            f"Camera resolution: the uncached {cam['model']} is unsure on these crops (median top-1 "
            f"confidence {cam['median_confidence']:.2f}; removing the sensor noise alone changes the top-1 of "
            f"{1 - cam['noise_free_agreement']:.0%} of frames), so agreement is a harsh measure: JPEG q90 "
            f"offload agrees on {cc['offload']['agreement']:.0%}, and the cache, calibrated to 1% false hits, "
            f"answers only {cc['ccied']['hit_rate']:.0%} of requests."
        )
        jp, act = cc["offload"]["bytes_per_transfer"], cc["split_pruned"]["bytes_per_transfer"]
        notes.append(
            f"Camera resolution, bytes: the activation at `{cam['split_at']}` crosses as {act:.0f} B "
            f"({PRUNED_ENCODING}, unpruned) against {jp:.0f} B for the JPEG frame; latency: split_pruned "
            f"{cc['split_pruned']['latency_mean_ms']:.1f} ms, JPEG offload {cc['offload']['latency_mean_ms']:.1f} ms, "
            f"local {cc['local']['latency_mean_ms']:.1f} ms (the same CPU again)."
        )
        sh = cc["ccied_shared"]
        if (
            sh["latency_mean_ms"]
            and cc["ccied"]["latency_mean_ms"]
            and sh["latency_mean_ms"] > cc["ccied"]["latency_mean_ms"]
        ):
            notes.append(
                f"Camera resolution, sharing: `ccied_shared` is slower than `ccied` "
                f"({sh['latency_mean_ms']:.1f} vs {cc['ccied']['latency_mean_ms']:.1f} ms) for the same hit rate "
                f"({sh['hit_rate']:.0%}): each entry carries a {cam['activation_shape'][0]}-float key, every miss "
                f"creates two (the asker's and the serving peer's echo of it) and both go to every node, "
                f"{sh['link_bytes_per_request']:.0f} B on the links per request against "
                f"{cc['ccied']['link_bytes_per_request']:.0f} B; with all nodes in one process the merging and relaying "
                "also slows the asker's head."
            )
        pw = cam.get("pruning_without_finetune") or {}
        if pw:
            got = ", ".join(f"{float(a):.0%} pruned: {v:.0%}" for a, v in pw.items())
            notes.append(
                f"EfficientNet-Lite0 is not pruned here: without ImageNet data offline there is no fine-tuning, "
                f"and zeroing channels at `{cam['split_at']}` without it destroys agreement ({got}). Its "
                f"`split_pruned`/`ccied` rows are the unpruned activation as {PRUNED_ENCODING}."
            )
    return notes


async def _all(args: argparse.Namespace, plan_: list[dict[str, Any]], bar: Any) -> dict[str, Any]:
    from ccied_p2p import datasets

    data = datasets.load(args.data)
    quick = args.quick
    parts: dict[str, Parts] = {}
    streams: dict[tuple[str, str], Stream] = {}
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    for step in plan_:
        model, workload = step["model"], step["workload"]
        if model not in parts:
            bar.set_description(f"calibrating {model}")
            parts[model] = await asyncio.to_thread(
                _parts_28,
                model,
                data,
                DEFAULT_AMOUNT.get(model, 0.75) if args.amount is None else args.amount,
                3000,  # fewer held-out hits cannot certify a 1% budget
                args.false_hit_budget,
            )
        key = (model, workload)
        if key not in streams or len(streams[key].x) != step["requests"]:
            streams[key] = await asyncio.to_thread(
                _stream_28, data, parts[model], workload, step["requests"], step["requests"]
            )
        stream = streams[key]
        configs: dict[str, Any] = {}
        for config in CONFIGS:
            bar.set_description(f"{workload} {model} {step['mbit']:g} Mbit/s {config}")
            rec = await _run_nodes(
                config, parts[model], stream, step["mbit"], args.rtt_ms, lambda: bar.update()
            )
            configs[config] = _metrics(rec, stream, keep_latencies=step["headline"])
        runs.append(
            {
                "workload": workload,
                "model": model,
                "link": {"mbit": step["mbit"], "rtt_ms": args.rtt_ms},
                "requests": step["requests"],
                "headline": step["headline"],
                "configs": configs,
            }
        )
    head = next(r for r in runs if r["headline"])
    hp = parts[head["model"]]
    res: dict[str, Any] = {
        "bench": "e2e",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "dataset": data.name,
        "quick": quick,
        "workload": head["workload"],
        "model": head["model"],
        "link": head["link"],
        "requests": head["requests"],
        "amount": hp.amount,
        "amounts": {m: p.amount for m, p in parts.items()},
        "encodings": {
            "offload": OFFLOAD_ENCODING,
            "split": SPLIT_ENCODING,
            "split_pruned": PRUNED_ENCODING,
            "ccied": PRUNED_ENCODING,
        },
        "configs": head["configs"],
        "runs": runs,
        "calibration": {
            m: {
                "threshold": p.settings.threshold,
                "k": p.settings.k,
                "votes": p.settings.votes,
                "min_confidence": p.settings.min_confidence,
                "calibration_hit_rate": p.calibration.hit_rate,
                "calibration_false_hit_rate": p.calibration.false_hit_rate,
                "seconds": p.calibrate_s,
            }
            for m, p in parts.items()
        },
    }
    bar.set_description("analyses")
    res["thresholds"] = {
        m: await asyncio.to_thread(_threshold_sweep, parts[m], streams[(m, "camera")])
        for m in parts
        if (m, "camera") in streams
    }
    res["pruning"] = {
        m: await asyncio.to_thread(_pruning_curve, m, data, parts[m], 2000 if quick else 10000) for m in parts
    }
    res["offline"] = {
        m: await asyncio.to_thread(
            _offline, parts[m], data, 1000 if quick else 3000, 2000 if quick else 10000
        )
        for m in parts
    }
    res["planner"] = await asyncio.to_thread(_planner_view, hp, data, res, head["link"]["mbit"], args.rtt_ms)
    res["targets"] = _targets(res)
    n_eff = args.effnet_requests
    if n_eff:
        bar.set_description("EfficientNet-Lite0: calibrating")
        try:
            eparts, estream, net, info = await asyncio.to_thread(
                _effnet, args.effnet_split, n_eff, n_eff, 200 if quick else 400, args.false_hit_budget
            )
        except Exception as exc:  # the pretrained weights are an optional extra
            notes.append(f"camera-resolution workload skipped: {exc}")
        else:
            econfigs: dict[str, Any] = {}
            mbit = head["link"]["mbit"]
            for config in CONFIGS:
                bar.set_description(f"camera-224 {EFFNET} {mbit:g} Mbit/s {config}")
                if config == "offload":
                    rec = await _run_jpeg_offload(net, estream, mbit, args.rtt_ms, 90, lambda: bar.update())
                else:
                    rec = await _run_nodes(config, eparts, estream, mbit, args.rtt_ms, lambda: bar.update())
                econfigs[config] = _metrics(rec, estream, keep_latencies=True)
            res["camera_resolution"] = {
                "workload": "camera-224",
                "model": EFFNET,
                "link": {"mbit": mbit, "rtt_ms": args.rtt_ms},
                "requests": n_eff,
                "encodings": {
                    "offload": "JPEG q90",
                    "split": SPLIT_ENCODING,
                    "split_pruned": PRUNED_ENCODING,
                    "ccied": PRUNED_ENCODING,
                },
                "pruned": False,
                "calibration": {
                    "threshold": eparts.settings.threshold,
                    "k": eparts.settings.k,
                    "votes": eparts.settings.votes,
                    "min_confidence": eparts.settings.min_confidence,
                    "calibration_hit_rate": eparts.calibration.hit_rate,
                    "calibration_false_hit_rate": eparts.calibration.false_hit_rate,
                },
                **info,
                "configs": econfigs,
            }
            res["thresholds"][EFFNET] = await asyncio.to_thread(_threshold_sweep, eparts, estream, 9)
            res["camera_resolution"]["planner"] = await asyncio.to_thread(
                _effnet_planner,
                net,
                estream.x,
                econfigs["offload"]["bytes_per_transfer"],
                econfigs["ccied"]["hit_rate"],
                mbit,
                args.rtt_ms,
            )
    res["notes"] = _notes(res) + notes
    return res


def _schedule(args: argparse.Namespace) -> list[dict[str, Any]]:
    models_ = [m for m in args.models.split(",") if m]
    workloads = [w for w in args.workloads.split(",") if w]
    links = [float(v) for v in args.links.split(",") if v]
    head_n = args.requests or (100 if args.quick else 400)
    sweep_n = args.sweep_requests or (60 if args.quick else 150)
    head_model = "vgg" if "vgg" in models_ else models_[0]
    head_link = 10.0 if 10.0 in links else links[0]
    head_workload = "camera" if "camera" in workloads else workloads[0]
    steps = []
    for model in models_:
        for workload in workloads:
            for mbit in links:
                headline = (model, workload, mbit) == (head_model, head_workload, head_link)
                if args.quick and not (model == head_model and mbit == head_link):
                    continue
                n = head_n if headline or (model == head_model and workload == head_workload) else sweep_n
                steps.append(
                    {"model": model, "workload": workload, "mbit": mbit, "requests": n, "headline": headline}
                )
    steps.sort(key=lambda s: (not s["headline"], s["model"] != head_model, s["workload"], s["mbit"]))
    return steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    torch.set_num_threads(1)
    if args.effnet_requests is None:
        args.effnet_requests = 0 if args.quick else 150
    plan_ = _schedule(args)
    total = sum(s["requests"] for s in plan_) * len(CONFIGS) + args.effnet_requests * len(CONFIGS)
    start = time.perf_counter()
    with tqdm(total=total, unit="req", file=sys.stderr, mininterval=1.0, disable=False) as bar:
        res = asyncio.run(_all(args, plan_, bar))
    res["seconds"] = time.perf_counter() - start
    res["command"] = "ccied-p2p bench e2e" + (" --quick" if args.quick else "")
    if args.plots:
        from ccied_p2p.report import write_report

        res["report"] = str(write_report(res, args.plots))
    return res


# ---------------------------------------------------------------------------------------------- render


def _f(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def table(configs: dict[str, Any]) -> list[str]:
    """The per-configuration table (fixed width), one row per configuration."""
    head = (
        f"{'config':<13} {'acc':>6} {'agree':>6} {'hit':>5} {'B/req':>7} {'B/xfer':>7} {'mean':>7} {'p50':>7} "
        f"{'p95':>7} {'p99':>7} {'hit ms':>7} {'miss ms':>7} {'req/s':>6} {'cpu ms':>6}"
    )
    rows = [head]
    for name in CONFIGS:
        c = configs.get(name)
        if c is None:
            continue
        rows.append(
            f"{name:<13} {_f(c['accuracy'], '.4f'):>6} {_f(c['agreement'], '.4f'):>6} {c['hit_rate']:>5.2f} "
            f"{c['bytes_per_request']:>7.0f} {c['bytes_per_transfer']:>7.0f} {_f(c['latency_mean_ms']):>7} "
            f"{_f(c['latency_p50_ms']):>7} {_f(c['latency_p95_ms']):>7} {_f(c['latency_p99_ms']):>7} "
            f"{_f(c['hit_latency_mean_ms']):>7} {_f(c['miss_latency_mean_ms']):>7} "
            f"{_f(c['requests_per_s'], '.0f'):>6} {_f(c['cpu_ms_per_request'], '.2f'):>6}"
        )
    return rows


def render(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"e2e on {r['machine']['cpu']} ({r['machine']['cores']} cores), {r['date']}, {r.get('seconds', 0):.0f} s",
        f"headline: {r['workload']} stream, {r['model']}, {r['link']['mbit']:g} Mbit/s, {r['link']['rtt_ms']:g} ms "
        f"RTT, {r['requests']} requests (latencies in ms, bytes sent by the asker)",
        *table(r["configs"]),
        "",
        "targets:",
    ]
    for name, t in r["targets"].items():
        lines.append(
            f"  {name:<40} {t['value']:8.3f}  target {t['target']:g}  {'met' if t['met'] else 'NOT met'}"
        )
    lines += ["", "every combination (mean latency ms / hit rate):"]
    lines.append(f"{'workload':<9} {'model':<6} {'Mbit/s':>6} " + " ".join(f"{c:>13}" for c in CONFIGS))
    for run in r["runs"]:
        cells = " ".join(
            f"{_f(run['configs'][c]['latency_mean_ms']):>7}/{run['configs'][c]['hit_rate']:.2f}"
            for c in CONFIGS
        )
        lines.append(f"{run['workload']:<9} {run['model']:<6} {run['link']['mbit']:>6g} {cells}")
    cam = r.get("camera_resolution")
    if cam:
        lines += [
            "",
            f"camera resolution: {cam['model']} split at {cam['split_at']}, {cam['requests']} frames of a virtual "
            f"camera over {len(cam['photos'])} photos, {cam['link']['mbit']:g} Mbit/s; JPEG q90 "
            f"{cam['jpeg_bytes_mean']:.0f} B; agreement = with the uncached model",
            *table(cam["configs"]),
        ]
        ep = cam.get("planner")
        if ep:
            lines.append(
                f"planner (block boundaries, measured wire sizes, hit rate {ep['hit_rate']:.2f}): recommends "
                f"{ep['recommendation']['label']} ({ep['recommendation']['expected_ms']:.1f} ms); best split "
                f"{ep['recommended_split']['label']} ({ep['recommended_split']['expected_ms']:.1f} ms)"
            )
    p = r.get("planner")
    if p:
        lines += [
            "",
            f"planner at {p['link']['mbit']:g} Mbit/s, hit rate {p['hit_rate']:.2f}: recommends "
            f"{p['recommendation']['label']} ({p['recommendation']['expected_ms']:.1f} ms); best split "
            f"{p['recommended_split']['label']} ({p['recommended_split']['expected_ms']:.1f} ms); measured best "
            f"{p['measured_best']} (collaborative: {p['measured_best_collaborative']})",
            "  predicted vs measured ms: "
            + ", ".join(f"{k} {v:.1f}/{_f(p['measured_ms'].get(k))}" for k, v in p["predicted_ms"].items()),
        ]
    for note in r.get("notes", []):
        lines.append(f"note: {note}")
    if r.get("report"):
        lines.append(f"report: {r['report']}")
    return "\n".join(lines)
