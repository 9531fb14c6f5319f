"""Real network namespaces (root and iproute2 only; skipped elsewhere): tbf rate, an in-namespace relay, a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import struct
import subprocess

import pytest

from ccied_p2p.testing import LinkSpec, LocalCluster
from ccied_p2p.testing.linkmodel import MBIT
from ccied_p2p.testing.netns import NetnsLab, unavailable
from ccied_p2p.testing.relay import Relay

REASON = unavailable()
pytestmark = [pytest.mark.network, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

RATE = 10 * MBIT


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


async def test_tbf_shapes_a_veth_pair_to_ten_mbit() -> None:
    before = _namespaces()
    total = 2_000_000
    arrivals: list[tuple[float, int]] = []
    done = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while chunk := await reader.read(65536):
            arrivals.append((loop.time(), len(chunk)))
        writer.close()
        done.set()

    with NetnsLab(2, rate=RATE) as lab:
        assert {lab.ns(0), lab.ns(1), lab.switch} <= _namespaces()
        server = await lab.start_server(1, sink, lab.address(1), 9000)
        try:
            _, writer = await lab.open_connection(0, lab.address(1), 9000)
            writer.write(os.urandom(total))
            await writer.drain()
            writer.write_eof()
            await asyncio.wait_for(done.wait(), 10)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
    assert _namespaces() == before  # everything removed
    received = sum(n for _, n in arrivals)
    rate = (received - arrivals[0][1]) / (arrivals[-1][0] - arrivals[0][0])
    # tbf counts Ethernet frames: TCP payload is ~1448 of every ~1514 bytes, so goodput is ~4% under the rate.
    print(f"tc tbf 10 Mbit/s between namespaces: TCP goodput {rate:.0f} B/s ({rate / RATE:.3f} of the rate)")
    assert received == total
    assert rate == pytest.approx(RATE, rel=0.10)


async def test_relay_inside_a_namespace_adds_the_delay() -> None:
    delays: list[float] = []
    msg = struct.Struct("<d")

    async def stamp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                (sent,) = msg.unpack(await reader.readexactly(msg.size))
                delays.append(loop.time() - sent)
        writer.close()

    with NetnsLab(2, rate=RATE) as lab:
        server = await lab.start_server(1, stamp, lab.address(1), 9000)
        relay = Relay(
            lab.address(1),
            9001,
            (lab.address(1), 9000),
            spec=LinkSpec(delay=0.020),
            socket_factory=lab.socket_factory(1),
        )
        try:
            async with relay:
                _, writer = await lab.open_connection(0, lab.address(1), 9001)
                loop = asyncio.get_running_loop()
                for _ in range(30):
                    writer.write(msg.pack(loop.time()))
                    await writer.drain()
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)
                writer.close()
        finally:
            server.close()
            await server.wait_closed()
    print(f"relay in a namespace, 20 ms: median one-way {statistics.median(delays) * 1000:.2f} ms")
    assert len(delays) == 30
    assert statistics.median(delays) == pytest.approx(0.020, rel=0.10)


@pytest.mark.slow
async def test_subprocess_cluster_in_namespaces_detects_a_kill_and_a_partition() -> None:
    async with LocalCluster(3, mode="subprocess", netns=True, link=LinkSpec.mbit(10)) as cluster:
        await cluster.wait_converged(20)
        assert cluster.nodes[0].address == "10.231.0.10:7700"
        await asyncio.sleep(1.0)
        await cluster.kill(2)
        await cluster.wait_converged(10)
        times = cluster.detection_times(2)
        print("netns SIGKILL detection:", {k: round(v, 2) for k, v in times.items() if v is not None})
        assert all(t is not None and t <= 15.0 for t in times.values())  # 10x the expected ~1.5 s
        await cluster.restart(2)
        await cluster.wait_converged(15)
        cluster.partition({0, 1}, {2})
        split_s = await cluster.wait_converged(10)
        cluster.heal()
        heal_s = await cluster.wait_converged(15)
        print(f"netns partition seen in {split_s:.2f} s, healed in {heal_s:.2f} s (default timings)")
