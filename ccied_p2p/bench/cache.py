"""``ccied-p2p bench cache``: the semantic cache on a camera stream of real images through the real split.

Fashion-MNIST test images, the pruned VGG-style split (75% of the split layer's channels pruned). A camera
stream (pool 500, Zipf s=1.0) is served by a fresh :class:`~ccied_p2p.cache.SemanticCache` whose threshold,
k and votes were calibrated on a *different* camera stream (another seed, so another pool of images).
Reported against the uncached model (head and tail on every request): hit rate, agreement of hits with the
uncached model, accuracy loss, the same loss on the no-redundancy control stream, lookup and insert
latency at 100k entries, the numpy/usearch crossover, and hit rates of the eviction policies.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt

from ccied_p2p.cache import (
    AUTO_CROSSOVER,
    BruteForceIndex,
    GlobalAvgPool,
    Hit,
    SemanticCache,
    USearchIndex,
    VectorIndex,
)
from ccied_p2p.workloads import CameraParams, camera_stream, collect, control_stream

__all__ = ["add_arguments", "render", "run"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ccied-p2p bench cache``."""
    parser.add_argument("--model", default="vgg", help="reference model (default vgg)")
    parser.add_argument("--amount", type=float, default=0.75, help="share of split-layer channels pruned")
    parser.add_argument("--requests", type=int, default=5000, help="camera stream length")
    parser.add_argument("--pool", type=int, default=500, help="distinct images in the camera's view")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of image popularity")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluated camera stream")
    parser.add_argument("--calibration-seed", type=int, default=1, help="seed of the calibration stream")
    parser.add_argument("--budget", type=float, default=0.01, help="max false-hit rate for calibration")
    parser.add_argument(
        "--bound",
        type=float,
        default=0.0,
        help="calibrate against the Wilson upper bound at this confidence (0: the point estimate)",
    )
    parser.add_argument("--fill", type=int, default=100_000, help="entries for the latency measurement")
    parser.add_argument("--queries", type=int, default=1000, help="timed lookups and inserts")
    parser.add_argument(
        "--capacities", default="50,100,200", help="cache capacities for the eviction comparison"
    )
    parser.add_argument("--no-crossover", action="store_true", help="skip the numpy/usearch crossover table")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test, not the targets)")


class _Model:
    """The split model over uint8 images: unit features of the activation, labels and confidences."""

    def __init__(self, model: str, amount: float) -> None:
        import torch

        from ccied_p2p import datasets, models

        torch.set_num_threads(1)
        self.torch = torch
        self.data = datasets.load("fashion-mnist")
        self.split = models.reference_split(model, self.data, amount=amount, progress=False)
        self.fingerprint = self.split.fingerprint
        self.reducer = GlobalAvgPool()
        self.model_seconds = 0.0

    def __call__(
        self, images: npt.NDArray[np.uint8], batch: int = 500
    ) -> tuple[FloatArray, IntArray, FloatArray]:
        feats, labels, confs = [], [], []
        start = time.perf_counter()
        with self.torch.inference_mode():
            for i in range(0, len(images), batch):
                h = self.split.head(self.data.normalize(images[i : i + batch]))
                p = self.torch.softmax(self.split.tail(h), dim=1)
                conf, lab = p.max(dim=1)
                feats.append(self.reducer(h.numpy()))
                labels.append(lab.numpy().astype(np.int64))
                confs.append(conf.numpy().astype(np.float32))
        self.model_seconds += time.perf_counter() - start
        return np.concatenate(feats), np.concatenate(labels), np.concatenate(confs)

    def activation(self, image: npt.NDArray[np.uint8]) -> FloatArray:
        with self.torch.inference_mode():
            out: FloatArray = self.split.head(self.data.normalize(image[None])).numpy()
        return out


