"""Seeded request streams that model edge cameras (pure numpy; no clock, no I/O).

- :func:`camera_stream`: a pool of real test images drawn with Zipf popularity; every request is the pool
  image perturbed as a camera would see it again (sub-pixel shift, sensor noise, exposure). This is the
  redundancy CCIED's cache exploits.
- :func:`control_stream`: every test image exactly once, unperturbed: no redundancy, the control.
- :func:`device_streams`: several cameras with non-IID pools (each mostly its own classes, some overlap).

Every stream yields :class:`StreamItem` ``(index, image, label)``: the index into the test set, the uint8
28x28 image actually seen, and the true label. Same arguments and seed, same stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ccied_p2p.errors import ConfigError

__all__ = [
    "CameraParams",
    "StreamItem",
    "camera_stream",
    "collect",
    "control_stream",
    "device_streams",
    "perturb",
    "shift_image",
    "zipf_weights",
]

U8Images = npt.NDArray[np.uint8]


class StreamItem(NamedTuple):
    """One request: index into the test set, the uint8 (H, W) image as captured, its true label.

    (The first field is not called ``index``: that would shadow :meth:`tuple.index`.)"""

    test_index: int
    image: U8Images
    label: int


@dataclass(frozen=True, slots=True)
class CameraParams:
    """How an edge camera sees its scene.

    ``pool_size`` distinct test images are in view; request ``i`` shows pool image of popularity rank ``r``
    with probability proportional to ``1 / r**zipf_s``. Each capture is perturbed independently: a shift
    uniform in ``[-max_shift, max_shift]`` pixels per axis (bilinear, so sub-pixel), then contrast gain
    uniform in ``1 ± contrast``, brightness offset uniform in ``± brightness`` grey levels, and gaussian
    sensor noise of ``noise_std`` grey levels; rounded and clipped to uint8. ``scene_length > 0`` re-draws
    which image has which popularity rank every ``scene_length`` requests (the scene changes; popularity
    drifts), ``0`` keeps one ranking for the whole stream.
    """

    pool_size: int = 500
    zipf_s: float = 1.0
    max_shift: float = 1.0
    noise_std: float = 4.0
    brightness: float = 8.0
    contrast: float = 0.1
    scene_length: int = 0

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ConfigError(f"pool_size must be >= 1, got {self.pool_size}")
        if self.zipf_s < 0:
            raise ConfigError(f"zipf_s must be >= 0, got {self.zipf_s}")
        for name in ("max_shift", "noise_std", "brightness", "contrast"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.contrast >= 1:
            raise ConfigError(f"contrast must be < 1, got {self.contrast}")
        if self.scene_length < 0:
            raise ConfigError(f"scene_length must be >= 0, got {self.scene_length}")


def zipf_weights(n: int, s: float) -> npt.NDArray[np.float64]:
    """Probabilities of ranks ``1..n`` under Zipf with exponent ``s`` (``s = 0`` is uniform)."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    out: npt.NDArray[np.float64] = w / w.sum()
    return out


def shift_image(image: npt.NDArray[np.float32], dy: float, dx: float) -> npt.NDArray[np.float32]:
    """``image`` moved by ``(dy, dx)`` pixels with bilinear interpolation; uncovered pixels are 0."""
    h, w = image.shape
    iy, fy = int(np.floor(dy)), float(dy - np.floor(dy))
    ix, fx = int(np.floor(dx)), float(dx - np.floor(dx))
    pad = max(abs(iy), abs(ix)) + 2
    padded = np.zeros((h + 2 * pad, w + 2 * pad), dtype=np.float32)
    padded[pad : pad + h, pad : pad + w] = image

    def window(oy: int, ox: int) -> npt.NDArray[np.float32]:
        # out[y, x] = image[y - oy, x - ox]
        return padded[pad - oy : pad - oy + h, pad - ox : pad - ox + w]

    out: npt.NDArray[np.float32] = (
        (1 - fy) * (1 - fx) * window(iy, ix)
        + (1 - fy) * fx * window(iy, ix + 1)
        + fy * (1 - fx) * window(iy + 1, ix)
        + fy * fx * window(iy + 1, ix + 1)
    )
    return out


def perturb(image: U8Images, params: CameraParams, rng: np.random.Generator) -> U8Images:
    """One capture of ``image`` (uint8, (H, W)) through the camera described by ``params``."""
    x = image.astype(np.float32)
    if params.max_shift > 0:
        dy, dx = rng.uniform(-params.max_shift, params.max_shift, size=2)
        x = shift_image(x, float(dy), float(dx))
    gain = rng.uniform(1 - params.contrast, 1 + params.contrast) if params.contrast > 0 else 1.0
    offset = rng.uniform(-params.brightness, params.brightness) if params.brightness > 0 else 0.0
    x = x * np.float32(gain) + np.float32(offset)
    if params.noise_std > 0:
        x = x + rng.normal(0.0, params.noise_std, size=x.shape).astype(np.float32)
    out: U8Images = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


