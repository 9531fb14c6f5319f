"""``ccied-p2p bench cache``: the semantic cache on camera streams of real images through the real split.

Fashion-MNIST test images, the pruned VGG-style split (75% of the split layer's channels pruned). The
evaluated camera stream (pool 500, Zipf s=1.0, seed 0) is served by a fresh
:class:`~ccied_p2p.cache.SemanticCache` whose threshold, k, votes and insert gate were calibrated on
*other* camera streams (other seeds, so other pools of images), exactly as a node would serve it: a hit
answers, an audited hit or a miss runs the model. Reported against the uncached model (head and tail on
every request): hit rate, agreement of hits with the uncached model, accuracy loss, the same on the
no-redundancy control stream and on more held-out cameras, lookup and insert latency at 100k entries, the
numpy/usearch crossover, hit rates of the eviction policies, and the same quality figures for the other
feature reducer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt

from ccied_p2p.bench.cache_eval import Stream, _configured, _evaluate
from ccied_p2p.cache import (
    BruteForceIndex,
    Calibration,
    FeatureReducer,
    GlobalAvgPool,
    GridPool,
    Hit,
    SemanticCache,
    USearchIndex,
    VectorIndex,
    auto_crossover,
    serve_stream,
)
from ccied_p2p.workloads import CameraParams, camera_stream, collect, control_stream

__all__ = ["add_arguments", "render", "run"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

_TARGETS = {
    "hit_rate": (">=", 0.5),
    "hit_agreement": (">=", 0.99),
    "accuracy_loss_pp": ("<=", 0.5),
    "control_accuracy_loss_pp": ("<=", 0.5),
    "lookup_p50_ms": ("<=", 0.3),
    "insert_p50_ms": ("<=", 1.0),
}


def _seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ccied-p2p bench cache``."""
    parser.add_argument(
        "--workload",
        default="fashion",
        choices=["fashion", "photo-camera", "video"],
        help="fashion: 28x28 camera streams (below); photo-camera / video: 224-px frames through the "
        "EfficientNet-Lite0 split (ccied_p2p.bench.camera_cache)",
    )
    parser.add_argument("--model", default="vgg", help="reference model (default vgg)")
    parser.add_argument(
        "--amount",
        type=float,
        default=None,
        help="share of split-layer channels pruned (default 0.75 for fashion; 0, the unpruned split, for "
        "photo-camera and video; any other value picks the pruned, distilled Lite0 split)",
    )
    parser.add_argument("--requests", type=int, default=5000, help="length of each camera stream")
    parser.add_argument("--pool", type=int, default=500, help="distinct images in a camera's view")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of image popularity")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluated camera stream")
    parser.add_argument("--calibration-seeds", default="1,2,3", help="seeds of the calibration streams")
    parser.add_argument("--holdout-seeds", default="4,5", help="more evaluated cameras (robustness)")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="max false-hit rate for calibration (default 0.01; photo-camera and video: "
        "camera_cache.CAMERA_BUDGET, a margin under the 1%% target)",
    )
    parser.add_argument(
        "--bound",
        type=float,
        default=0.95,
        help="hold the Clopper-Pearson upper bound at this confidence to the budget",
    )
    parser.add_argument("--reducer", default="grid2", choices=["grid2", "gap"], help="feature reducer")
    parser.add_argument("--compare", default="gap", help="other reducers to report ('' for none)")
    parser.add_argument("--fill", type=int, default=100_000, help="entries for the latency measurement")
    parser.add_argument("--queries", type=int, default=1000, help="timed lookups and inserts")
    parser.add_argument("--capacities", default="50,100,200", help="cache capacities for the eviction table")
    parser.add_argument("--no-crossover", action="store_true", help="skip the numpy/usearch crossover table")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test, not the targets)")