def _serve(
    cache: SemanticCache, fingerprint: str, feats: FloatArray, preds: IntArray, confs: FloatArray
) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Serve a stream: the label each request gets and whether it came from the cache."""
    served = np.empty(len(preds), dtype=np.int64)
    hit = np.zeros(len(preds), dtype=bool)
    for i in range(len(preds)):
        now = float(i)
        r = cache.lookup(feats[i], fingerprint, now)
        if isinstance(r, Hit):
            served[i], hit[i] = r.label, True
        else:
            served[i] = preds[i]
            cache.insert(feats[i], int(preds[i]), float(confs[i]), fingerprint, now)
    return served, hit


def _quality(
    served: IntArray, hit: npt.NDArray[np.bool_], preds: IntArray, truth: IntArray
) -> dict[str, Any]:
    hits = int(hit.sum())
    return {
        "requests": len(preds),
        "hits": hits,
        "hit_rate": hits / len(preds),
        "hit_agreement": float(np.mean(served[hit] == preds[hit])) if hits else 1.0,
        "false_hits": int(np.sum(served[hit] != preds[hit])),
        "uncached_accuracy": float(np.mean(preds == truth)),
        "cached_accuracy": float(np.mean(served == truth)),
        "accuracy_loss_pp": 100.0 * float(np.mean(preds == truth) - np.mean(served == truth)),
    }


def _p50_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def _latency(
    model: _Model, fingerprint: str, fill: int, queries: int, rng: np.random.Generator, params: CameraParams
) -> dict[str, Any]:
    """Lookup and insert latency in a cache holding ``fill`` real features (one thread, median)."""
    data = model.data
    base = np.concatenate([data.train_images, data.test_images])
    if fill > len(base):
        # The rest are camera captures of test images: real images, perturbed as on a camera.
        extra_idx, extra, _ = collect(
            camera_stream(
                data.test_images,
                data.test_labels,
                fill - len(base),
                CameraParams(pool_size=len(data.test_images), zipf_s=0.0),
                seed=11,
            )
        )
        del extra_idx
        base = np.concatenate([base, extra])
    images = base[:fill]
    t0 = time.perf_counter()
    feats, preds, confs = model(images)
    featurize_s = time.perf_counter() - t0
    cache = SemanticCache(b"bench", capacity=fill)
    t0 = time.perf_counter()
    cache.insert_many(feats, preds, confs, fingerprint, 0.0)
    fill_s = time.perf_counter() - t0
    q_idx, q_images, _ = collect(
        camera_stream(data.test_images, data.test_labels, 2 * queries, params, seed=12)
    )
    del q_idx
    q_feats, q_preds, q_confs = model(q_images)
    acts = [model.activation(img) for img in q_images[:queries]]
    lookups, reduces, inserts = [], [], []
    for i in range(queries):
        t = time.perf_counter()
        cache.lookup(q_feats[i], fingerprint, 1.0)
        lookups.append(time.perf_counter() - t)
        t = time.perf_counter()
        cache.features(acts[i])
        reduces.append(time.perf_counter() - t)
    for i in range(queries, 2 * queries):
        t = time.perf_counter()
        cache.insert(q_feats[i], int(q_preds[i]), float(q_confs[i]), fingerprint, 2.0)
        inserts.append(time.perf_counter() - t)
    return {
        "entries": len(cache),
        "backend": cache.index_backend(fingerprint),
        "dim": int(feats.shape[1]),
        "lookup_p50_ms": _p50_ms(lookups),
        "lookup_p99_ms": 1e3 * float(np.quantile(lookups, 0.99)),
        "reduce_p50_ms": _p50_ms(reduces),
        "insert_p50_ms": _p50_ms(inserts),
        "insert_p99_ms": 1e3 * float(np.quantile(inserts, 0.99)),
        "evictions_during_inserts": cache.stats().evictions,
        "fill_seconds": fill_s,
        "featurize_seconds": featurize_s,
        "k": cache.k,
    }


def _crossover(feats: FloatArray, sizes: list[int], queries: FloatArray, k: int) -> list[dict[str, Any]]:
    """Lookup and insert p50 of numpy brute force vs usearch at several sizes, same real features."""
    rows = []
    for n in sizes:
        if n > len(feats):
            break
        row: dict[str, Any] = {"entries": n}
        for index in (BruteForceIndex(feats.shape[1]), USearchIndex(feats.shape[1])):
            vi: VectorIndex = index
            vi.add_many(np.arange(n, dtype=np.int64), feats[:n])
            look = []
            for q in queries:
                t = time.perf_counter()
                vi.search(q, k)
                look.append(time.perf_counter() - t)
            ins = []
            for j, q in enumerate(queries[:200]):
                t = time.perf_counter()
                vi.add(n + j, q)
                ins.append(time.perf_counter() - t)
            row[f"{vi.name}_lookup_ms"] = _p50_ms(look)
            row[f"{vi.name}_insert_ms"] = _p50_ms(ins)
        rows.append(row)
    return rows


def _eviction(
    fingerprint: str,
    streams: dict[str, tuple[FloatArray, IntArray, FloatArray]],
    capacities: list[int],
    setting: tuple[float, int, int, float],
) -> list[dict[str, Any]]:
    threshold, k, votes, gate = setting
    rows = []
    for name, (feats, preds, confs) in streams.items():
        for capacity in capacities:
            for policy in ("lru", "lfu", "slru"):
                cache = SemanticCache(
                    b"bench", capacity=capacity, threshold=threshold, k=k, votes=votes, min_confidence=gate,
                    eviction=policy, index="numpy",
                )  # fmt: skip
                served, hit = _serve(cache, fingerprint, feats, preds, confs)
                rows.append(
                    {
                        "stream": name,
                        "capacity": capacity,
                        "policy": policy,
                        "hit_rate": float(hit.mean()),
                        "hit_agreement": float(np.mean(served[hit] == preds[hit])) if hit.any() else 1.0,
                    }
                )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure everything; the returned object is what ``--json`` prints."""
    if args.quick:
        args.requests, args.fill, args.queries = min(args.requests, 1500), min(args.fill, 20_000), 200
    started = time.perf_counter()
    model = _Model(args.model, args.amount)
    data = model.data
    fp = model.fingerprint
    params = CameraParams(pool_size=args.pool, zipf_s=args.zipf)
    images, truth = data.test_images, data.test_labels

    cal_idx, cal_images, _ = collect(
        camera_stream(images, truth, args.requests, params, seed=args.calibration_seed)
    )
    cal_feats, cal_preds, cal_confs = model(cal_images)
    cache = SemanticCache(b"bench")
    t0 = time.perf_counter()
    cal = cache.calibrate(cal_feats, cal_preds, args.budget, confidences=cal_confs, confidence=args.bound)
    calibrate_s = time.perf_counter() - t0

    idx, cam_images, cam_truth = collect(camera_stream(images, truth, args.requests, params, seed=args.seed))
    feats, preds, confs = model(cam_images)
    served, hit = _serve(cache, fp, feats, preds, confs)
    camera = _quality(served, hit, preds, cam_truth)
    camera["distinct_images"] = len(set(idx.tolist()))
    camera["pool_overlap_with_calibration"] = len(set(idx.tolist()) & set(cal_idx.tolist()))
    # How often the uncached model itself changes its mind between captures of one image: the floor of
    # any cache's disagreement.
    first: dict[int, int] = {}
    flips = sum(int(first.setdefault(i, p) != p) for i, p in zip(idx.tolist(), preds.tolist(), strict=True))
    camera["model_flip_rate"] = flips / max(1, len(preds) - len(first))

    c_idx, c_images, c_truth = collect(control_stream(images, truth))
    del c_idx
    c_feats, c_preds, c_confs = model(c_images)
    control_cache = SemanticCache(
        b"bench", threshold=cal.threshold, k=cal.k, votes=cal.votes, min_confidence=cal.min_confidence
    )
    c_served, c_hit = _serve(control_cache, fp, c_feats, c_preds, c_confs)
    control = _quality(c_served, c_hit, c_preds, c_truth)

    rng = np.random.default_rng(args.seed)
    latency = _latency(model, fp, args.fill, args.queries, rng, params)

    crossover: list[dict[str, Any]] = []
    if not args.no_crossover:
        sizes = [s for s in (1000, 3000, 10_000, 20_000, 30_000, 100_000) if s <= args.fill]
        all_feats, _, _ = model(
            np.concatenate([data.train_images, data.test_images])[: max(sizes, default=0)]
        )
        crossover = _crossover(all_feats, sizes, feats[: min(1000, args.queries)], cal.k)

    drift_images = collect(
        camera_stream(
            images,
            truth,
            args.requests,
            CameraParams(pool_size=args.pool, zipf_s=args.zipf, scene_length=1000),
            seed=args.seed,
        )
    )[1]
    drift = model(drift_images)
    capacities = [int(c) for c in args.capacities.split(",") if c]
    eviction = _eviction(
        fp,
        {"static": (feats, preds, confs), "drift": drift},
        capacities,
        (cal.threshold, cal.k, cal.votes, cal.min_confidence),
    )

    return {
        "model": args.model,
        "fingerprint": fp,
        "pruned": args.amount,
        "workload": {
            **asdict(params),
            "requests": args.requests,
            "seed": args.seed,
            "calibration_seed": args.calibration_seed,
        },
        "calibration": {**asdict(cal), "seconds": calibrate_s},
        "hit_rate": camera["hit_rate"],
        "hit_agreement": camera["hit_agreement"],
        "accuracy_loss_pp": camera["accuracy_loss_pp"],
        "control_accuracy_loss_pp": control["accuracy_loss_pp"],
        "lookup_p50_ms": latency["lookup_p50_ms"],
        "insert_p50_ms": latency["insert_p50_ms"],
        "entries": latency["entries"],
        "camera": camera,
        "control": control,
        "latency": latency,
        "index_crossover": crossover,
        "auto_crossover_entries": AUTO_CROSSOVER,
        "eviction": eviction,
        "model_seconds": model.model_seconds,
        "seconds": time.perf_counter() - started,
        "quick": bool(args.quick),
    }