def _check(images: U8Images, labels: npt.NDArray[np.integer]) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ConfigError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ConfigError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")


def _stream(
    images: U8Images,
    labels: npt.NDArray[np.integer],
    pool: npt.NDArray[np.int64],
    n_requests: int,
    params: CameraParams,
    rng: np.random.Generator,
) -> Iterator[StreamItem]:
    weights = zipf_weights(len(pool), params.zipf_s)
    scene = params.scene_length or n_requests
    done = 0
    while done < n_requests:
        count = min(scene, n_requests - done)
        ranked = rng.permutation(pool)
        for idx in ranked[rng.choice(len(pool), size=count, p=weights)]:
            i = int(idx)
            yield StreamItem(i, perturb(images[i], params, rng), int(labels[i]))
        done += count


def camera_stream(
    images: U8Images,
    labels: npt.NDArray[np.integer],
    n_requests: int,
    params: CameraParams | None = None,
    seed: int | np.random.SeedSequence = 0,
) -> Iterator[StreamItem]:
    """``n_requests`` captures from one camera whose pool is ``params.pool_size`` images drawn by ``seed``."""
    params = params or CameraParams()
    _check(images, labels)
    if params.pool_size > len(images):
        raise ConfigError(f"pool_size {params.pool_size} > {len(images)} images")
    rng = np.random.default_rng(seed)
    pool = rng.choice(len(images), size=params.pool_size, replace=False).astype(np.int64)
    return _stream(images, labels, pool, n_requests, params, rng)


def control_stream(
    images: U8Images,
    labels: npt.NDArray[np.integer],
    seed: int | None = None,
    limit: int | None = None,
    camera: CameraParams | None = None,
) -> Iterator[StreamItem]:
    """Each image once, unperturbed (in order, or shuffled by ``seed``): the no-redundancy control.

    With ``camera`` every image is captured once through that camera (noise drawn from ``seed``, or 0):
    no redundancy still, but the inputs a camera would deliver.
    """
    _check(images, labels)
    rng = np.random.default_rng(0 if seed is None else seed)
    order = np.arange(len(images)) if seed is None else rng.permutation(len(images))
    for idx in order[:limit]:
        i = int(idx)
        yield StreamItem(i, images[i] if camera is None else perturb(images[i], camera, rng), int(labels[i]))


def device_streams(
    images: U8Images,
    labels: npt.NDArray[np.integer],
    n_devices: int,
    n_requests: int,
    params: CameraParams | None = None,
    seed: int = 0,
    classes_per_device: int = 2,
    overlap: float = 0.2,
) -> list[Iterator[StreamItem]]:
    """One non-IID camera stream per device.

    Device ``d`` owns classes ``d*c .. d*c+c-1`` (mod the number of classes, ``c = classes_per_device``); a
    fraction ``1 - overlap`` of its pool comes from its own classes and ``overlap`` from any class, so
    devices mostly see different things but share some.
    """
    params = params or CameraParams()
    _check(images, labels)
    if n_devices < 1:
        raise ConfigError(f"n_devices must be >= 1, got {n_devices}")
    if not 0.0 <= overlap <= 1.0:
        raise ConfigError(f"overlap must be in [0, 1], got {overlap}")
    classes = np.unique(labels)
    if not 1 <= classes_per_device <= len(classes):
        raise ConfigError(f"classes_per_device must be in [1, {len(classes)}], got {classes_per_device}")
    streams: list[Iterator[StreamItem]] = []
    for d, child in enumerate(np.random.SeedSequence(seed).spawn(n_devices)):
        rng = np.random.default_rng(child)
        own = classes[[(d * classes_per_device + j) % len(classes) for j in range(classes_per_device)]]
        mine = np.flatnonzero(np.isin(labels, own))
        n_own = min(len(mine), round(params.pool_size * (1.0 - overlap)))
        pool_own = rng.choice(mine, size=n_own, replace=False)
        rest = np.setdiff1d(np.arange(len(images)), pool_own)
        n_rest = min(len(rest), params.pool_size - n_own)
        pool = np.concatenate([pool_own, rng.choice(rest, size=n_rest, replace=False)]).astype(np.int64)
        streams.append(_stream(images, labels, pool, n_requests, params, rng))
    return streams


def collect(
    stream: Iterator[StreamItem] | Sequence[StreamItem],
) -> tuple[npt.NDArray[np.int64], U8Images, npt.NDArray[np.int64]]:
    """A stream as arrays: indices (N,), images (N, H, W) uint8, labels (N,)."""
    items = list(stream)
    if not items:
        return np.zeros(0, np.int64), np.zeros((0, 0, 0), np.uint8), np.zeros(0, np.int64)
    idx = np.fromiter((it.test_index for it in items), dtype=np.int64, count=len(items))
    lab = np.fromiter((it.label for it in items), dtype=np.int64, count=len(items))
    return idx, np.stack([it.image for it in items]), lab