class _Model:
    """The split model over uint8 images: per-reducer unit features, labels and confidences."""

    def __init__(self, model: str, amount: float) -> None:
        import torch

        from ccied_p2p import datasets, models

        torch.set_num_threads(1)
        self.torch = torch
        self.data = datasets.load("fashion-mnist")
        self.split = models.reference_split(model, self.data, amount=amount, progress=False)
        self.fingerprint = self.split.fingerprint
        mask = self.split.channel_mask
        live = None if mask is None else [int(c) for c in np.flatnonzero(mask.numpy())]
        # Pruned channels are always zero: dropping them shrinks the feature, not any distance.
        self.reducers: dict[str, FeatureReducer] = {
            "gap": GlobalAvgPool(channels=live),
            "grid2": GridPool(2, channels=live),
        }
        self.seconds = 0.0

    def __call__(
        self, images: npt.NDArray[np.uint8], batch: int = 500
    ) -> tuple[dict[str, FloatArray], IntArray, FloatArray]:
        feats: dict[str, list[FloatArray]] = {name: [] for name in self.reducers}
        labels, confs = [], []
        start = time.perf_counter()
        with self.torch.inference_mode():
            for i in range(0, len(images), batch):
                h = self.split.head(self.data.normalize(images[i : i + batch]))
                p = self.torch.softmax(self.split.tail(h), dim=1)
                conf, lab = p.max(dim=1)
                act = h.numpy()
                for name, reducer in self.reducers.items():
                    feats[name].append(reducer(act))
                labels.append(lab.numpy().astype(np.int64))
                confs.append(conf.numpy().astype(np.float32))
        self.seconds += time.perf_counter() - start
        return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels), np.concatenate(confs)

    def stream(self, seed: int | None, requests: int, params: CameraParams) -> Stream:
        data = self.data
        if seed is None:
            idx, images, truth = collect(control_stream(data.test_images, data.test_labels))
        else:
            idx, images, truth = collect(
                camera_stream(data.test_images, data.test_labels, requests, params, seed)
            )
        feats, preds, confs = self(images)
        return feats, preds, confs, truth, idx

    def activation(self, image: npt.NDArray[np.uint8]) -> FloatArray:
        with self.torch.inference_mode():
            out: FloatArray = self.split.head(self.data.normalize(image[None])).numpy()
        return out


def _p50_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def _fill_images(model: _Model, fill: int) -> npt.NDArray[np.uint8]:
    """``fill`` real images: Fashion-MNIST train and test, then camera captures of test images."""
    data = model.data
    base = np.concatenate([data.train_images, data.test_images])
    if fill > len(base):
        uniform = CameraParams(pool_size=len(data.test_images), zipf_s=0.0)
        extra = collect(
            camera_stream(data.test_images, data.test_labels, fill - len(base), uniform, seed=11)
        )[1]
        base = np.concatenate([base, extra])
    return base[:fill]


def _latency(
    model: _Model,
    reducer: str,
    fill: tuple[FloatArray, IntArray, FloatArray],
    queries: int,
    params: CameraParams,
    cal: Calibration,
) -> dict[str, Any]:
    """Lookup and insert latency in a full cache of real features (one thread, median of ``queries``)."""
    feats, preds, confs = fill
    fp = model.fingerprint
    cache = SemanticCache(
        b"bench",
        capacity=len(feats),
        threshold=cal.threshold,
        k=cal.k,
        votes=cal.votes,
        reducer=model.reducers[reducer],
    )
    t0 = time.perf_counter()
    cache.insert_many(feats, preds, confs, fp, 0.0)
    fill_s = time.perf_counter() - t0
    data = model.data
    q_images = collect(camera_stream(data.test_images, data.test_labels, 2 * queries, params, seed=12))[1]
    q_all, q_preds, q_confs = model(q_images)
    q_feats = q_all[reducer]
    acts = [model.activation(img) for img in q_images[:queries]]
    lookups, reduces, inserts = [], [], []
    hits = 0
    for i in range(queries):
        t = time.perf_counter()
        r = cache.lookup(q_feats[i], fp, 1.0)
        lookups.append(time.perf_counter() - t)
        hits += isinstance(r, Hit)
        t = time.perf_counter()
        cache.features(acts[i])
        reduces.append(time.perf_counter() - t)
    for i in range(queries, 2 * queries):
        t = time.perf_counter()
        cache.insert(q_feats[i], int(q_preds[i]), float(q_confs[i]), fp, 2.0)
        inserts.append(time.perf_counter() - t)
    return {
        "entries": len(cache),
        "backend": cache.index_backend(fp),
        "dim": int(feats.shape[1]),
        "k": cache.k,
        "lookup_p50_ms": _p50_ms(lookups),
        "lookup_p99_ms": 1e3 * float(np.quantile(lookups, 0.99)),
        "lookup_hits": hits,
        "reduce_p50_ms": _p50_ms(reduces),
        "insert_p50_ms": _p50_ms(inserts),
        "insert_p99_ms": 1e3 * float(np.quantile(inserts, 0.99)),
        "evictions_during_inserts": cache.stats().evictions,
        "fill_seconds": fill_s,
    }


