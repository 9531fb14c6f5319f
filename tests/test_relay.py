"""The link emulator: its pure model on a fake clock, then the relay measured on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import random
import statistics
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccied_p2p.errors import ConfigError
from ccied_p2p.testing.linkmodel import MBIT, DelaySchedule, Direction, LinkSpec, TokenBucket, Topology
from ccied_p2p.testing.relay import Network, Relay

pytestmark = pytest.mark.network

WIFI_RATE = 10 * MBIT  # 1.25e6 bytes/s
WIFI_DELAY = 0.020

# ---------------------------------------------------------------- pure model, fake clock


def test_bucket_allows_a_burst_then_paces_at_the_rate() -> None:
    b = TokenBucket(rate=1000.0, depth=500.0, now=0.0)
    assert b.reserve(500, 0.0) == 0.0  # the burst leaves at once
    assert b.reserve(100, 0.0) == pytest.approx(0.1)  # then 100 bytes take 0.1 s
    assert b.reserve(100, 0.0) == pytest.approx(0.2)
    # An idle second refills to the depth, no more.
    assert b.reserve(500, 1.2) == pytest.approx(1.2)
    assert b.tokens == pytest.approx(0.0)


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    b = TokenBucket(rate=100.0, depth=10.0, now=5.0)
    assert b.reserve(10, 5.0) == 5.0
    assert b.reserve(10, 1.0) == pytest.approx(5.1)  # no tokens minted by going back in time


@given(
    rate=st.floats(1e3, 1e8),
    sizes=st.lists(st.integers(1, 65536), min_size=20, max_size=200),
)
@settings(max_examples=50, deadline=None)
def test_bucket_long_run_rate_is_the_configured_rate(rate: float, sizes: list[int]) -> None:
    depth = 1448.0
    b = TokenBucket(rate, depth)
    done = 0.0
    for n in sizes:
        done = b.reserve(n, 0.0)  # everything offered at t=0: the bucket alone decides
    total = sum(sizes)
    assert done == pytest.approx(max(0.0, (total - depth) / rate), rel=1e-9, abs=1e-12)


@given(
    delay=st.floats(0, 0.1),
    jitter=st.floats(0, 0.05),
    departs=st.lists(st.floats(0, 10), min_size=1, max_size=100),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=100, deadline=None)
def test_schedule_never_reorders_and_respects_delay_bounds(
    delay: float, jitter: float, departs: list[float], seed: int
) -> None:
    s = DelaySchedule(delay, jitter, rng=random.Random(seed))
    departs.sort()
    releases = [s.release(d) for d in departs]
    assert releases == sorted(releases)
    for d, r in zip(departs, releases, strict=True):
        assert r >= d + max(0.0, delay - jitter) - 1e-12
    # Without overtaking pressure, every release is within delay +- jitter of its departure.
    spaced = DelaySchedule(delay, jitter, rng=random.Random(seed))
    for i in range(50):
        d = i * (2 * jitter + 0.01)
        assert d + max(0.0, delay - jitter) - 1e-12 <= spaced.release(d) <= d + delay + jitter + 1e-12


def test_loss_stalls_a_segment_by_an_rto_doubling_per_lost_retransmission() -> None:
    s = DelaySchedule(0.01, loss=0.25, rto=0.2, rng=random.Random(1))
    stalls = [s.stall() for _ in range(20_000)]
    lost = sum(x > 0 for x in stalls) / len(stalls)
    assert lost == pytest.approx(0.25, abs=0.015)
    # P(stall >= rto + 2 rto) = p^2: the retransmission was lost too.
    twice = sum(x >= 0.6 - 1e-9 for x in stalls) / len(stalls)
    assert twice == pytest.approx(0.0625, abs=0.01)
    assert set(round(x, 6) for x in stalls) <= {0.0, 0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 25.4, 51.0, 102.2}


def test_direction_cuts_chunks_into_segments_and_paces_them() -> None:
    spec = LinkSpec(rate=1448.0 * 100, delay=0.05, mss=1448, burst=1448)
    d = Direction(spec, random.Random(0))
    plan = d.plan(1448 * 10, now=1.0)
    assert [size for _, size in plan.segments] == [1448] * 10
    times = [at for at, _ in plan.segments]
    assert times[0] == pytest.approx(1.05)
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([0.01] * 9)
    assert not plan.reset
    # Delay only: one segment, no per-byte work.
    only = Direction(LinkSpec(delay=0.02), random.Random(0)).plan(100_000, now=0.0)
    assert only.segments == ((0.02, 100_000),)
    # No shaping at all: delivered now.
    assert Direction(LinkSpec(), random.Random(0)).plan(10, now=3.0).segments == ((3.0, 10),)


def test_direction_resets_with_the_given_probability() -> None:
    d = Direction(LinkSpec(reset=0.1, mss=100), random.Random(3))
    resets = 0
    for _ in range(2000):
        plan = d.plan(100, now=0.0)
        resets += plan.reset
        if plan.reset:
            assert plan.segments == ((0.0, 0),)
    assert resets / 2000 == pytest.approx(0.1, abs=0.02)


def test_spec_validation_and_topology() -> None:
    with pytest.raises(ConfigError):
        LinkSpec(rate=0)
    with pytest.raises(ConfigError):
        LinkSpec(loss=1.0)
    with pytest.raises(ConfigError):
        LinkSpec(delay=-1)
    assert LinkSpec.mbit(10, 0.02).rate == pytest.approx(1.25e6)
    assert LinkSpec.wifi().delay == 0.02
    t = Topology(LinkSpec(delay=0.001))
    t.set_link(0, 1, LinkSpec(delay=0.5), both=False)
    assert t.spec(0, 1).delay == 0.5
    assert t.spec(1, 0).delay == 0.001
    t.partition([{0, 1}, {2}])
    assert t.blocked(0, 2)
    assert t.blocked(2, 1)
    assert not t.blocked(0, 1)
    assert not t.blocked(3, 2)
    assert not t.blocked(None, 0)
    with pytest.raises(ConfigError):
        t.partition([{0}, {0, 1}])
    t.heal()
    assert not t.blocked(0, 2)


# ---------------------------------------------------------------- live relay, measured


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def server_factory() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def make(handler: Handler) -> int:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    yield make
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def test_rate_is_within_ten_percent_of_ten_mbit(
    server_factory: Callable[[Handler], Awaitable[int]],
) -> None:
    total = 2_000_000
    arrivals: list[tuple[float, int]] = []
    digest = hashlib.sha256()
    done = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while chunk := await reader.read(65536):
            arrivals.append((loop.time(), len(chunk)))
            digest.update(chunk)
        writer.close()
        done.set()

    port = await server_factory(sink)
    spec = LinkSpec(rate=WIFI_RATE, delay=WIFI_DELAY)
    payload = os.urandom(total)
    async with Relay("127.0.0.1", 0, ("127.0.0.1", port), spec=spec) as relay:
        _reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(done.wait(), 10)
        writer.close()
        await writer.wait_closed()
    # Rate from the first arrival to the last, excluding the first chunk (it had no serialisation wait).
    span = arrivals[-1][0] - arrivals[0][0]
    measured = (total - arrivals[0][1]) / span
    print(f"relay rate: configured {WIFI_RATE:.0f} B/s, measured {measured:.0f} B/s over {total} B")
    assert measured == pytest.approx(WIFI_RATE, rel=0.10)
    assert digest.digest() == hashlib.sha256(payload).digest()
    assert relay.stats.bytes_up == total


_MSG = struct.Struct("<Qd")


async def _one_way_delays(
    server_factory: Callable[[Handler], Awaitable[int]], spec: LinkSpec, count: int, gap: float
) -> list[float]:
    delays: list[float] = []
    seqs: list[int] = []

    async def stamp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                seq, sent = _MSG.unpack(await reader.readexactly(_MSG.size))
                delays.append(loop.time() - sent)
                seqs.append(seq)
        writer.close()

    port = await server_factory(stamp)
    loop = asyncio.get_running_loop()
    async with Relay("127.0.0.1", 0, ("127.0.0.1", port), spec=spec) as relay:
        _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        for i in range(count):
            writer.write(_MSG.pack(i, loop.time()))
            await writer.drain()
            await asyncio.sleep(gap)
        deadline = loop.time() + 10
        while len(delays) < count:
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
    assert seqs == list(range(count)), "bytes arrived out of order or not at all"
    return delays


async def test_one_way_delay_is_within_ten_percent_of_twenty_ms(
    server_factory: Callable[[Handler], Awaitable[int]],
) -> None:
    delays = await _one_way_delays(server_factory, LinkSpec(rate=WIFI_RATE, delay=WIFI_DELAY), 60, 0.01)
    median = statistics.median(delays)
    print(
        f"relay one-way delay: configured {WIFI_DELAY * 1000:.1f} ms, median {median * 1000:.2f} ms, "
        f"p90 {sorted(delays)[int(0.9 * len(delays))] * 1000:.2f} ms over {len(delays)} messages"
    )
    assert median == pytest.approx(WIFI_DELAY, rel=0.10)
    assert min(delays) >= WIFI_DELAY - 0.0006


async def test_jitter_varies_delay_without_reordering(
    server_factory: Callable[[Handler], Awaitable[int]],
) -> None:
    delays = await _one_way_delays(server_factory, LinkSpec(delay=0.02, jitter=0.005), 40, 0.012)
    assert statistics.pstdev(delays) > 0.0015
    assert min(delays) >= 0.015 - 0.0006
    assert max(delays) <= 0.025 + 0.05  # never early (above); late only by scheduling noise on 2 busy cores


async def test_loss_stalls_but_never_corrupts(server_factory: Callable[[Handler], Awaitable[int]]) -> None:
    spec = LinkSpec(delay=0.005, loss=0.25, rto=0.03)
    delays = await _one_way_delays(server_factory, spec, 60, 0.04)
    stalled = sum(d >= 0.03 for d in delays)
    # Each message is one segment, sent after the previous one's stall (if any) is over: about a quarter stall.
    assert 5 <= stalled <= 30, stalled
    assert statistics.median(delays) < 0.03


async def test_reset_kills_the_connection_and_the_relay_keeps_serving(
    server_factory: Callable[[Handler], Awaitable[int]],
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    port = await server_factory(echo)
    network = Network(LinkSpec(reset=0.05, mss=1000))
    async with Relay("127.0.0.1", 0, ("127.0.0.1", port), network=network) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)

        async def echo_until_reset() -> None:
            for _ in range(1000):  # 100 segments each way per round: a reset is all but certain
                writer.write(b"x" * 100_000)
                await writer.drain()
                await reader.readexactly(100_000)

        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await echo_until_reset()
        writer.close()
        assert relay.stats.resets >= 1
        # A clean link through the same network afterwards.
        network.topology.default = LinkSpec()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()


async def test_partition_holds_bytes_refuses_new_connections_and_heals(
    server_factory: Callable[[Handler], Awaitable[int]],
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    port = await server_factory(echo)
    network = Network(LinkSpec(delay=0.002))
    network.add_endpoint("a", "127.0.0.2")
    async with Relay("127.0.0.3", 0, ("127.0.0.1", port), network=network, owner="b") as relay:
        reader, writer = await asyncio.open_connection("127.0.0.3", relay.port, local_addr=("127.0.0.2", 0))
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        network.partition({"a"}, {"b"})
        writer.write(b"during")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(6), 0.3)
        # A new connection from a is refused (reset) while the cut stands; an outsider still gets through.
        r2, w2 = await asyncio.open_connection("127.0.0.3", relay.port, local_addr=("127.0.0.2", 0))
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(r2.readexactly(1), 2)
        w2.close()
        r3, w3 = await asyncio.open_connection("127.0.0.3", relay.port, local_addr=("127.0.0.4", 0))
        w3.write(b"out")
        assert await asyncio.wait_for(r3.readexactly(3), 2) == b"out"
        w3.close()
        assert relay.stats.refused == 1
        network.heal()
        assert await asyncio.wait_for(reader.readexactly(6), 2) == b"during"
        # A partition with reset=True kills the existing connection at once.
        network.partition({"a"}, {"b"}, reset=True)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 2)
        writer.close()
        network.heal()
