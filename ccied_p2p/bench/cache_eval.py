"""One calibrated cache serving one stream, scored: shared by ``bench cache`` and its camera-resolution part.

Apart from :mod:`ccied_p2p.bench.cache` so that :mod:`ccied_p2p.bench.camera_cache`, which that command runs,
does not import it back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ccied_p2p.cache import (
    Calibration,
    SemanticCache,
    serve_stream,
)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Stream = tuple[dict[str, FloatArray], IntArray, FloatArray, IntArray, IntArray]
"""Per-reducer features, model labels, model confidences, true labels, test-set indices."""


def _configured(cal: Calibration, **kwargs: Any) -> SemanticCache:
    return SemanticCache(
        b"bench",
        threshold=cal.threshold,
        k=cal.k,
        votes=cal.votes,
        min_confidence=cal.min_confidence,
        **kwargs,
    )


def _evaluate(
    cal: Calibration, fingerprint: str, stream: Stream, reducer: str, **kwargs: Any
) -> dict[str, Any]:
    feats, preds, confs, truth, idx = stream
    cache = _configured(cal, **kwargs)
    served, hit = serve_stream(cache, feats[reducer], preds, confs, fingerprint)
    hits = int(hit.sum())
    stats = cache.stats()
    first: dict[int, int] = {}
    flips = sum(int(first.setdefault(i, p) != p) for i, p in zip(idx.tolist(), preds.tolist(), strict=True))
    return {
        "requests": len(preds),
        "distinct_images": len(first),
        "hits": hits,
        "hit_rate": hits / len(preds),
        "hit_agreement": float(np.mean(served[hit] == preds[hit])) if hits else 1.0,
        "false_hits": int(np.sum(served[hit] != preds[hit])),
        "audits": stats.audits,
        "audit_failures": stats.audit_failures,
        "uncached_accuracy": float(np.mean(preds == truth)),
        "cached_accuracy": float(np.mean(served == truth)),
        "accuracy_loss_pp": 100.0 * float(np.mean(preds == truth) - np.mean(served == truth)),
        # How often the uncached model itself answers a repeat capture differently from the first one.
        "model_flip_rate": flips / max(1, len(preds) - len(first)),
        "entries": len(cache),
    }
