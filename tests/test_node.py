"""The runtime on real sockets (127.0.0.1) and real zeroconf pinned to loopback."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import numpy as np
import pytest

from ccied_p2p import datasets
from ccied_p2p.codec.messages import Hello
from ccied_p2p.codec.wire import encode_message
from ccied_p2p.errors import ConfigError
from ccied_p2p.launch import start_serve, stop_serve
from ccied_p2p.presets import calibrate
from ccied_p2p.runtime.config import CacheConfig, ConnectionLimits, NetworkConfig, StrategyConfig
from ccied_p2p.runtime.node import InferenceResult, Node, NodeConfig
from ccied_p2p.runtime.transport import PROTOCOL_VERSION, WS_PATH
from ccied_p2p.split import SplitModel
from ccied_p2p.testing.wait import until as _until
from ccied_p2p.workloads import camera_stream

SECRET = "test-secret-0123456789"
pytestmark = pytest.mark.network


def _config(name: str, *, seeds: Sequence[str] = (), **groups: Any) -> NodeConfig:
    return NodeConfig(name=name, secret=SECRET, network=NetworkConfig(mdns=False, seeds=seeds), **groups)


def _other_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


@pytest.fixture
async def pair(split: SplitModel) -> AsyncIterator[tuple[Node, Node]]:
    async with Node(split, _config("a")) as a, Node(split, _config("b", seeds=[a.address])) as b:
        await _until(lambda: a.links and b.links)
        yield a, b


async def test_refuses_to_start_without_a_secret(split: SplitModel) -> None:
    with pytest.raises(ConfigError, match="secret is required"):
        Node(split, NodeConfig(name="x", network=NetworkConfig(mdns=False)))
    async with Node(split, NodeConfig(name="x", network=NetworkConfig(mdns=False), insecure=True)) as node:
        assert node.port > 0


async def test_an_activation_without_a_finite_cache_key_skips_the_cache_and_says_so(
    split: SplitModel, data: datasets.Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(split, NodeConfig(name="x", insecure=True, network=NetworkConfig(mdns=False)))
    act = split.head(data.test_x[:1]).detach().numpy()
    assert node._inference.lookup(act, {}).feature is not None
    act[:] = np.nan
    with caplog.at_level(logging.DEBUG, logger="ccied_p2p.runtime.inference"):
        looked = node._inference.lookup(act, {})
        assert looked.feature is None
        assert looked.found is None
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "no finite cache key" in caplog.text
        caplog.clear()
        assert node._inference._key(act).feature is None  # an answer to insert: said at debug level only
        assert [r.levelno for r in caplog.records] == [logging.DEBUG]


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
async def test_refuses_a_bad_local_tail_estimate(split: SplitModel, value: float) -> None:
    with pytest.raises(ConfigError, match=r"strategy\.local_tail_ms"):
        Node(split, NodeConfig(name="x", insecure=True, strategy=StrategyConfig(local_tail_ms=value)))


async def test_two_nodes_answer_like_the_full_model(
    pair: tuple[Node, Node], split: SplitModel, data: datasets.Dataset
) -> None:
    _a, b = pair
    x = data.test_x[:64]
    results = await b.infer_batch(x, concurrency=8)
    assert isinstance(results, list)
    want = split(x).argmax(1).tolist()
    for r, w in zip(results, want, strict=True):
        if r.source != "cache":
            assert r.label == w
        assert r.source in {"cache", "local", "peer:a"}
        assert 0.0 <= r.confidence <= 1.0
        assert r.timings["head"] > 0
    one = await b.infer(x[0])
    assert isinstance(one, InferenceResult)
    assert b.counters.failed == 0
    assert b.peers["a"].state.value == "alive"


async def test_forced_offload_sends_sparse_bytes(split: SplitModel, data: datasets.Dataset) -> None:
    async with (
        Node(split, _config("srv")) as srv,
        # A device whose own tail is slow (as its config says): every request goes to the peer.
        Node(
            split,
            _config(
                "dev",
                seeds=[srv.address],
                cache=CacheConfig(enabled=False),
                strategy=StrategyConfig(local_tail_ms=1000.0),
            ),
        ) as dev,
    ):
        await _until(lambda: dev.links)
        results = await dev.infer_batch(data.test_x[:20], concurrency=1)
        assert isinstance(results, list)
        assert {r.source for r in results} == {"peer:srv"}
        want = split(data.test_x[:20]).argmax(1).tolist()
        assert [r.label for r in results] == want
        assert all(0 < r.bytes_sent < r.bytes_raw for r in results)
        assert {"encode", "transfer", "tail"} <= set(results[0].timings)
        assert srv.counters.served == 20
        # The server cached what it computed.
        assert len(srv.cache) == 20


async def test_wrong_secret_and_raw_clients_are_rejected(split: SplitModel, data: datasets.Dataset) -> None:
    async with Node(split, _config("a")) as a:
        async with Node(
            split,
            NodeConfig(
                name="intruder",
                secret="another-secret-xx",
                network=NetworkConfig(mdns=False, seeds=[a.address]),
            ),
        ) as bad:
            await _until(lambda: a.counters.auth_failures >= 1)
            assert not a.links
            assert not bad.links
        async with aiohttp.ClientSession() as session:
            # A raw client without the secret: garbage, then a valid Hello with a forged proof.
            async with session.ws_connect(f"http://{a.address}/ccied") as ws:
                await ws.send_bytes(os.urandom(64))
                msg = await ws.receive(timeout=5)
                assert msg.type in (
                    aiohttp.WSMsgType.BINARY,
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                )
            async with session.ws_connect(f"http://{a.address}/ccied") as ws:
                hello = Hello(
                    os.urandom(16), "mallory", a.split.fingerprint, PROTOCOL_VERSION, os.urandom(32), 1
                )
                await ws.send_bytes(encode_message(hello))
                await ws.receive(timeout=5)  # the server's hello
                from ccied_p2p.codec.messages import Auth

                await ws.send_bytes(encode_message(Auth(os.urandom(32))))
                closing = await ws.receive(timeout=5)
                assert closing.type in (
                    aiohttp.WSMsgType.BINARY,
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                )
        assert a.counters.auth_failures >= 3
        assert len(a.cache) == 0
        assert a.peers == {}
        # Still serving: a good peer joins and gets answers.
        async with Node(split, _config("good", seeds=[a.address])) as good:
            await _until(lambda: good.links)
            r = await good.infer(data.test_x[0])
            assert isinstance(r, InferenceResult)


async def test_leaving_leaves_nothing_behind(split: SplitModel) -> None:
    before = set(_other_tasks())
    async with Node(split, _config("a")) as a, Node(split, _config("b", seeds=[a.address])) as b:
        await _until(lambda: a.links and b.links)
        port = a.port
    await asyncio.sleep(0.05)
    assert set(_other_tasks()) <= before
    assert not a.links
    assert not b.links
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_link_whose_adopt_never_ran_is_closed_with_the_node(split: SplitModel) -> None:
    """A dial authenticated while the node closes: its adopt task is cancelled before its first step, so
    nothing in it runs; the node still closes the socket (CI once saw aiohttp's "Unclosed connection")."""
    async with Node(split, _config("b")) as b:
        a = Node(split, _config("a"))
        await a.start()
        before = {t for t in a._tasks if t.get_name().endswith(":link:b")}
        await a._mesh.dial("127.0.0.1", b.port)  # returns with the adopt task spawned, not yet run
        (task,) = {t for t in a._tasks if t.get_name().endswith(":link:b")} - before
        link = task.get_coro().cr_frame.f_locals["link"]  # type: ignore[union-attr]
        task.cancel()
        await a.close()
        assert task.cancelled()
        assert link.ws.closed
        await _until(lambda: not b.links)


async def test_closing_ends_handshakes_in_progress_at_once(split: SplitModel) -> None:
    """A peer mid-handshake when the node closes is told so (GOING_AWAY) instead of waiting out the handshake
    timeout with, on its side, a link it may already think open (a cluster's close took 5 s for this)."""
    connections = ConnectionLimits(handshake_timeout=60.0)
    node = Node(split, _config("b", connections=connections))
    await node.start()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://{node.address}{WS_PATH}")  # says nothing: the node waits
        await _until(lambda: node._mesh._handshaking)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await node.close()
        took = loop.time() - start
        msg = await ws.receive(timeout=5)
        await ws.close()
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
    assert took < 10.0, took  # not the 60 s handshake timeout
    assert node.counters.auth_failures == 0  # closing is not the peer's failure


async def test_graceful_leave_is_seen_by_peers(split: SplitModel) -> None:
    async with Node(split, _config("a")) as a:
        async with Node(split, _config("b", seeds=[a.address])) as b:
            await _until(lambda: a.links and b.links)
        await _until(lambda: a.peers.get("b") is not None and a.peers["b"].state.value == "left", 3.0)


# ---------------------------------------------------------------- separate processes


async def _spawn_serve(name: str, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    args = ["serve", "--model", "lenet", "--data", "mnist-5k", "--amount", "0.5", "--name", name, *extra]
    return await start_serve(args, {**os.environ, "CCIED_SECRET": SECRET}, timeout=240)


@pytest.mark.slow
@pytest.mark.parametrize("mdns", [True, False])
async def test_three_processes_find_each_other(split: SplitModel, mdns: bool) -> None:
    procs = []
    try:
        async with Node(
            split, NodeConfig(name="p0", secret=SECRET, network=NetworkConfig(mdns=mdns))
        ) as node:
            extra = () if mdns else ("--no-mdns", "--seeds", node.address)
            for i in (1, 2):
                procs.append((await _spawn_serve(f"p{i}", *extra))[0])
            took = await _until(lambda: len(node.links) == 2 and len(node.peers) == 2, 10.0)
            assert took <= 3.0, f"discovery took {took:.2f} s"
            # Each child knows the other too (membership gossip), seen through our view of their links.
            await _until(lambda: all(m.state.value == "alive" for m in node.peers.values()), 3.0)
    finally:
        for p in procs:
            await stop_serve(p)


@pytest.mark.slow
async def test_thousand_requests_and_a_sigkill_midstream(split: SplitModel, data: datasets.Dataset) -> None:
    settings, _ = calibrate(split, data, requests=2000)
    procs = []
    try:
        async with Node(split, _config("asker", cache=settings.config())) as node:
            for i in (1, 2):
                procs.append(
                    (await _spawn_serve(f"s{i}", "--no-mdns", "--seeds", node.address, *settings.as_args()))[
                        0
                    ]
                )
            await _until(lambda: len(node.links) == 2, 10.0)
            stream = list(camera_stream(data.test_images, data.test_labels, 1000, seed=3))
            x = data.normalize(np.stack([it.image for it in stream]))
            want = split(x).argmax(1).tolist()
            results: list[InferenceResult] = []
            sem = asyncio.Semaphore(8)

            async def one(i: int) -> InferenceResult:
                async with sem:
                    r = await node.infer(x[i])
                    assert isinstance(r, InferenceResult)
                    return r

            async def killer() -> None:
                await _until(lambda: node.counters.requests >= 400, 60.0)
                procs[0].send_signal(signal.SIGKILL)

            kill = asyncio.ensure_future(killer())
            results = list(await asyncio.gather(*(one(i) for i in range(1000))))
            await kill
            sources = Counter("peer" if r.source.startswith("peer:") else r.source for r in results)
            assert len(results) == 1000
            assert node.counters.failed == 0
            assert set(sources) == {"cache", "local", "peer"}, sources
            wrong = [i for i, r in enumerate(results) if r.source != "cache" and r.label != want[i]]
            assert wrong == []
            hits = [i for i, r in enumerate(results) if r.source == "cache"]
            agreement = sum(results[i].label == want[i] for i in hits) / len(hits)
            print(f"sources {dict(sources)}, hit agreement {agreement:.4f}, retries {node.counters.retries}")
            assert agreement >= 0.95
    finally:
        for p in procs:
            if p.returncode is None:
                await stop_serve(p)


async def test_leaving_withdraws_the_mdns_record(split: SplitModel) -> None:
    from ccied_p2p.runtime.discovery import browse_once

    async with Node(
        split, NodeConfig(name="announced", secret=SECRET, network=NetworkConfig(mdns=True))
    ) as node:
        node_id = node.node_id
        seen = await browse_once(1.5)
        assert node_id in {p.node_id for p in seen}
    after = await browse_once(1.5)
    assert node_id not in {p.node_id for p in after}
    assert not _other_tasks() or all(not name.startswith("ccied:announced") for name in _other_tasks())
