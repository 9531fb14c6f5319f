"""A client without the secret cannot lock a node out: slow request heads, caps, bounded logs.

The live test runs the node in its own process under the common limit of 1 024 open files and opens 1 100
connections from 127.0.0.1 that each send half a request head and then one byte a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ccied_p2p.launch import READY, stop_serve
from ccied_p2p.logs import RateLimitedLog
from ccied_p2p.runtime.config import ConnectionLimits, NetworkConfig
from ccied_p2p.runtime.guard import (
    ACCEPT_STORM_MESSAGE,
    AcceptStormFilter,
    ConnectionGuard,
    GuardLimits,
    address_key,
)
from ccied_p2p.runtime.node import Node, NodeConfig
from ccied_p2p.split import SplitModel
from ccied_p2p.testing.wait import until

SECRET = "test-secret-0123456789"
ATTACKERS = 1100
HEADER_TIMEOUT = 3.0
CHILD_NOFILE = 1024
HALF_HEAD = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_bounds_and_sums_up(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    limiter = RateLimitedLog(logging.getLogger("test.ratelimit"), burst=5, window=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        written = sum(limiter.warning("auth", "refused %d", i) for i in range(1000))
        assert limiter.warning("frame", "another kind has its own budget")
        clock.now = 10.0
        assert limiter.warning("auth", "a new window")
    assert written == 5
    assert limiter.suppressed == 995
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:5] == [f"refused {i}" for i in range(5)]
    assert "995 more 'auth' messages suppressed" in lines[6]
    assert lines[-1] == "a new window"


def test_accept_storm_filter_passes_a_few_and_only_those() -> None:
    clock = _Clock()
    storm = AcceptStormFilter(
        RateLimitedLog(logging.getLogger("test.storm"), burst=3, window=10.0, clock=clock)
    )
    logger = logging.getLogger("test.storm.asyncio")

    def record(msg: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.ERROR, __file__, 1, msg, (), None)

    passed = sum(storm.filter(record(ACCEPT_STORM_MESSAGE + "\nsocket: <...>")) for _ in range(10_000))
    assert passed == 3
    assert storm.seen == 10_000
    assert storm.filter(record("Task exception was never retrieved"))  # anything else passes


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("10.0.0.7", 5000), "10.0.0.7"),
        (("::ffff:10.0.0.7", 5000, 0, 0), "10.0.0.7"),
        (("2001:db8::1", 5000, 0, 0), "2001:db8::/64"),
        (("2001:db8::ffff:1", 5001, 0, 0), "2001:db8::/64"),
        (None, "?"),
    ],
)
def test_address_key_groups_an_ipv6_host_by_its_64(peer: object, key: str) -> None:
    assert address_key(peer) == key


# ---------------------------------------------------------------------------------------------- live


def _raise_own_fd_limit(needed: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"this test needs {needed} open files, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else needed, hard))
    return soft, hard


async def _start_victim(log_path: Path, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    """``ccied-p2p serve`` with RLIMIT_NOFILE 1024, its log (INFO) in ``log_path``; returns it and its address."""
    limit = f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({CHILD_NOFILE}, {CHILD_NOFILE}))"
    launch = f"{limit}; os.execv(sys.executable, [sys.executable, '-m', 'ccied_p2p.cli', *sys.argv[1:]])"
    args = ["--log-level", "INFO", "serve", "--model", "lenet", "--data", "mnist-5k", "--amount", "0.5"]
    args += ["--name", "victim", "--no-mdns", *extra]
    with log_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            launch,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**os.environ, "CCIED_SECRET": SECRET},
        )
    assert proc.stdout is not None
    async with asyncio.timeout(240):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                tail = (await asyncio.to_thread(log_path.read_text))[-2000:]
                raise RuntimeError(f"the node exited before it was ready: {tail}")
            if line.startswith(READY):
                return proc, line.split()[1]


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and (m.group(1) or "") == want:
            return float(m.group(2))
    raise AssertionError(f"{name}{{{want}}} not in the metrics")


@pytest.mark.network
async def test_trickling_heads_are_closed_and_everyone_else_gets_in(
    split: SplitModel, tmp_path: Path
) -> None:
    _raise_own_fd_limit(ATTACKERS + 400)
    log_path = tmp_path / "victim.log"
    proc, address = await _start_victim(log_path, "--header-timeout", str(HEADER_TIMEOUT))
    host, _, port = address.rpartition(":")
    opened: list[float] = []
    closed: list[float] = []
    all_open = asyncio.Event()
    stop = asyncio.Event()
    gate = asyncio.Semaphore(64)

    async def loris() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(HALF_HEAD)
        start = time.monotonic()
        opened.append(start)
        if len(opened) == ATTACKERS:
            all_open.set()
        try:
            # One byte a second until the node hangs up (or the test gives up on it).
            while not stop.is_set():
                try:
                    async with asyncio.timeout(1.0):
                        data = await reader.read(1024)
                except TimeoutError:
                    writer.write(b"a")
                    continue
                if not data:
                    break
                # The node answered something (it must not: the head is incomplete); keep trickling.
            else:
                return
        except ConnectionError:
            pass
        closed.append(time.monotonic() - start)
        writer.close()

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(ATTACKERS):
                tg.create_task(loris())
            async with asyncio.timeout(60):
                await all_open.wait()
            held = ATTACKERS - len(closed)

            # Under attack: a fresh GET /status, then a new peer with the secret.
            t0 = time.monotonic()
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session,
                session.get(f"http://{address}/status") as resp,
            ):
                assert resp.status == 200
                status = await resp.json()
            status_s = time.monotonic() - t0
            t0 = time.monotonic()
            config = NodeConfig(
                name="late", secret=SECRET, network=NetworkConfig(mdns=False, seeds=[address])
            )
            async with Node(split, config) as late:
                await late.wait_for_peers(1, timeout=2.0)
                join_s = time.monotonic() - t0
                assert any(link.peer.name == "victim" for link in late.links.values())

            await until(lambda: len(closed) == ATTACKERS, HEADER_TIMEOUT * 10 + 10)
            stop.set()

        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session,
            session.get(f"http://{address}/metrics") as resp,
        ):
            metrics = await resp.text()
    finally:
        stop.set()
        await stop_serve(proc)
    log_bytes = log_path.stat().st_size
    refused = {
        r: _metric(metrics, "ccied_connections_refused_total", reason=r)
        for r in ("per_address", "total", "evicted", "header_timeout", "idle_timeout")
    }
    slowest = max(closed)
    print(
        f"\nslowloris: {len(closed)}/{ATTACKERS} closed (held {held} when all were open), slowest after "
        f"{slowest:.2f} s (header timeout {HEADER_TIMEOUT:g} s), median {sorted(closed)[len(closed) // 2]:.2f} s; "
        f"GET /status {status_s * 1000:.0f} ms, peer joined in {join_s * 1000:.0f} ms; log {log_bytes} B; "
        f"refused {refused}"
    )
    assert len(closed) == ATTACKERS
    assert slowest <= HEADER_TIMEOUT + 2.0
    assert status["node"]["name"] == "victim"
    assert status_s <= 2.0
    assert join_s <= 2.0
    assert log_bytes < 1 << 20
    # Every trickling connection is accounted for: evicted to make room or timed out (refused while at cap).
    assert refused["evicted"] + refused["header_timeout"] + refused["per_address"] >= ATTACKERS
    assert refused["header_timeout"] >= 1
    with contextlib.suppress(FileNotFoundError):
        text = log_path.read_text()
        assert "out of system resource" not in text


_HOG_CHILD = """
import asyncio, os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from ccied_p2p import datasets
from ccied_p2p.logs import setup_logging
from ccied_p2p.presets import reference_parts
from ccied_p2p.runtime.node import Node, NodeConfig
from ccied_p2p.runtime.config import NetworkConfig
setup_logging("INFO")
split = reference_parts("lenet", datasets.load("mnist-5k"), amount=0.5, progress=False)

