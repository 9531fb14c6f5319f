"""``ccied-p2p bench regimes``: the adaptive node against fixed strategies, per device quota, link and stream.

The asking device is a worker subprocess running a :class:`~ccied_p2p.runtime.node.Node` under a CPU quota
(:class:`~ccied_p2p.runtime.quota.CpuQuota`, 10 ms period; 1.0 = no quota), applied once the worker has
imported torch and loaded the model and before its node starts (so its start-up profile measures the weak
device). Two peers run at full speed in this process. Every node is reached through its own user-space relay
(:class:`~ccied_p2p.testing.Relay`) with the regime's rate and a 10 ms one-way delay (20 ms round trip), and
advertises the relay, so every byte between device and peers crosses the emulated link.

Model: EfficientNet-Lite0 (pretrained ImageNet, 224 px), split after ``_blocks.5``
(:func:`ccied_p2p.lite.lite0_split`, unpruned: the channel-pruned split loses 20 pp of accuracy, far outside
the 1 pp target), its activation sent in ``--split-encoding`` (default :data:`ccied_p2p.lite.WIRE_ENCODING`,
4-bit values, deflated: 6.6 KB, 96.8% top-1 agreement; ``dense-i4``, 8.2 KB, and ``sparse-f16-lz4``, 31.5 KB
and exact, are what earlier runs sent). Streams (:mod:`ccied_p2p.video`), built here and shared with the
worker as ``.npy`` files: ``camera`` (the labelled photo camera over the evaluation photos: objects pan in,
are held, leave), ``clips`` (the evaluation clips ``vtest`` and ``cup``, every 4th / 2nd frame, half each; no
labels) and ``control`` (independent views of the same photos, no repeats). ``accuracy`` is top-1 against the
photo's label on frames with an object in view (``local_accuracy``: the unpruned model run locally on the same
frames), or, on the clips, agreement with the local model.

Per (quota, link) one worker holding two device nodes (one with ``frames_stay``), each with a fresh cache per
stream, calibrated for 1% false hits on photo-camera streams over the calibration photos. ``--warmup W``: the
adaptive devices first answer the stream's W frames before the measured ones, as a camera that has been
running would have (its cache holds their entries, its recent hit rate is theirs); 0, the default, measures a
cold start. Every measured frame goes through ``local``, ``offload`` and ``split`` (fixed strategies, cache
untouched, measured once and reused for both policies) and each adaptive device, in turn, starting with another
one each frame, so the machine's noise and a warm second pass over the same frame hit every strategy alike.
``ratio`` = adaptive mean / best fixed mean (same run); with ``frames_stay`` the best fixed is the best of local
and split.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ccied_p2p.bench.regimes_rows import FIXED, RTT_MS, cell_rows, median_rows

__all__ = ["add_arguments", "camera_demo", "render", "render_camera_demo", "run"]

QUOTAS = (0.10, 0.25, 1.0)
MBITS = (1.0, 10.0, 100.0)
CUT = "_blocks.5"  # 80x14x14, the cut of ccied_p2p.lite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ccied-p2p bench regimes``."""
    parser.add_argument("--frames", type=int, default=30, help="measured frames per strategy and cell")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="frames of each stream the adaptive devices answer before the measured ones (a camera that has "
        "been running: its cache holds their entries, its hit rate is theirs); 0: a cold start",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="workers per cell; the row holds medians of their means"
    )
    parser.add_argument("--quotas", default=",".join(map(str, QUOTAS)), help="device CPU quotas")
    parser.add_argument("--mbits", default=",".join(f"{m:g}" for m in MBITS), help="link rates, Mbit/s")
    parser.add_argument("--streams", default="camera,clips,control", help="streams: camera, clips, control")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI size: 25%% quota, 10 Mbit/s, camera, 6 frames",
    )
    parser.add_argument(
        "--split-encoding",
        default=None,
        help="what the split sends (default: lite.WIRE_ENCODING, dense-i4-deflate)",
    )
    parser.add_argument("--plots", default=None, help="write the heatmap and latency CDFs (PNG) here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


# ---------------------------------------------------------------- streams (this process)


def _streams(names: list[str], n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per stream: uint8 frames (N, 224, 224, 3) and labels (-1: none)."""
    from ccied_p2p.video import photo_camera, photo_control, photo_split, read_clip

    _, evaluation = photo_split()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        if name in ("camera", "control"):
            make = photo_camera if name == "camera" else photo_control
            shots = list(make(evaluation, n, seed=1 if name == "camera" else 2))
            out[name] = (np.stack([f.image for f in shots]), np.array([f.label for f in shots]))
        elif name == "clips":
            half = n // 2
            frames = np.concatenate(
                [read_clip("vtest", max_frames=half, step=4), read_clip("cup", max_frames=n - half, step=2)]
            )
            out[name] = (frames, np.full(len(frames), -1))
        else:
            raise ValueError(f"unknown stream {name!r} (camera, clips, control)")
    return out


def _calibrate(split: Any, requests: int, encoding: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The camera cache's calibration (:func:`ccied_p2p.bench.camera_cache.calibrate_camera`: photo-camera streams
    of ``requests`` frames over the calibration photos, never evaluated; chosen on half the photos, tested on the
    other half) for the split sent in ``encoding``: the answer rule with its key's reducer config (``"key"``),
    and what calibration measured."""
    from ccied_p2p.bench.camera_cache import calibrate_camera
    from ccied_p2p.lite import WIRE_ENCODING

    cam = calibrate_camera(split, requests, wire=encoding == WIRE_ENCODING)
    cache = {**asdict(cam.settings), "key": cam.reducer.config()}
    return cache, {"data": cam.data, "reference": cam.reference, **asdict(cam.calibration)}


def _split() -> Any:
    from ccied_p2p.lite import lite0_split

    return lite0_split(CUT, prune=False)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- the worker (the quota'd device)


async def _worker_main(spec: dict[str, Any]) -> None:
    import torch

    from ccied_p2p.cache import SemanticCache, make_reducer
    from ccied_p2p.inputs import LITE_SPEC
    from ccied_p2p.presets import CacheSettings
    from ccied_p2p.runtime.config import (
        CacheConfig,
        NetworkConfig,
        NodeConfig,
        ServingConfig,
        StrategyConfig,
    )
    from ccied_p2p.runtime.node import Node
    from ccied_p2p.strategy import Strategy

    torch.set_num_threads(1)
    split = _split()
    streams = {name: np.load(path) for name, path in spec["streams"].items()}
    rule = {k: v for k, v in spec["cache"].items() if k != "key"}
    print("LOADED", flush=True)
    sys.stdin.readline()  # the parent applied the quota

    def config(me: dict[str, Any], stay: bool) -> NodeConfig:
        return NodeConfig(
            name=me["name"],
            secret=spec["secret"],
            observe=False,
            cpu_quota=spec["quota"],
            network=NetworkConfig(
                host=me["host"],
                port=me["port"],
                advertise_host=me["relay_host"],
                advertise_port=me["relay_port"],
                seeds=tuple(spec["seeds"]),
                mdns=False,
                request_timeout=30.0,
            ),
            cache=CacheSettings(**rule).config(CacheConfig(share=False)),
            # A device asks; it serves nobody (the other device in this process among them).
            serving=ServingConfig(serve=False),
            strategy=StrategyConfig(
                input_spec=LITE_SPEC, profile_runs=3, frames_stay=stay, encoding=spec["encoding"]
            ),
        )

    def key() -> Any:  # the key the rule was calibrated on
        return make_reducer(spec["cache"]["key"])

    out: dict[str, Any] = {}
    # Two devices in this one quota'd process, taking turns: "free" (frames may leave) and "stay".
    async with (
        Node(split, config(spec["devices"][0], False), SemanticCache(b"free", reducer=key())) as free,
        Node(split, config(spec["devices"][1], True), SemanticCache(b"stay", reducer=key())) as stay,
    ):
        for node in (free, stay):
            await node.wait_for_peers(2, timeout=60.0)
            for _ in range(300):  # the peers' gossiped costs, before the first choice (30 s at most)
                if sum(m.load is not None and m.load.model_ms > 0 for m in node.peers.values()) >= 2:  # fmt: skip
                    break
                await asyncio.sleep(0.1)
        warm = streams[next(iter(streams))]
        for node in (free, stay):
            for i in range(3):  # the link fits see both sizes before anything is measured
                await node.infer_frame(warm[i], only=Strategy.OFFLOAD)
                await node.infer_frame(warm[i], only=Strategy.SPLIT)
        warmup = int(spec.get("warmup", 0))
        for name, stream in streams.items():
            for node in (free, stay):
                node.reset_cache()  # entries and measured hit rate; the calibrated rule stays
            for frame in stream[:warmup]:  # the camera ran before: the adaptive devices saw these frames
                for node in (free, stay):
                    await node.infer_frame(frame)
            frames = stream[warmup:]
            runs: dict[str, Any] = {k: _Run() for k in (*FIXED, "adaptive", "adaptive_stay")}
            # Every strategy on every frame, in turn, starting with another each frame: the machine's noise and
            # a warm second pass over the same frame hit all alike.
            turns: list[tuple[Any, Strategy | None, _Run]] = [(free, Strategy(k), runs[k]) for k in FIXED]
            turns += [(free, None, runs["adaptive"]), (stay, None, runs["adaptive_stay"])]
            for i, frame in enumerate(frames):
                for node, only, run in turns[i % len(turns) :] + turns[: i % len(turns)]:
                    await run.one(node, frame, only)
            out[name] = {k: r.as_dict() for k, r in runs.items()}
            out[name]["estimates"] = {node.config.name: _estimates(node) for node in (free, stay)}
    print("RESULT " + json.dumps(out), flush=True)


def _estimates(node: Any) -> dict[str, Any]:
    """What the node believed at the end of a stream: its options (ms) and the measurements behind them."""
    s = node.situation()
    return {
        "options_ms": {o.label: round(o.seconds * 1000, 1) for o in node.options()},
        "device_ms": {
            "model": s.device.model_s * 1000,
            "head": next(iter(s.device.prefix_s.values())) * 1000,
        },
        "peers": {
            p.name: {
                "model_ms": p.costs.model_s * 1000,
                "mbit": p.bandwidth * 8e-6,
                "rtt_ms": p.rtt_s * 1000,
            }
            for p in s.peers
        },
        "input_bytes": s.input_bytes,
        "activation_bytes": dict(s.activation_bytes),
        "hit_rate": s.hit_rate,
    }


class _Run:
    def __init__(self) -> None:
        self.ms: list[float] = []
        self.labels: list[int] = []
        self.chosen: list[str] = []
        self.used: list[str] = []
        self.failed = 0
        self.sent = 0

    async def one(self, node: Any, frame: np.ndarray, only: Any) -> None:
        try:
            r = await node.infer_frame(frame, only=only)
        except Exception:
            self.failed += 1
            self.labels.append(-1)
            return
        self.ms.append(r.latency * 1000)
        self.labels.append(r.label)
        self.chosen.append(r.chosen)
        missed = "lookup" in r.timings and r.strategy != "cache"
        self.used.append(f"miss>{r.strategy}" if missed else r.strategy)
        self.sent += r.bytes_sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "ms": self.ms,
            "labels": self.labels,
            "chosen": self.chosen,
            "used": self.used,
            "failed": self.failed,
            "bytes": self.sent,
        }


# ---------------------------------------------------------------- the parent


async def _cell(
    quota: float,
    mbit: float,
    stream_files: dict[str, str],
    split: Any,
    tmp: str,
    cache: dict[str, Any],
    encoding: str,
    warmup: int = 0,
) -> dict[str, Any]:
    from ccied_p2p.inputs import LITE_SPEC
    from ccied_p2p.runtime.config import CacheConfig, NetworkConfig, NodeConfig, StrategyConfig
    from ccied_p2p.runtime.node import Node
    from ccied_p2p.runtime.quota import CpuQuota
    from ccied_p2p.testing import LinkSpec, Relay

    secret = secrets.token_urlsafe(24)
    link = LinkSpec(rate=mbit * 125_000, delay=RTT_MS / 2000)
    hosts = {
        "device": "127.0.0.70",
        "device2": "127.0.0.73",
        "peer1": "127.0.0.71",
        "peer2": "127.0.0.72",
    }
    ports = {name: _free_port(host) for name, host in hosts.items()}
    relays = {
        name: Relay(f"127.0.1.{70 + i}", 0, (hosts[name], ports[name]), spec=link, name=name)
        for i, name in enumerate(hosts)
    }
    for relay in relays.values():
        await relay.start()
    peers: list[Node] = []
    proc = None
    quota_handle = None
    try:
        for name in ("peer1", "peer2"):
            cfg = NodeConfig(
                name=name,
                secret=secret,
                observe=False,
                network=NetworkConfig(
                    host=hosts[name],
                    port=ports[name],
                    advertise_host=relays[name].host,
                    advertise_port=relays[name].port,
                    seeds=tuple(
                        f"{r.host}:{r.port}" for n, r in relays.items() if n.startswith("peer") and n != name
                    ),
                    mdns=False,
                    request_timeout=30.0,
                ),
                cache=CacheConfig(
                    enabled=False
                ),  # compute servers: the device's own cache is what is measured
                strategy=StrategyConfig(input_spec=LITE_SPEC),
            )
            node = Node(split, cfg)
            await node.start()
            peers.append(node)
        spec = {
            "secret": secret,
            "devices": [
                {
                    "name": name,
                    "host": hosts[name],
                    "port": ports[name],
                    "relay_host": relays[name].host,
                    "relay_port": relays[name].port,
                }
                for name in ("device", "device2")
            ],
            "seeds": [f"{relays[n].host}:{relays[n].port}" for n in ("peer1", "peer2")],
            "quota": quota if quota < 1.0 else None,
            "encoding": encoding,
            "streams": stream_files,
            "cache": cache,
            "warmup": warmup,
        }
        spec_path = Path(tmp) / "worker.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ccied_p2p.bench.regimes", str(spec_path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdin is not None
        result: dict[str, Any] | None = None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if text == "LOADED":
                if quota < 1.0:
                    quota_handle = CpuQuota(quota, proc.pid, shares=65_536).apply()
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            elif text.startswith("RESULT "):
                result = json.loads(text[7:])
        await proc.wait()
        if result is None:
            err = (await proc.stderr.read()).decode(errors="replace")[-3000:] if proc.stderr else ""
            raise RuntimeError(f"worker for quota {quota}, {mbit} Mbit/s failed:\n{err}")
        return result
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        if quota_handle is not None:
            await asyncio.to_thread(quota_handle.release)
        for node in peers:
            await node.close()
        for relay in relays.values():
            await relay.close()


def _reference(split: Any, frames: np.ndarray) -> list[int]:
    import torch

    from ccied_p2p.inputs import LITE_SPEC

    with torch.inference_mode():
        return [int(split(torch.from_numpy(LITE_SPEC.preprocess(f))).argmax(1)) for f in frames]


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker is not None:
        raise SystemExit("--worker is internal")
    import torch

    from ccied_p2p.runtime.quota import find_controller

    torch.set_num_threads(1)
    if args.quick:
        quotas, mbits, names, n = [0.25], [10.0], ["camera"], min(args.frames, 6)
        warmup = min(args.warmup, 6)
    else:
        quotas = [float(q) for q in args.quotas.split(",")]
        mbits = [float(m) for m in args.mbits.split(",")]
        names, n = args.streams.split(","), args.frames
        warmup = args.warmup
    if warmup < 0 or n < 1:
        raise SystemExit("--frames must be >= 1 and --warmup >= 0")
    if any(q < 1.0 for q in quotas):
        find_controller()  # fails early, saying what is needed
    from ccied_p2p.lite import WIRE_ENCODING

    encoding = args.split_encoding or WIRE_ENCODING
    split = _split()
    # The bench's calibration data (3 streams of 1 500 frames); --quick: 3 of 20, which certify nothing.
    cache, calibration = _calibrate(split, 20 if args.quick else 1500, encoding)
    streams = _streams(names, warmup + n)  # each stream's first `warmup` frames only warm the caches
    refs = {name: _reference(split, frames[warmup:]) for name, (frames, _) in streams.items()}
    truth = {name: labels[warmup:] for name, (_, labels) in streams.items()}
    regimes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ccied-regimes-") as tmp:
        files = {}
        for name, (frames, _) in streams.items():
            files[name] = str(Path(tmp) / f"{name}.npy")
            np.save(files[name], frames)
        for quota in quotas:
            for mbit in mbits:
                results = [
                    asyncio.run(_cell(quota, mbit, files, split, tmp, cache, encoding, warmup))
                    for _ in range(max(1, args.repeats))
                ]
                for name in names:
                    per = [cell_rows(quota, mbit, name, r[name], refs[name], truth[name]) for r in results]
                    regimes.extend(median_rows([p[i] for p in per]) for i in range(len(per[0])))
                print(
                    f"regimes: quota {quota:g}, {mbit:g} Mbit/s done",
                    file=sys.stderr,
                    flush=True,
                )
    out = {
        "model": f"EfficientNet-Lite0 224px split after {CUT}, unpruned (lite0_split), sent as {encoding}",
        "split_encoding": encoding,
        "cache": cache,
        "calibration": calibration,
        "warmup": warmup,
        "regimes": regimes,
    }
    if args.plots:
        _plots(out, Path(args.plots))
    return out


def camera_demo(quota: float | None, mbit: float = 10.0, frames: int = 24) -> dict[str, Any]:
    """``ccied-p2p demo --camera``: a 224-px camera stream from a weak device (``quota`` of one core, where
    cgroups allow; None: full speed) to two full-speed peers over ``mbit`` and 20 ms; per frame, what the
    adaptive device chose and its latency, against local and offload on the same frame."""
    import torch

    torch.set_num_threads(1)
    note = ""
    q = 1.0 if quota is None else quota
    if q < 1.0:
        from ccied_p2p.errors import CCIEDError
        from ccied_p2p.runtime.quota import find_controller

        try:
            find_controller()
        except CCIEDError as exc:
            note, q = f"no CPU quota ({exc}): the device runs at full speed", 1.0
    from ccied_p2p.lite import WIRE_ENCODING

    split = _split()
    cache, _ = _calibrate(split, 67, WIRE_ENCODING)
    stream, truth = _streams(["camera"], frames)["camera"]
    ref = _reference(split, stream)
    with tempfile.TemporaryDirectory(prefix="ccied-demo-") as tmp:
        path = str(Path(tmp) / "camera.npy")
        np.save(path, stream)
        result = asyncio.run(_cell(q, mbit, {"camera": path}, split, tmp, cache, WIRE_ENCODING))["camera"]
    row = cell_rows(q, mbit, "camera", result, ref, truth)[0]
    return {
        "quota": q,
        "mbit": mbit,
        "rtt_ms": RTT_MS,
        "note": note,
        "frames": [
            {
                "chosen": c,
                "answered": u,
                "adaptive_ms": a,
                "local_ms": lo,
                "offload_ms": off,
            }
            for c, u, a, lo, off in zip(
                result["adaptive"]["chosen"],
                result["adaptive"]["used"],
                result["adaptive"]["ms"],
                result["local"]["ms"],
                result["offload"]["ms"],
                strict=False,
            )
        ],
        "summary": {
            k: row[k]
            for k in (
                "adaptive_ms",
                "fixed_ms",
                "best_fixed",
                "ratio",
                "accuracy",
                "local_accuracy",
                "failed",
            )
        },
    }


def render_camera_demo(out: dict[str, Any]) -> str:
    lines = [
        f"camera 224 px, device at {out['quota']:.0%} of a core, two full-speed peers, {out['mbit']:g} Mbit/s, "
        f"{out['rtt_ms']:g} ms RTT" + (f" ({out['note']})" if out["note"] else ""),
        f"{'frame':>5}  {'chosen':<28} {'answered':<14} {'adaptive':>9} {'local':>8} {'offload':>8}",
    ]
    for i, f in enumerate(out["frames"]):
        lines.append(
            f"{i:>5}  {f['chosen']:<28} {f['answered']:<14} {f['adaptive_ms']:>9.1f} {f['local_ms']:>8.1f} "
            f"{f['offload_ms']:>8.1f}"
        )
    s = out["summary"]
    fx = s["fixed_ms"]
    lines.append(
        f"mean ms: adaptive {s['adaptive_ms']:.1f}, local {fx['local']:.1f}, offload {fx['offload']:.1f}, "
        f"split {fx['split']:.1f}; adaptive / best fixed ({s['best_fixed']}) = {s['ratio']:.2f}; "
        f"accuracy {s['accuracy']:.0%} (local {s['local_accuracy']:.0%}); failed {s['failed']}"
    )
    return "\n".join(lines)


def _plots(result: dict[str, Any], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    folder.mkdir(parents=True, exist_ok=True)
    regimes = result["regimes"]
    for stay in (False, True):
        rows = [r for r in regimes if r["frames_stay"] is stay]
        streams = sorted({r["stream"] for r in rows})
        quotas = sorted({r["quota"] for r in rows})
        mbits = sorted({r["mbit"] for r in rows})
        fig, axes = plt.subplots(1, len(streams), figsize=(4.5 * len(streams), 3.6), squeeze=False)
        for ax, stream in zip(axes[0], streams, strict=True):
            grid = np.full((len(quotas), len(mbits)), np.nan)
            for r in rows:
                if r["stream"] == stream:
                    grid[quotas.index(r["quota"]), mbits.index(r["mbit"])] = r["ratio"]
            im = ax.imshow(grid, cmap="RdYlGn_r", vmin=0.3, vmax=1.5, origin="lower")
            for i in range(len(quotas)):
                for j in range(len(mbits)):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=9)
            ax.set_xticks(range(len(mbits)), [f"{m:g}" for m in mbits])
            ax.set_yticks(range(len(quotas)), [f"{q:.0%}" for q in quotas])
            ax.set_xlabel("link, Mbit/s (20 ms RTT)")
            if ax is axes[0][0]:  # on the others they would overprint the left neighbour's panel
                ax.set_ylabel("device CPU quota")
            else:
                ax.tick_params(labelleft=False)
            ax.set_title(stream)
        fig.colorbar(im, ax=axes[0].tolist())
        what = "frames stay: adaptive / best of local and split" if stay else "adaptive / best fixed strategy"
        fig.suptitle(f"Mean latency, {what}")
        fig.savefig(folder / f"regimes_ratio{'_frames_stay' if stay else ''}.png", dpi=120)
        plt.close(fig)
    rows = [r for r in regimes if not r["frames_stay"]]
    # One row of panels per stream and quota, one column per link.
    lines = sorted({(r["stream"], r["quota"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    mbits = sorted({r["mbit"] for r in rows})
    fig, axes = plt.subplots(
        len(lines), len(mbits), figsize=(3.4 * len(mbits), 2.4 * len(lines)), squeeze=False
    )
    for ax in axes.flat:
        ax.set_visible(False)
    for r in rows:
        ax = axes[lines.index((r["stream"], r["quota"])), mbits.index(r["mbit"])]
        ax.set_visible(True)
        for name, values in r["latencies_ms"].items():
            if values:
                xs = np.sort(values)
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(labelsize=7)
        ax.set_title(f"{r['stream']} {r['quota']:.0%} {r['mbit']:g} Mbit/s", fontsize=8)
        ax.set_xlabel("ms", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "regimes_cdf.png", dpi=100)
    plt.close(fig)


def render(result: dict[str, Any]) -> str:
    lines = [
        result["model"],
        f"{'stream':<8} {'quota':>5} {'Mbit':>5} {'stay':>5} {'adaptive':>9} {'local':>8} {'offload':>8} "
        f"{'split':>8} {'best':>8} {'ratio':>6} {'acc':>5} {'local':>5} {'fail':>4}  used",
    ]
    for r in result["regimes"]:
        f = r["fixed_ms"]
        used = ",".join(f"{k}:{v}" for k, v in sorted(r["used"].items()))
        lines.append(
            f"{r['stream']:<8} {r['quota']:>5.0%} {r['mbit']:>5g} {str(r['frames_stay'])[0]:>5} "
            f"{r['adaptive_ms']:>9.1f} {f['local']:>8.1f} {f['offload']:>8.1f} {f['split']:>8.1f} "
            f"{r['best_fixed']:>8} {r['ratio']:>6.2f} {r['accuracy']:>5.2f} {r['local_accuracy']:>5.2f} "
            f"{r['failed']:>4}  {used}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(_worker_main(json.loads(Path(sys.argv[1]).read_text())))
