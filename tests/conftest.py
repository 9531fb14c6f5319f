"""Shared fixtures: small real data and quickly trained models for fast tests; the reference models for slow ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ccied_p2p import datasets
from ccied_p2p.presets import reference_parts
from ccied_p2p.split import SplitModel

pytest_plugins = ["ccied_p2p.testing.pytest_plugin"]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    torch.set_num_threads(1)
    return


@pytest.fixture(scope="session")
def fashion() -> datasets.Dataset:
    if "fashion-mnist" not in datasets.available():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return datasets.load("fashion-mnist")


@pytest.fixture(scope="session")
def mnist5k() -> datasets.Dataset:
    return datasets.load("mnist-5k")


@pytest.fixture(scope="session")
def data() -> datasets.Dataset:
    """MNIST-5k: real digits every install has; the data of the runtime tests."""
    return datasets.load("mnist-5k")


@pytest.fixture(scope="session")
def split(data: datasets.Dataset) -> SplitModel:
    """LeNet with half of its split layer pruned: small, trained once and cached on disk."""
    torch.set_num_threads(1)
    return reference_parts("lenet", data, amount=0.5, progress=False)


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CCIED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def pytest_report_header() -> str:
    return f"ccied: torch {torch.__version__}, data {datasets.available()}, cache {os.environ.get('CCIED_CACHE', '~')}"