async def main():
    async with Node(split, NodeConfig(name="victim", secret=sys.argv[1], network=NetworkConfig(mdns=False))) as node:
        hog = []
        try:  # something else in the process took every descriptor
            while True:
                hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        print("READY", node.address, flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.network
async def test_out_of_descriptors_the_accept_log_stays_bounded(split: SplitModel, tmp_path: Path) -> None:
    """asyncio logs every failed accept with a traceback, again and again; the node lets a few through."""
    log_path = tmp_path / "victim.log"
    with log_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _HOG_CHILD, SECRET, stdout=asyncio.subprocess.PIPE, stderr=err
        )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(240):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith(READY), line
        host, _, port = line.split()[1].rpartition(":")

        async def connect() -> asyncio.StreamWriter | None:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    return (await asyncio.open_connection(host, int(port)))[1]
            return None

        writers = [w for w in await asyncio.gather(*(connect() for _ in range(200))) if w is not None]
        start = log_path.stat().st_size
        await asyncio.sleep(5.0)
        grown = log_path.stat().st_size - start
        for w in writers:
            w.close()
    finally:
        proc.kill()
        await proc.wait()
    text = await asyncio.to_thread(log_path.read_text)
    print(f"\nout of descriptors: {len(writers)} connections waiting, log grew {grown} B in 5 s")
    assert "socket.accept() out of system resource" in text  # the storm happened
    assert grown < 64 << 10


# ---------------------------------------------------------------------------------------------- in process


