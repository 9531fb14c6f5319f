"""The offline analyses of ``bench e2e``: threshold sweep, pruning curve, cached vs uncached, the planner's view."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from typing import Any

import numpy as np
import torch

from ccied_p2p.bench.e2e_parts import (
    CONFIGS,
    PRUNED_ENCODING,
    SPLIT_ENCODING,
    STREAM_SEED,
    Parts,
    Stream,
    _labels,
)

log = logging.getLogger(__name__)


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
