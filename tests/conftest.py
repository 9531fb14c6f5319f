"""Shared fixtures: small real data and quickly trained models for fast tests; the reference models for slow ones.

The reference weights the selected tests need are trained once per run, before the first test, with a line
saying what and why (:func:`pytest_collection_finish`): never inside a test, where the per-test timeout would
cut training short, and never in an executor thread that a timed-out test's event loop must wait for. Tests
say what they need with ``@pytest.mark.weights("vgg/fashion-mnist@0.75", ...)`` (``model/data@amount``; the
data ``best`` is ``datasets.load()``'s choice); every test that uses the ``split`` fixture or real sockets
needs :data:`RUNTIME_WEIGHTS` (the ``serve`` subprocesses load it too).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ccied_p2p import datasets, models
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


RUNTIME_WEIGHTS = "lenet/mnist-5k@0.5"


def _parse(spec: str) -> tuple[str, str | None, float]:
    model, rest = spec.split("/", 1)
    name, _, amount = rest.partition("@")
    return model, None if name == "best" else name, float(amount or 0)


def _needed(items: list[pytest.Item]) -> dict[str, list[str]]:
    needed: dict[str, list[str]] = {}
    for item in items:
        specs = [str(s) for m in item.iter_markers("weights") for s in m.args]
        if "split" in getattr(item, "fixturenames", ()) or item.get_closest_marker("network"):
            specs.append(RUNTIME_WEIGHTS)
        for spec in specs:
            needed.setdefault(spec, []).append(item.nodeid)
    return needed


def pytest_collection_finish(session: pytest.Session) -> None:
    """Train what the selected tests need and the weight cache lacks, once, visibly, outside any timeout."""
    if session.config.option.collectonly or not session.items:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    capture = session.config.pluginmanager.get_plugin("capturemanager")
    present = datasets.available()
    for spec, users in _needed(session.items).items():
        model, name, amount = _parse(spec)
        if name is not None and name not in present:
            continue  # the tests that need it skip, saying why
        data = datasets.load(name)
        if models.weights_cached(model, data, amount):
            continue
        what = f"{model} on {data.name}" + (f", split layer pruned {amount:.0%}" if amount else "")
        line = (
            f"ccied: training {what} once for this run: {models.cache_dir()} has no such weights and "
            f"{len(users)} selected test(s) need them, e.g. {users[0]}"
        )
        start = time.perf_counter()
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
            threads = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or 1)  # the one job running: every core
            try:
                models.reference_split(model, data, amount=amount, progress=True)
            finally:
                torch.set_num_threads(threads)
            reporter.write_line(f"ccied: {what} ready in {time.perf_counter() - start:.0f} s")


def pytest_report_header() -> str:
    return f"ccied: torch {torch.__version__}, data {datasets.available()}, cache {os.environ.get('CCIED_CACHE', '~')}"
