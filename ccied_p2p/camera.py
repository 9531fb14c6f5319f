"""A virtual camera over real offline photos: it holds a view, pans and zooms to the next, cuts to another photo.

Pure numpy and Pillow, seeded, no clock: the same photos, motion and seed give the same frames. The photos are
scikit-learn's two bundled sample images (``load_sample_images``) plus any RGB image that scikit-image ships
inside its wheel (read straight from its data folder, so nothing is ever downloaded).

A frame is the crop of one photo under the current :class:`View` (centre, zoom), resized to ``size`` x ``size``
with Pillow's antialiasing filter, then seen through a sensor: an exposure gain and gaussian noise. The motion is
a sequence of segments: hold a view for a geometric number of frames (a camera at rest: near-duplicate frames,
the redundancy CCIED's cache exploits), then either pan and zoom smoothly to a new view of the same photo over
``move_min``..``move_max`` frames, or, with probability ``switch``, cut to a random view of another photo.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image

from ccied_p2p.errors import ConfigError, DataUnavailableError
from ccied_p2p.inputs import encode_jpeg

__all__ = [
    "CameraMotion",
    "Frame",
    "Photo",
    "View",
    "jpeg_decode",
    "jpeg_encode",
    "normalize",
    "render",
    "sample_photos",
    "virtual_camera",
]

RGB = npt.NDArray[np.uint8]


class Photo(NamedTuple):
    """One source photo: where it came from and its pixels, uint8 (H, W, 3)."""

    name: str
    pixels: RGB


@dataclass(frozen=True, slots=True)
class View:
    """Where the camera looks: photo index, crop centre in source pixels, zoom (1 = the photo's short side)."""

    photo: int
    cx: float
    cy: float
    zoom: float


class Frame(NamedTuple):
    """One captured frame: its number in the stream, uint8 (size, size, 3), the view, and whether it moved.

    (The first field is not called ``index``: that would shadow :meth:`tuple.index`.)"""

    number: int
    image: RGB
    view: View
    moving: bool


@dataclass(frozen=True, slots=True)
class CameraMotion:
    """How the virtual camera moves and what its sensor adds.

    ``hold_mean`` is the mean number of frames a view is held (geometric, at least one); a move to a new view of
    the same photo takes a uniform ``move_min``..``move_max`` frames with smoothstep easing; ``switch`` is the
    probability that the next view is a cut to another photo. Zoom is uniform in ``[min_zoom, max_zoom]``.
    Each frame gets a gain uniform in ``1 +- exposure`` and gaussian noise of ``noise_std`` grey levels.
    """

    size: int = 224
    min_zoom: float = 1.0
    max_zoom: float = 2.5
    hold_mean: float = 12.0
    move_min: int = 6
    move_max: int = 24
    switch: float = 0.15
    noise_std: float = 2.0
    exposure: float = 0.03

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ConfigError(f"size must be >= 8, got {self.size}")
        if not 1.0 <= self.min_zoom <= self.max_zoom:
            raise ConfigError(f"need 1 <= min_zoom <= max_zoom, got {self.min_zoom}, {self.max_zoom}")
        if self.hold_mean < 1:
            raise ConfigError(f"hold_mean must be >= 1, got {self.hold_mean}")
        if not 1 <= self.move_min <= self.move_max:
            raise ConfigError(f"need 1 <= move_min <= move_max, got {self.move_min}, {self.move_max}")
        if not 0.0 <= self.switch <= 1.0:
            raise ConfigError(f"switch must be a probability, got {self.switch}")
        if self.noise_std < 0 or not 0.0 <= self.exposure < 1.0:
            raise ConfigError("noise_std must be >= 0 and exposure in [0, 1)")


def _as_rgb(image: Image.Image) -> RGB:
    out: RGB = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return out


def _skimage_photos(min_side: int) -> list[Photo]:
    """RGB photos shipped inside the scikit-image wheel (never the ones it would download)."""
    try:
        import skimage  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return []
    folder = Path(skimage.__file__).parent / "data"
    out = []
    for path in sorted(folder.glob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        try:
            with Image.open(path) as img:
                if img.mode not in ("RGB", "RGBA") or min(img.size) < min_side:
                    continue
                out.append(Photo(f"skimage:{path.name}", _as_rgb(img)))
        except (OSError, ValueError):
            continue
    return out


def sample_photos(include_skimage: bool = True, min_side: int = 256) -> list[Photo]:
    """The offline photos: scikit-learn's two sample images, then scikit-image's bundled RGB ones if installed."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise DataUnavailableError(
            "the virtual camera needs scikit-learn's sample images: pip install 'ccied-p2p[eval]'"
        ) from exc
    bunch = load_sample_images()
    photos = [
        Photo(f"sklearn:{Path(str(name)).name}", np.ascontiguousarray(img, dtype=np.uint8))
        for name, img in zip(bunch.filenames, bunch.images, strict=True)
    ]
    if include_skimage:
        photos += _skimage_photos(min_side)
    return photos


def _clamp(photo: RGB, view: View) -> View:
    h, w = photo.shape[:2]
    side = min(h, w) / view.zoom
    half = side / 2
    return View(
        view.photo,
        float(min(max(view.cx, half), w - half)),
        float(min(max(view.cy, half), h - half)),
        view.zoom,
    )


def render(photo: RGB, view: View, size: int) -> RGB:
    """The ``size`` x ``size`` crop of ``photo`` under ``view`` (antialiased resize, sub-pixel box)."""
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ConfigError(f"photo must be uint8 (H, W, 3), got {photo.dtype} {photo.shape}")
    v = _clamp(photo, view)
    half = min(photo.shape[:2]) / v.zoom / 2
    box = (v.cx - half, v.cy - half, v.cx + half, v.cy + half)
    img = Image.fromarray(photo).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return _as_rgb(img)


def _random_view(rng: np.random.Generator, photos: Sequence[Photo], index: int, motion: CameraMotion) -> View:
    h, w = photos[index].pixels.shape[:2]
    zoom = float(rng.uniform(motion.min_zoom, motion.max_zoom))
    half = min(h, w) / zoom / 2
    cx = float(rng.uniform(half, w - half))
    cy = float(rng.uniform(half, h - half))
    return View(index, cx, cy, zoom)


def _ease(t: float) -> float:
    return t * t * (3.0 - 2.0 * t)


def _between(a: View, b: View, t: float) -> View:
    s = _ease(t)
    # Zoom is interpolated geometrically, so a zoom-in looks uniform.
    zoom = math.exp(math.log(a.zoom) + s * (math.log(b.zoom) - math.log(a.zoom)))
    return View(a.photo, a.cx + s * (b.cx - a.cx), a.cy + s * (b.cy - a.cy), zoom)


def _views(
    photos: Sequence[Photo], n_frames: int, motion: CameraMotion, rng: np.random.Generator
) -> Iterator[tuple[View, bool]]:
    current = _random_view(rng, photos, int(rng.integers(len(photos))), motion)
    done = 0
    while done < n_frames:
        hold = int(rng.geometric(1.0 / motion.hold_mean))
        for _ in range(min(hold, n_frames - done)):
            yield current, False
            done += 1
        if done >= n_frames:
            return
        if len(photos) > 1 and rng.random() < motion.switch:
            other = int(rng.integers(len(photos) - 1))
            other += other >= current.photo
            current = _random_view(rng, photos, other, motion)
            continue
        target = _random_view(rng, photos, current.photo, motion)
        steps = int(rng.integers(motion.move_min, motion.move_max + 1))
        for i in range(1, steps + 1):
            if done >= n_frames:
                return
            yield _between(current, target, i / steps), True
            done += 1
        current = target


def _sensor(image: RGB, motion: CameraMotion, rng: np.random.Generator) -> RGB:
    x = image.astype(np.float32)
    if motion.exposure > 0:
        x *= np.float32(rng.uniform(1.0 - motion.exposure, 1.0 + motion.exposure))
    if motion.noise_std > 0:
        x += rng.normal(0.0, motion.noise_std, size=x.shape).astype(np.float32)
    out: RGB = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


def virtual_camera(
    photos: Sequence[Photo],
    n_frames: int,
    motion: CameraMotion | None = None,
    seed: int | np.random.SeedSequence = 0,
) -> Iterator[Frame]:
    """``n_frames`` frames of a camera moving over ``photos`` (see the module docstring)."""
    motion = motion or CameraMotion()
    if not photos:
        raise ConfigError("the virtual camera needs at least one photo")
    for p in photos:
        if p.pixels.ndim != 3 or p.pixels.shape[2] != 3 or p.pixels.dtype != np.uint8:
            raise ConfigError(
                f"photo {p.name} must be uint8 (H, W, 3), got {p.pixels.dtype} {p.pixels.shape}"
            )
    if n_frames < 0:
        raise ConfigError(f"n_frames must be >= 0, got {n_frames}")
    rng = np.random.default_rng(seed)
    for i, (view, moving) in enumerate(_views(photos, n_frames, motion, rng)):
        v = _clamp(photos[view.photo].pixels, view)
        image = _sensor(render(photos[view.photo].pixels, v, motion.size), motion, rng)
        yield Frame(i, image, v, moving)


jpeg_encode = encode_jpeg
"""``image`` (uint8 (H, W, 3)) as a baseline JPEG at ``quality``: the encoder a node offloads frames with."""


def jpeg_decode(data: bytes) -> RGB:
    """The uint8 (H, W, 3) pixels of a JPEG."""
    with Image.open(io.BytesIO(data)) as img:
        return _as_rgb(img)


def normalize(images: RGB) -> npt.NDArray[np.float32]:
    """uint8 (N, H, W, 3) or (H, W, 3) to float32 (N, 3, H, W) in [-1, 1], EfficientNet-Lite's input scaling."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ConfigError(f"expected uint8 (N, H, W, 3), got {x.shape}")
    out: npt.NDArray[np.float32] = np.ascontiguousarray(
        (x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(0, 3, 1, 2)
    )
    return out
