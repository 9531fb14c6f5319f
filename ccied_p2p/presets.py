"""Ready-made parts for the commands, demos and benchmarks: a pruned reference split and a calibrated cache."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ccied_p2p import models
from ccied_p2p.cache import Calibration, SemanticCache, reducer_for
from ccied_p2p.datasets import Dataset
from ccied_p2p.errors import ConfigError
from ccied_p2p.runtime.config import CacheConfig
from ccied_p2p.split import SplitModel
from ccied_p2p.workloads import CameraParams, camera_stream, collect, control_stream

__all__ = [
    "CacheSettings",
    "activations",
    "calibrate",
    "calibration_images",
    "reducer_for",
    "reference_parts",
]

CALIBRATION_SEED = 10_000  # streams used to calibrate never share a seed with streams used to measure


@dataclass(frozen=True)
class CacheSettings:
    """What calibration chose: a node's :class:`CacheConfig` (``config``), or a command line (``as_args``)."""

    threshold: float
    k: int
    votes: int
    min_confidence: float
    radius: tuple[float, float] = (0.0, 0.0)

    def config(self, base: CacheConfig | None = None) -> CacheConfig:
        """``base`` (default: a default CacheConfig) with this answer rule: ``NodeConfig(cache=...)``."""
        return replace(
            base or CacheConfig(),
            threshold=self.threshold,
            k=self.k,
            votes=self.votes,
            min_confidence=self.min_confidence,
            radius=self.radius,
        )

    def apply(self, cache: SemanticCache) -> None:
        """Set this answer rule on a cache outside a node (a node takes ``NodeConfig(cache=self.config())``)."""
        self.config().tune(cache)

    def as_args(self) -> list[str]:
        return [
            "--threshold", repr(self.threshold), "--k", str(self.k), "--votes", str(self.votes),
            "--min-confidence", repr(self.min_confidence),
            "--radius", f"{self.radius[0]!r},{self.radius[1]!r}",
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


def calibration_split(
    data: Dataset, seed: int = CALIBRATION_SEED
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Test-set indices for calibration and for measurement: a seeded random half each, disjoint.

    ``calibrate`` uses the first by default; measure on the second, or the guarantee is not about
    unseen images.
    """
    order = np.random.default_rng(seed).permutation(len(data.test_images))
    half = len(order) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def calibration_images(
    data: Dataset, calibration: Dataset | np.ndarray[Any, Any] | str | None = None
) -> np.ndarray[Any, Any]:
    """The uint8 images ``calibrate`` draws its streams from: ``calibration`` as indices into
    ``data.test_images``, as uint8 images ``(N, H, W)``, as a :class:`Dataset` (its test images), or
    ``"train"`` (the train images); ``None``: the calibration half of :func:`calibration_split`.

    Train images are the model's own: measured on Fashion-MNIST (LeNet), calibrating on them certified a
    tighter setting or none at all, so images the model never trained on are the better choice.
    """
    if calibration is None:
        pool = data.test_images[calibration_split(data)[0]]
    elif isinstance(calibration, str):
        if calibration != "train":
            raise ConfigError(
                f"calibration must be 'train', indices, images or a Dataset, got {calibration!r}"
            )
        pool = data.train_images
    elif isinstance(calibration, Dataset):
        pool = calibration.test_images
    else:
        arr = np.asarray(calibration)
        if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
            if len(np.unique(arr)) != len(arr) or (
                len(arr) and (arr.min() < 0 or arr.max() >= len(data.test_images))
            ):
                raise ConfigError(f"calibration indices must be distinct and in [0, {len(data.test_images)})")
            pool = data.test_images[arr]
        elif arr.ndim == 3 and arr.dtype == np.uint8:
            pool = arr
        else:
            raise ConfigError(
                f"calibration must be test-set indices (N,) or uint8 images (N, H, W), got {arr.dtype} {arr.shape}"
            )
    if len(pool) < 2:
        raise ConfigError(f"calibration needs at least 2 images, got {len(pool)}")
    out: np.ndarray[Any, Any] = pool
    return out


def _streams(
    split: SplitModel,
    data: Dataset,
    pool: np.ndarray[Any, Any],
    n_cameras: int,
    per_camera: int,
    novel: int,
    params: CameraParams,
    seed: int,
) -> tuple[list[np.ndarray[Any, Any]], list[np.ndarray[Any, Any]], list[np.ndarray[Any, Any]]]:
    """Activations, labels and confidences of ``n_cameras`` camera streams over ``pool``, then ``novel``
    pool images captured once each: one stream per pass over the pool (each its own fresh cache)."""
    labels = np.zeros(len(pool), dtype=np.int64)  # the model's answers are the reference, not the truth
    camera = params if params.pool_size <= len(pool) else replace(params, pool_size=len(pool))
    captures = [
        collect(camera_stream(pool, labels, per_camera, camera, seed=seed + s))[1] for s in range(n_cameras)
    ]
    for p, start in enumerate(range(0, novel, len(pool))):
        once = control_stream(pool, labels, seed + p, min(len(pool), novel - start), camera=camera)
        captures.append(collect(once)[1])
    acts, labs, confs = [], [], []
    for images in captures:
        a, lab, c = activations(split, data, images)
        acts.append(a)
        labs.append(lab)
        confs.append(c)
    return acts, labs, confs


def calibrate(
    split: SplitModel,
    data: Dataset,
    requests: int = 3000,
    max_false_hit_rate: float = 0.01,
    params: CameraParams | None = None,
    streams: int = 3,
    novel: int | None = None,
    calibration: Dataset | np.ndarray[Any, Any] | str | None = None,
    per_stream: bool = False,
    confidence: float = 0.95,
    seed: int = CALIBRATION_SEED,
    holdout_streams: int | None = None,
) -> tuple[CacheSettings, Calibration]:
    """Calibrate a cache for ``split`` on images that no measurement sees, with a held-out guarantee.

    The images (:func:`calibration_images`: by default the calibration half of the test images of
    :func:`calibration_split`; measure on the other half, or pass your own) are split at random into two
    disjoint halves. The first gives ``streams`` camera streams of ``requests // streams`` requests and
    one stream of ``novel`` of its images captured once each (default: as many as one camera stream, or
    all of the half with ``per_stream``; 0: none), and chooses the setting; the second gives
    ``holdout_streams`` camera streams like them (default: twice as many; with ``per_stream``, as many)
    and its own novel stream, and certifies it (:meth:`SemanticCache.calibrate` with ``holdout``). The
    returned figures, the false-hit rate and its Clopper-Pearson bound at ``confidence``, are those of
    the held-out half, which the choice never saw. They speak for streams like these: as long, through
    the same camera. False hits cluster on a few popular images the model is unsure of, so more held-out
    cameras (more pools of images) make the certificate more trustworthy. ``per_stream`` holds the budget
    on the camera streams and on the novel ones separately, instead of pooled; ``novel`` may then exceed
    the half, in several passes (the README says what each costs).
    """
    if streams < 1:
        raise ConfigError(f"streams must be >= 1, got {streams}")
    pool = calibration_images(data, calibration)
    per_camera = max(1, requests // streams)
    if novel is None:
        novel = len(pool) - len(pool) // 2 if per_stream else per_camera
    order = np.random.default_rng(seed).permutation(len(pool))
    half = len(pool) // 2
    params = params or CameraParams()
    chosen = _streams(split, data, pool[order[:half]], streams, per_camera, novel, params, seed)
    n_held = (streams if per_stream else 2 * streams) if holdout_streams is None else holdout_streams
    held = _streams(split, data, pool[order[half:]], n_held, per_camera, novel, params, seed + streams)
    cache = SemanticCache(b"calibration", reducer=reducer_for(split.activation_shape, split.channel_mask))
    # With per_stream the cameras' streams are pooled and the streams without repeats are pooled: the
    # budget holds on each kind; one stream alone rarely has the 299 clean hits a 1% bound needs.
    if per_stream and n_held != streams:
        raise ConfigError("per_stream needs as many holdout streams as streams")
    groups = [0] * streams + [1] * (len(chosen[0]) - streams) if per_stream else None
    cal = cache.calibrate(
        chosen[0],
        chosen[1],
        max_false_hit_rate=max_false_hit_rate,
        confidences=chosen[2],
        confidence=confidence,
        holdout=held,
        per_stream=per_stream,
        groups=groups,
    )
    return CacheSettings(cache.threshold, cache.k, cache.votes, cache.min_confidence), cal


def reference_parts(
    model: str, data: Dataset, amount: float = 0.75, split_at: str | None = None, progress: bool = True
) -> SplitModel:
    """The pruned reference split (trained and pruned once, then from the weight cache)."""
    return models.reference_split(model, data, split_at=split_at, amount=amount, progress=progress)