def _config(name: str, *, seeds: Sequence[str] = (), **limits: Any) -> NodeConfig:
    """A node whose inbound connections are held to ``limits`` (ConnectionLimits fields)."""
    network = NetworkConfig(mdns=False, seeds=seeds)
    return NodeConfig(name=name, secret=SECRET, network=network, connections=ConnectionLimits(**limits))


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the node hangs up on this connection (reading and discarding what it sends)."""
    start = time.monotonic()
    async with asyncio.timeout(limit):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
    return time.monotonic() - start


async def _get_and_keep(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keep-alive connection that has had one complete GET /status answered."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return reader, writer


@pytest.mark.network
async def test_idle_and_second_request_heads_have_their_own_timeouts(split: SplitModel) -> None:
    # header_timeout leaves room for a loaded loop between accept and the handler (0.3 s was once too short
    # on CI for the GET below, sent at once); idle_timeout is four times it, so each shows which one fired.
    async with Node(split, _config("a", header_timeout=1.0, idle_timeout=4.0)) as node:
        # Quiet after a response: closed after the idle timeout, not the (shorter) header timeout.
        reader, writer = await _get_and_keep(node.address)
        idle = await _until_closed(reader, 30)
        writer.close()
        # The next request's head trickled: the header timeout runs from its first byte.
        reader, writer = await _get_and_keep(node.address)
        writer.write(HALF_HEAD)
        start = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while not reader.at_eof() and time.monotonic() - start < 30:
                writer.write(b"a")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await reader.read(65536)
        head = time.monotonic() - start
        writer.close()
        refused = dict(node.counters.connections_refused)
    assert idle >= 3.9
    assert head < 3.0
    assert refused == {"idle_timeout": 1, "header_timeout": 1}


@pytest.mark.network
async def test_caps_refuse_what_cannot_make_room(split: SplitModel) -> None:
    """Connections that are busy (here: peers in their handshake) are never evicted; newcomers are refused."""
    cfg = _config("a", max_connections=4, max_connections_per_address=3, handshake_timeout=30.0)
    async with Node(split, cfg) as node, contextlib.AsyncExitStack() as stack:
        url = f"http://{node.address}/ccied"
        sessions = {
            ip: await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))
            )
            for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3")
        }
        for _ in range(3):
            await stack.enter_async_context(sessions["127.0.0.1"].ws_connect(url))
        host, _, port = node.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.1", 0))
        assert await _until_closed(reader, 10) < 10
        writer.close()
        assert node.counters.connections_refused == {"per_address": 1}
        # Another address still gets in, until the total cap.
        await stack.enter_async_context(sessions["127.0.0.2"].ws_connect(url))
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.3", 0))
        assert await _until_closed(reader, 10) < 10
        writer.close()
        assert node.counters.connections_refused == {"per_address": 1, "total": 1}
        assert node.guard is not None
        assert node.guard.open == 4


@pytest.mark.network
async def test_hostile_handshakes_are_logged_with_reasons_and_bounded(
    split: SplitModel, caplog: pytest.LogCaptureFixture
) -> None:
    async with Node(split, _config("a", handshake_timeout=0.3)) as node, aiohttp.ClientSession() as session:
        url = f"http://{node.address}/ccied"
        with caplog.at_level(logging.WARNING, logger="ccied_p2p.runtime.node"):
            async with session.ws_connect(url) as ws:  # says nothing
                await ws.receive(timeout=10)
            for _ in range(200):
                async with session.ws_connect(url) as ws:
                    await ws.send_bytes(os.urandom(64))
                    await ws.receive(timeout=10)
            await asyncio.sleep(0.05)
        assert node.counters.auth_failures == 201
    rejected = [r.getMessage() for r in caplog.records if "rejected a connection" in r.getMessage()]
    assert len(rejected) == node.refusal_log.burst
    assert "no complete handshake within 0.3 s" in rejected[0]
    assert all(line.rsplit(": ", 1)[-1].strip() for line in rejected)  # every line says why


@pytest.mark.network
async def test_an_oversized_frame_on_a_link_is_logged(
    split: SplitModel, caplog: pytest.LogCaptureFixture
) -> None:
    async with Node(split, _config("a")) as a, Node(split, _config("b", seeds=[a.address])) as b:
        await until(lambda: bool(a.links and b.links), 10)
        (link,) = b.links.values()
        with caplog.at_level(logging.WARNING, logger="ccied_p2p.runtime.node"):
            with contextlib.suppress(ConnectionError):
                await link.ws.send_bytes(b"\0" * (a.config.serving.limits.max_frame_bytes + 1024))
            await until(lambda: not a.links, 10)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("closing link to b")]
    assert len(lines) == 1
    assert "size" in lines[0].lower()


class _Transport(asyncio.Transport):
    """Just enough of a socket transport for the guard's bookkeeping."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def abort(self) -> None:
        self.aborted = True


async def test_a_connection_accepted_after_the_guard_closed_is_aborted_not_handed_on() -> None:
    """The race chaos testing hit: a connection in asyncio's accept path when the server stopped reached the
    stopped aiohttp server and its socket leaked. After close() the guard aborts it and builds no handler."""
    built: list[asyncio.Protocol] = []

    def factory() -> asyncio.Protocol:
        built.append(asyncio.Protocol())
        return built[-1]

    guard = ConnectionGuard(GuardLimits(3.0, 60.0, 8, 8))
    early, late = _Transport(), _Transport()
    guard.protocol_factory(factory)().connection_made(early)
    assert (guard.open, len(built), early.aborted) == (1, 1, False)
    guard.close()
    assert early.aborted
    guard.protocol_factory(factory)().connection_made(late)
    assert late.aborted
    assert (guard.open, len(built)) == (0, 1)
