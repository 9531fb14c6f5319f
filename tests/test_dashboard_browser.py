"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright for Python).

A 3-node cluster on 127.0.0.1: ``a`` and ``b`` in this process, ``c`` a ``ccied-p2p serve`` subprocess.
The page of ``a`` must show all three nodes, a hit counter that rises while ``a`` answers requests, and
``c`` turning dead after a SIGKILL (no graceful leave). The screenshot goes to
``$CCIED_ARTIFACTS/dashboard.png`` (default ``./artifacts/dashboard.png``), for CI to keep.

Never downloads a browser: without /usr/bin/chromium (``apt-get install -y chromium``) or the ``playwright``
package the test skips and says which is missing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ccied_p2p import datasets
from ccied_p2p.runtime.config import NetworkConfig
from ccied_p2p.runtime.node import Node, NodeConfig
from ccied_p2p.split import SplitModel
from ccied_p2p.testing.wait import until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SECRET = "browser-test-secret-0123"
pytestmark = pytest.mark.network


def artifacts_dir() -> Path:
    """Where the screenshot goes: ``$CCIED_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("CCIED_ARTIFACTS") or "artifacts")


def _skip_reason() -> str | None:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright; never `playwright install`)"
    return None


async def _serve_child(name: str, seed: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "CCIED_SECRET": SECRET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ccied_p2p.cli", "serve", "--model", "lenet", "--data", "mnist-5k",
        "--amount", "0.5", "--name", name, "--no-mdns", "--seeds", seed,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(120):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"{name} exited before it was ready"
            if line.startswith("READY"):
                return proc


@pytest.fixture
async def cluster(split: SplitModel) -> AsyncIterator[tuple[Node, asyncio.subprocess.Process]]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    async with (
        Node(split, NodeConfig(name="a", secret=SECRET, network=NetworkConfig(mdns=False))) as a,
        Node(
            split, NodeConfig(name="b", secret=SECRET, network=NetworkConfig(mdns=False, seeds=[a.address]))
        ) as b,
    ):
        child = await _serve_child("c", a.address)
        try:
            await until(
                lambda: (
                    len(a.links) == 2
                    and {m.name: m.state.value for m in a.peers.values()} == {"b": "alive", "c": "alive"}
                    and len(b.peers) == 2
                ),
                15.0,
                "the cluster formed",
            )
            yield a, child
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()


async def test_dashboard_shows_peers_hits_and_a_death(
    cluster: tuple[Node, asyncio.subprocess.Process], data: datasets.Dataset
) -> None:
    from playwright.async_api import async_playwright

    a, child = cluster
    shot = artifacts_dir() / "dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    stop = asyncio.Event()

    async def load() -> None:
        """Requests on ``a`` from 24 distinct images, cycled: after the first round most are cache hits."""
        x = data.test_x[:24]
        i = 0
        while not stop.is_set() and i < 2000:
            await a.infer(x[i % 24])
            i += 1
            await asyncio.sleep(0.01)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(
                "requestfailed",
                lambda r: problems.append(f"{r.url} {r.failure}") if "/events" not in r.url else None,
            )
            await page.goto(f"http://{a.address}/", wait_until="load")

            # All three nodes: this one and both peers, alive.
            await page.wait_for_function("() => document.querySelectorAll('#topology g.node').length === 3")
            names = await page.eval_on_selector_all("#topology g.node", "els => els.map(e => e.dataset.name)")
            assert sorted(names) == ["a", "b", "c"]
            states = await page.eval_on_selector_all(
                "#nodes tbody tr", "rows => rows.map(r => r.dataset.state)"
            )
            assert states == ["alive", "alive", "alive"]
            assert await page.text_content("#conn") == "live"

            # The hit counter rises while requests run (pushed by the node, no reload).
            first = int(await page.get_attribute("#hits", "data-value") or "0")
            runner = asyncio.ensure_future(load())
            seen = [first]
            try:
                for _ in range(4):
                    await page.wait_for_function(
                        f"() => Number(document.getElementById('hits').dataset.value) > {seen[-1]}",
                        timeout=5000,
                    )
                    seen.append(int(await page.get_attribute("#hits", "data-value") or "0"))
                assert seen == sorted(set(seen)), seen
                assert a.counters.by_source.get("cache", 0) >= seen[-1]

                # Kill c outright (no leave): the page must show it dead, in the graph and the table.
                child.send_signal(signal.SIGKILL)
                await child.wait()
                killed = time.monotonic()
                await page.wait_for_selector(
                    '#topology g.node[data-name="c"][data-state="dead"]', state="attached", timeout=15000
                )
                took = time.monotonic() - killed
                await page.wait_for_selector(
                    '#nodes tbody tr[data-name="c"][data-state="dead"]', state="attached"
                )
                assert await page.get_attribute('#topology g.node[data-name="b"]', "data-state") == "alive"
                await page.wait_for_timeout(2500)  # a few more samples on the sparklines
            finally:
                stop.set()
                await runner
            hits_text = await page.text_content("#hits")
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()

    assert shot.stat().st_size > 10_000
    assert problems == [], problems
    assert hits_text is not None
    assert int(hits_text.replace(",", "")) >= seen[-1]
    sys.stderr.write(f"dead after {took:.2f} s; hits seen {seen}; screenshot {shot.resolve()}\n")
