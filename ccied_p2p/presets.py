"""Ready-made parts for the commands, demos and benchmarks: a pruned reference split and a calibrated cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ccied_p2p import models
from ccied_p2p.cache import Calibration, SemanticCache
from ccied_p2p.datasets import Dataset
from ccied_p2p.split import SplitModel
from ccied_p2p.workloads import CameraParams, camera_stream

__all__ = ["CacheSettings", "activations", "calibrate", "reference_parts"]

CALIBRATION_SEED = 10_000  # streams used to calibrate never share a seed with streams used to measure


@dataclass(frozen=True)
class CacheSettings:
    """What calibration chose, in a form that travels on a command line."""

    threshold: float
    k: int
    votes: int
    min_confidence: float

    def apply(self, cache: SemanticCache) -> None:
        cache.threshold = self.threshold
        cache.k = self.k
        cache.votes = self.votes
        cache.min_confidence = self.min_confidence

    def as_args(self) -> list[str]:
        return [
            "--threshold", repr(self.threshold), "--k", str(self.k), "--votes", str(self.votes),
            "--min-confidence", repr(self.min_confidence),
        ]  # fmt: skip


def activations(
    split: SplitModel, data: Dataset, images: np.ndarray[Any, Any], batch: int = 500
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Head activations, uncached labels and confidences for uint8 images, in batches."""
    acts, labels, confs = [], [], []
    for i in range(0, len(images), batch):
        x = data.normalize(images[i : i + batch])
        a = split.head(x)
        probs = torch.softmax(split.tail(a), dim=1)
        c, lab = probs.max(dim=1)
        acts.append(a.numpy())
        labels.append(lab.numpy())
        confs.append(c.numpy())
    return np.concatenate(acts), np.concatenate(labels), np.concatenate(confs)


def calibrate(
    split: SplitModel,
    data: Dataset,
    requests: int = 3000,
    max_false_hit_rate: float = 0.01,
    params: CameraParams | None = None,
) -> tuple[CacheSettings, Calibration]:
    """Calibrate a cache for ``split`` on a camera stream of its own seed (never the measured one)."""
    items = list(camera_stream(data.test_images, data.test_labels, requests, params, seed=CALIBRATION_SEED))
    images = np.stack([it.image for it in items])
    acts, labels, confs = activations(split, data, images)
    cache = SemanticCache(b"calibration")
    cal = cache.calibrate(acts, labels, max_false_hit_rate=max_false_hit_rate, confidences=confs)
    return CacheSettings(cache.threshold, cache.k, cache.votes, cache.min_confidence), cal


def reference_parts(
    model: str, data: Dataset, amount: float = 0.75, split_at: str | None = None, progress: bool = True
) -> SplitModel:
    """The pruned reference split (trained and pruned once, then from the weight cache)."""
    return models.reference_split(model, data, split_at=split_at, amount=amount, progress=progress)
