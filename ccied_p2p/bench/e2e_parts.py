"""What ``bench e2e`` runs on: its constants, the reference parts and request streams, and per-run metrics."""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ccied_p2p.report import CONFIG_ORDER, STAGES

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