_TARGETS = {
    "hit_rate": (">=", 0.5),
    "hit_agreement": (">=", 0.99),
    "accuracy_loss_pp": ("<=", 0.5),
    "control_accuracy_loss_pp": ("<=", 0.5),
    "lookup_p50_ms": ("<=", 0.3),
    "insert_p50_ms": ("<=", 1.0),
}


def render(result: dict[str, Any]) -> str:
    """The human table."""
    cal = result["calibration"]
    cam, ctl, lat = result["camera"], result["control"], result["latency"]
    w = result["workload"]
    lines = [
        f"semantic cache: {result['model']} split ({result['pruned']:.0%} of split channels pruned), "
        f"fingerprint {result['fingerprint'][:12]}",
        f"camera stream: {w['requests']} requests, pool {w['pool_size']}, Zipf s={w['zipf_s']}, seed {w['seed']}; "
        f"calibrated on seed {w['calibration_seed']}",
        f"calibration: threshold {cal['threshold']:.5f}, k={cal['k']}, votes={cal['votes']}, "
        f"min_confidence {cal['min_confidence']:.2f}; in-sample hit rate {cal['hit_rate']:.3f}, "
        f"false-hit rate {cal['false_hit_rate']:.4f} (budget {cal['budget']}, {cal['candidates']} settings, "
        f"{cal['seconds']:.1f} s)",
        "",
        f"{'metric':<28} {'value':>10} {'target':>10}  ok",
    ]
    for key, (op, target) in _TARGETS.items():
        value = result[key]
        ok = value >= target if op == ">=" else value <= target
        lines.append(f"{key:<28} {value:>10.4f} {op + ' ' + str(target):>10}  {'yes' if ok else 'NO'}")
    lines.append(f"{'entries (latency cache)':<28} {result['entries']:>10}")
    lines += [
        "",
        f"camera: {cam['hits']}/{cam['requests']} hits, {cam['false_hits']} false; accuracy uncached "
        f"{cam['uncached_accuracy']:.4f}, cached {cam['cached_accuracy']:.4f}; model flip rate between "
        f"captures {cam['model_flip_rate']:.4f}",
        f"control: {ctl['hits']}/{ctl['requests']} hits, {ctl['false_hits']} false; accuracy uncached "
        f"{ctl['uncached_accuracy']:.4f}, cached {ctl['cached_accuracy']:.4f}",
        f"latency at {lat['entries']} x {lat['dim']} ({lat['backend']}): lookup p50 {lat['lookup_p50_ms']:.3f} ms "
        f"(p99 {lat['lookup_p99_ms']:.3f}), insert p50 {lat['insert_p50_ms']:.3f} ms (p99 "
        f"{lat['insert_p99_ms']:.3f}, evicting), feature reduce p50 {lat['reduce_p50_ms']:.3f} ms",
    ]
    if result["index_crossover"]:
        lines += [
            "",
            f"{'entries':>8} {'numpy lookup':>13} {'usearch lookup':>15} {'numpy insert':>13} {'usearch insert':>15}  (ms, p50)",
        ]
        for row in result["index_crossover"]:
            lines.append(
                f"{row['entries']:>8} {row['numpy_lookup_ms']:>13.4f} {row['usearch_lookup_ms']:>15.4f} "
                f"{row['numpy_insert_ms']:>13.4f} {row['usearch_insert_ms']:>15.4f}"
            )
        lines.append(f"AutoIndex switches to usearch at {result['auto_crossover_entries']} entries")
    lines += ["", f"{'stream':<8} {'capacity':>8} {'lru':>8} {'lfu':>8} {'slru':>8}  (hit rate)"]
    table: dict[tuple[str, int], dict[str, float]] = {}
    for row in result["eviction"]:
        table.setdefault((row["stream"], row["capacity"]), {})[row["policy"]] = row["hit_rate"]
    for (stream, capacity), rates in table.items():
        lines.append(
            f"{stream:<8} {capacity:>8} {rates.get('lru', 0):>8.3f} {rates.get('lfu', 0):>8.3f} {rates.get('slru', 0):>8.3f}"
        )
    lines.append(f"\ntotal {result['seconds']:.0f} s (model {result['model_seconds']:.0f} s)")
    return "\n".join(lines)
