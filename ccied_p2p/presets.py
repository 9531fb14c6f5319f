"""Ready-made parts for the commands, demos and benchmarks: a pruned reference split and a calibrated cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ccied_p2p import models
from ccied_p2p.cache import Calibration, FeatureReducer, GlobalAvgPool, GridPool, SemanticCache
from ccied_p2p.datasets import Dataset
from ccied_p2p.split import SplitModel
from ccied_p2p.workloads import CameraParams, camera_stream, collect, control_stream

__all__ = ["CacheSettings", "activations", "calibrate", "reducer_for", "reference_parts"]

CALIBRATION_SEED = 10_000  # streams used to calibrate never share a seed with streams used to measure


def reducer_for(
    activation_shape: tuple[int, ...], channel_mask: torch.Tensor | None = None, max_dims: int = 256
) -> FeatureReducer:
    """Average pooling over the finest grid (1, 2 or 4 cells a side) that keeps the key at most ``max_dims``.

    Global average pooling of a narrow split (LeNet's 6 channels) leaves too few dimensions to tell inputs
    apart; measured on MNIST-5k with calibration at 1% false hits, a 2x2 grid raised the held-out hit rate
    from 1% to 64% and 4x4 to 76% (99% agreement). A 64-channel VGG split gets 2x2; on the 75%-pruned VGG
    split ``bench cache`` measured a 0.650 hit rate with it against 0.444 for global pooling (both at 99.4%+
    agreement). The grid depends on the activation's shape only. Pruned channels are always zero, so only
    the live ones (``channel_mask``) enter the key: a shorter key, the same cosine distances, and so the same
    calibrated threshold with or without the mask.
    """
    if len(activation_shape) != 3:
        return GlobalAvgPool()
    c, h, w = activation_shape
    live: list[int] | None = None
    if channel_mask is not None and len(channel_mask) == c and not bool(channel_mask.all()):
        live = [int(i) for i in torch.nonzero(channel_mask).flatten()]
    grid = 1
    for g in (2, 4):
        if c * g * g <= max_dims and g <= min(h, w):
            grid = g
    return GlobalAvgPool(channels=live) if grid == 1 else GridPool(grid, channels=live)


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
    streams: int = 3,
    novel: int | None = None,
) -> tuple[CacheSettings, Calibration]:
    """Calibrate a cache for ``split`` on ``streams`` independent camera streams of ``requests`` requests in
    all, with seeds of their own (never a measured stream's), plus one stream of ``novel`` test images each
    captured once through the same camera (default: as many as one camera stream; 0: none); the budget
    holds for the 95% upper bound.

    The novel stream makes the budget hold better where nothing repeats, though not fully. Measured with
    bench e2e's offline replays (VGG pruned 75%; what the cache costs in accuracy against the uncached
    pruned model): calibrated on camera streams alone, 0.87 pp on the control stream (10 000 test images
    once each, 33% hits); with the novel stream 0.71 pp there (35% hits) and 1.12 pp on the same images
    captured through the camera (33% hits), more than a 1% false-hit budget suggests: the camera streams'
    many easy hits dominate the pooled estimate. Which images form the novel stream moves the chosen
    setting (another seed: 0.44 and 0.65 pp), and clean instead of captured novel images gave 0.71/1.11 pp.
    """
    per_stream = max(1, requests // streams)
    novel = per_stream if novel is None else novel
    captures = [
        collect(
            camera_stream(data.test_images, data.test_labels, per_stream, params, seed=CALIBRATION_SEED + s)
        )[1]
        for s in range(streams)
    ]
    if novel > 0:
        once = control_stream(
            data.test_images, data.test_labels, CALIBRATION_SEED, novel, camera=params or CameraParams()
        )
        captures.append(collect(once)[1])
    acts, labels, confs = [], [], []
    for images in captures:
        a, lab, c = activations(split, data, images)
        acts.append(a)
        labels.append(lab)
        confs.append(c)
    cache = SemanticCache(b"calibration", reducer=reducer_for(split.activation_shape, split.channel_mask))
    cal = cache.calibrate(acts, labels, max_false_hit_rate=max_false_hit_rate, confidences=confs)
    return CacheSettings(cache.threshold, cache.k, cache.votes, cache.min_confidence), cal


def reference_parts(
    model: str, data: Dataset, amount: float = 0.75, split_at: str | None = None, progress: bool = True
) -> SplitModel:
    """The pruned reference split (trained and pruned once, then from the weight cache)."""
    return models.reference_split(model, data, split_at=split_at, amount=amount, progress=progress)