def _crossover(feats: FloatArray, sizes: list[int], queries: FloatArray, k: int) -> list[dict[str, Any]]:
    """Lookup and insert p50 of numpy brute force vs usearch at several sizes, on the same real features."""
    rows = []
    for n in sizes:
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
            for j, q in enumerate(queries[:300]):
                t = time.perf_counter()
                vi.add(n + j, q)
                ins.append(time.perf_counter() - t)
            row[f"{vi.name}_lookup_ms"] = _p50_ms(look)
            row[f"{vi.name}_insert_ms"] = _p50_ms(ins)
        rows.append(row)
    return rows


def _eviction(
    cal: Calibration, fingerprint: str, streams: dict[str, Stream], reducer: str, capacities: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for name, (feats, preds, confs, _, _) in streams.items():
        for capacity in capacities:
            for policy in ("lru", "lfu", "slru"):
                cache = _configured(cal, capacity=capacity, eviction=policy, index="numpy")
                served, hit = serve_stream(cache, feats[reducer], preds, confs, fingerprint)
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


def _calibrate(streams: list[Stream], reducer: str, args: argparse.Namespace) -> tuple[Calibration, float]:
    t0 = time.perf_counter()
    cal = SemanticCache(b"bench").calibrate(
        [s[0][reducer] for s in streams],
        [s[1] for s in streams],
        args.budget,
        confidences=[s[2] for s in streams],
        confidence=args.bound,
        apply=False,
    )
    return cal, time.perf_counter() - t0


def _defaults(args: argparse.Namespace) -> None:
    """Fill the options whose default depends on the workload."""
    if not hasattr(args, "workload"):
        args.workload = "fashion"
    if args.workload == "fashion":
        args.amount = 0.75 if args.amount is None else args.amount
        args.budget = 0.01 if args.budget is None else args.budget
        return
    if args.requests == 5000:  # the 28x28 default; camera frames cost ~0.1 s each
        args.requests = 1500
    if args.amount is None:  # the project sends the unpruned Lite0 split (in 4-bit values)
        args.amount = 0.0
    # args.budget stays None: camera_cache.CAMERA_BUDGET


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure everything; the returned object is what ``--json`` prints."""
    _defaults(args)
    if args.workload != "fashion":
        from ccied_p2p.bench import camera_cache

        return camera_cache.run(args)
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=1):  # one thread: numpy's BLAS as well as torch
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.requests, args.fill, args.queries = min(args.requests, 1500), min(args.fill, 20_000), 200
        args.calibration_seeds, args.holdout_seeds = "1", ""
    started = time.perf_counter()
    model = _Model(args.model, args.amount)
    fp = model.fingerprint
    params = CameraParams(pool_size=args.pool, zipf_s=args.zipf)
    cal_streams = [model.stream(s, args.requests, params) for s in _seeds(args.calibration_seeds)]
    camera = model.stream(args.seed, args.requests, params)
    control = model.stream(None, 0, params)
    holdouts = {s: model.stream(s, args.requests, params) for s in _seeds(args.holdout_seeds)}

    reducers = [args.reducer] + [r for r in args.compare.split(",") if r and r != args.reducer]
    quality: dict[str, dict[str, Any]] = {}
    for reducer in reducers:
        cal, seconds = _calibrate(cal_streams, reducer, args)
        quality[reducer] = {
            "dim": int(camera[0][reducer].shape[1]),
            "calibration": {**asdict(cal), "seconds": seconds, "streams": _seeds(args.calibration_seeds)},
            "camera": _evaluate(cal, fp, camera, reducer),
            "control": _evaluate(cal, fp, control, reducer),
            "holdout": {str(s): _evaluate(cal, fp, st, reducer) for s, st in holdouts.items()},
        }
    main = quality[args.reducer]
    cal = Calibration(**{k: v for k, v in main["calibration"].items() if k not in ("seconds", "streams")})

    fill_feats, fill_preds, fill_confs = model(_fill_images(model, args.fill))
    latency = _latency(
        model, args.reducer, (fill_feats[args.reducer], fill_preds, fill_confs), args.queries, params, cal
    )
    crossover: list[dict[str, Any]] = []
    if not args.no_crossover:
        sizes = [s for s in (1000, 3000, 10_000, 20_000, 30_000, 100_000) if s <= args.fill]
        queries = camera[0][args.reducer][: min(1000, args.queries)]
        crossover = _crossover(fill_feats[args.reducer], sizes, queries, cal.k)

    drift = model.stream(args.seed, args.requests, CameraParams(args.pool, args.zipf, scene_length=1000))
    capacities = [int(c) for c in args.capacities.split(",") if c]
    eviction = _eviction(cal, fp, {"static": camera, "drift": drift}, args.reducer, capacities)

    return {
        "model": args.model,
        "fingerprint": fp,
        "pruned": args.amount,
        "reducer": args.reducer,
        "workload": {**asdict(params), "requests": args.requests, "seed": args.seed},
        "calibration": main["calibration"],
        "hit_rate": main["camera"]["hit_rate"],
        "hit_agreement": main["camera"]["hit_agreement"],
        "accuracy_loss_pp": main["camera"]["accuracy_loss_pp"],
        "control_accuracy_loss_pp": main["control"]["accuracy_loss_pp"],
        "lookup_p50_ms": latency["lookup_p50_ms"],
        "insert_p50_ms": latency["insert_p50_ms"],
        "entries": latency["entries"],
        "camera": main["camera"],
        "control": main["control"],
        "holdout": main["holdout"],
        "reducers": quality,
        "latency": latency,
        "index_crossover": crossover,
        "auto_crossover_entries": auto_crossover(latency["dim"]),
        "eviction": eviction,
        "model_seconds": model.seconds,
        "seconds": time.perf_counter() - started,
        "quick": bool(args.quick),
    }


def _quality_line(name: str, q: dict[str, Any]) -> str:
    return (
        f"{name:<14} {q['hit_rate']:>6.3f} {q['hit_agreement']:>8.4f} {q['accuracy_loss_pp']:>+8.2f} "
        f"{q['hits']:>6} {q['false_hits']:>6} {q['audits']:>6} {q['audit_failures']:>6} {q['model_flip_rate']:>7.3f}"
    )


def render(result: dict[str, Any]) -> str:
    """The human table."""
    if isinstance(result.get("workload"), str):
        from ccied_p2p.bench import camera_cache

        return camera_cache.render(result)
    cal = result["calibration"]
    lat = result["latency"]
    w = result["workload"]
    lines = [
        f"semantic cache: {result['model']} split, {result['pruned']:.0%} of split channels pruned, "
        f"fingerprint {result['fingerprint'][:12]}, reducer {result['reducer']}",
        f"camera: {w['requests']} requests, pool {w['pool_size']}, Zipf s={w['zipf_s']}, seed {w['seed']}; "
        f"calibrated on seeds {cal['streams']}",
        f"calibration: threshold {cal['threshold']:.5f}, k={cal['k']}, votes={cal['votes']}, min_confidence "
        f"{cal['min_confidence']:.2f}; in-sample hit rate {cal['hit_rate']:.3f}, false-hit rate "
        f"{cal['false_hit_rate']:.4f} (bound {cal['false_hit_bound']:.4f} <= {cal['budget']}), "
        f"{cal['candidates']} settings in {cal['seconds']:.0f} s",
        "",
        f"{'metric':<26} {'value':>10} {'target':>9}  ok",
    ]
    for key, (op, target) in _TARGETS.items():
        value = result[key]
        ok = value >= target if op == ">=" else value <= target
        lines.append(f"{key:<26} {value:>10.4f} {op + ' ' + str(target):>9}  {'yes' if ok else 'NO'}")
    lines.append(f"{'entries':<26} {result['entries']:>10}")
    lines += [
        "",
        f"{'stream':<14} {'hit':>6} {'agree':>8} {'loss pp':>8} {'hits':>6} {'false':>6} {'audits':>6} "
        f"{'failed':>6} {'flips':>7}",
    ]
    for reducer, q in result["reducers"].items():
        tag = "" if reducer == result["reducer"] else f" [{reducer}]"
        lines.append(_quality_line(f"camera{tag}", q["camera"]))
        lines.append(_quality_line(f"control{tag}", q["control"]))
        for seed, h in q["holdout"].items():
            lines.append(_quality_line(f"seed {seed}{tag}", h))
        if tag:
            c = q["calibration"]
            lines.append(
                f"{'':<14} ({reducer}: {q['dim']}-d, threshold {c['threshold']:.5f}, k={c['k']}, "
                f"votes={c['votes']}, min_confidence {c['min_confidence']:.2f})"
            )
    lines += [
        "",
        f"latency at {lat['entries']} x {lat['dim']} ({lat['backend']}, k={lat['k']}): lookup p50 "
        f"{lat['lookup_p50_ms']:.3f} ms (p99 {lat['lookup_p99_ms']:.3f}), insert p50 {lat['insert_p50_ms']:.3f} ms "
        f"(p99 {lat['insert_p99_ms']:.3f}, each evicting one), reduce p50 {lat['reduce_p50_ms']:.3f} ms",
    ]
    if result["index_crossover"]:
        lines += [
            "",
            f"{'entries':>8} {'numpy find':>11} {'usearch find':>13} {'numpy add':>10} {'usearch add':>12}  (ms p50)",
        ]
        for row in result["index_crossover"]:
            lines.append(
                f"{row['entries']:>8} {row['numpy_lookup_ms']:>11.4f} {row['usearch_lookup_ms']:>13.4f} "
                f"{row['numpy_insert_ms']:>10.4f} {row['usearch_insert_ms']:>12.4f}"
            )
        lines.append(f"AutoIndex answers from usearch above {result['auto_crossover_entries']} entries")
    lines += ["", f"{'stream':<8} {'capacity':>8} {'lru':>7} {'lfu':>7} {'slru':>7}  (hit rate)"]
    table: dict[tuple[str, int], dict[str, float]] = {}
    for row in result["eviction"]:
        table.setdefault((row["stream"], row["capacity"]), {})[row["policy"]] = row["hit_rate"]
    for (stream, capacity), rates in table.items():
        cells = " ".join(f"{rates.get(p, 0.0):>7.3f}" for p in ("lru", "lfu", "slru"))
        lines.append(f"{stream:<8} {capacity:>8} {cells}")
    lines.append(f"\ntotal {result['seconds']:.0f} s (model {result['model_seconds']:.0f} s)")
    return "\n".join(lines)
