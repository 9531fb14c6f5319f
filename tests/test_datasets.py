from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ccied_p2p import datasets
from ccied_p2p.errors import ConfigError, DataUnavailableError


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fashion(directory: Path, n_train: int = 20, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    _write_idx(directory / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    _write_idx(directory / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    _write_idx(directory / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(directory / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))


def test_fashion_mnist_full_split(fashion: datasets.Dataset) -> None:
    assert fashion.train_images.shape == (60000, 28, 28)
    assert fashion.test_images.shape == (10000, 28, 28)
    assert fashion.train_images.dtype == np.uint8
    assert np.bincount(fashion.test_labels).tolist() == [1000] * 10
    assert fashion.test_x.shape == (10000, 1, 28, 28)
    assert fashion.test_x.dtype == torch.float32
    # Standardised with train statistics.
    assert abs(float(fashion.train_x.mean())) < 1e-3
    assert abs(float(fashion.train_x.std()) - 1.0) < 1e-2


def test_explicit_directory_wins(tmp_path: Path) -> None:
    _fake_fashion(tmp_path / "fm")
    data = datasets.load("fashion-mnist", dir=tmp_path / "fm")
    assert len(data.train_labels) == 20
    assert len(data.test_labels) == 10


def test_ccied_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_fashion(tmp_path / "fashion-mnist", n_train=7)
    monkeypatch.setenv("CCIED_DATA", str(tmp_path))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.setattr(datasets, "_CACHE", {})
    assert len(datasets.load("fashion-mnist").train_labels) == 7


def test_missing_fashion_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCIED_DATA", raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.setattr(datasets, "_CACHE", {})
    with pytest.raises(DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        datasets.load("fashion-mnist")
    # The default falls back to the next best data set instead of failing.
    assert datasets.default_name() == "mnist-5k"


def test_truncated_idx_is_a_clear_error(tmp_path: Path) -> None:
    _fake_fashion(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DataUnavailableError, match="header says"):
        datasets.load("fashion-mnist", dir=tmp_path)


def test_mnist_5k_is_stratified(mnist5k: datasets.Dataset) -> None:
    assert np.bincount(mnist5k.train_labels).tolist() == [400] * 10
    assert np.bincount(mnist5k.test_labels).tolist() == [100] * 10
    assert mnist5k.test_images.shape == (1000, 28, 28)
    assert mnist5k.test_images.max() > 200


def test_digits_upsampled_to_28() -> None:
    d = datasets.load("digits")
    assert d.train_images.shape[1:] == (28, 28)
    assert len(d.test_labels) == 360
    assert set(np.unique(d.train_labels)) == set(range(10))


def test_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown data set"):
        datasets.load("imagenet")


def test_default_is_best_present() -> None:
    assert datasets.default_name() == datasets.available()[0]
    assert "digits" in datasets.available()


def test_from_arrays_uses_the_normalisation_a_foreign_checkpoint_expects() -> None:
    rng = np.random.default_rng(0)
    test = rng.integers(0, 256, (12, 32, 32)).astype(np.uint8)
    labels = rng.integers(0, 3, 12)
    own = datasets.from_arrays("mine", test, labels)
    assert own.own_stats
    assert own.classes == tuple(str(i) for i in range(int(labels.max()) + 1))
    assert own.train_images.shape == (0, 32, 32)
    assert abs(float(own.test_x.mean())) < 1e-5  # no train images: the test images' own statistics
    foreign = datasets.Dataset.from_arrays("mine", test, labels, mean=0.1307, std=0.3081, classes="abc")
    assert not foreign.own_stats
    expected = (test[0].astype(np.float32) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(foreign.normalize(test[0])[0, 0].numpy(), expected, rtol=1e-6)
    assert foreign.test_x.shape == (12, 1, 32, 32)
    train = rng.integers(0, 256, (20, 32, 32)).astype(np.uint8)
    with_train = datasets.from_arrays("mine", test, labels, train, rng.integers(0, 3, 20))
    assert with_train.mean == pytest.approx(train.mean() / 255)


def test_from_arrays_refuses_what_it_cannot_use() -> None:
    img = np.zeros((4, 28, 28), dtype=np.uint8)
    lab = np.zeros(4, dtype=np.int64)
    bad = [
        dict(test_images=img.astype(np.float32), test_labels=lab),
        dict(test_images=img, test_labels=lab[:3]),
        dict(test_images=img, test_labels=lab.astype(np.float32)),
        dict(test_images=img, test_labels=lab - 1),
        dict(test_images=img, test_labels=lab + 5, classes=("a", "b")),
        dict(test_images=img, test_labels=lab, train_labels=lab),
        dict(
            test_images=img, test_labels=lab, train_images=np.zeros((4, 20, 20), np.uint8), train_labels=lab
        ),
        dict(test_images=img, test_labels=lab, std=0.0),
        dict(test_images=img[:0], test_labels=lab[:0]),
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            datasets.from_arrays("x", **kwargs)  # type: ignore[arg-type]


def test_another_normalisation_trains_other_weights() -> None:
    from ccied_p2p.models import _data_digest

    rng = np.random.default_rng(0)
    args = (rng.integers(0, 256, (8, 28, 28)).astype(np.uint8), np.arange(8) % 2)
    train = (rng.integers(0, 256, (8, 28, 28)).astype(np.uint8), np.arange(8) % 2)
    a = datasets.from_arrays("x", *args, *train)
    b = datasets.from_arrays("x", *args, *train)
    c = datasets.from_arrays("x", *args, *train, mean=0.5, std=0.5)
    assert _data_digest(a) == _data_digest(b) != _data_digest(c)
