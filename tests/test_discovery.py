"""mDNS discovery with real zeroconf, pinned to 127.0.0.1 (never the machine's uplink), bounded in time.

Other test runs on this machine may announce ``_ccied._tcp`` on loopback at the same time, so tests look
for the node ids they created and never assert that a peer table holds nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import ifaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from ccied_p2p.codec.wire import FORMAT_VERSION, NODE_ID_BYTES
from ccied_p2p.errors import ConfigError, LocalError, MalformedError
from ccied_p2p.runtime import discovery as disc
from ccied_p2p.runtime.discovery import (
    SERVICE_TYPE,
    DiscoveredPeer,
    Discovery,
    DiscoveryConfig,
    DiscoveryEvent,
    PeerFound,
    PeerRemoved,
    PeerUpdated,
    ServiceAnnouncement,
    browse_once,
    service_name_for,
)
from ccied_p2p.testing.wait import until

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

LOOPBACK = ["127.0.0.1"]
FP_A = "ab" * 32
FP_B = "cd" * 32


def loopback(**kw: float | bool) -> DiscoveryConfig:
    return DiscoveryConfig(interfaces=LOOPBACK, **kw)  # type: ignore[arg-type]


def announcement(
    name: str, port: int, fingerprint: str = FP_A, protocol: int = FORMAT_VERSION
) -> ServiceAnnouncement:
    return ServiceAnnouncement(os.urandom(NODE_ID_BYTES), name, fingerprint, port, protocol, "127.0.0.1")


async def wait_event(
    d: Discovery, pred: Callable[[DiscoveryEvent], bool], within: float = 3.0
) -> DiscoveryEvent:
    async with asyncio.timeout(within), contextlib.aclosing(d.events()) as events:
        async for event in events:
            if pred(event):
                return event
    raise AssertionError("discovery closed before the event came")


def logged(caplog: pytest.LogCaptureFixture, *parts: str) -> Callable[[], bool]:
    return lambda: any(all(p in r.getMessage() for p in parts) for r in caplog.records)


def found(node_id: bytes) -> Callable[[DiscoveryEvent], bool]:
    return lambda e: isinstance(e, PeerFound) and e.peer.node_id == node_id


def other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


class RawZeroconf:
    """A bare zeroconf responder on loopback, for records Discovery would never announce."""

    def __init__(self, aiozc: AsyncZeroconf) -> None:
        self.aiozc = aiozc
        self.broadcasts: list[asyncio.Future[object]] = []

    async def register(self, info: AsyncServiceInfo) -> None:
        self.broadcasts.append(
            asyncio.ensure_future(await self.aiozc.async_register_service(info, cooperating_responders=True))
        )


@contextlib.asynccontextmanager
async def raw_zeroconf() -> AsyncIterator[RawZeroconf]:
    async with AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only) as aiozc:
        raw = RawZeroconf(aiozc)
        try:
            yield raw
        finally:
            # AsyncZeroconf.async_close() leaves the announcement tasks of registrations running.
            for fut in raw.broadcasts:
                fut.cancel()
            await asyncio.gather(*raw.broadcasts, return_exceptions=True)


def raw_info(label: str, properties: dict[bytes, bytes | None], *, address: bool = True) -> AsyncServiceInfo:
    tag = os.urandom(4).hex()
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{label}-{tag}.{SERVICE_TYPE}",
        port=7000,
        properties=properties,
        server=f"raw-{tag}.local.",
        parsed_addresses=["127.0.0.1"] if address else None,
    )


def good_txt(**override: bytes | None) -> dict[bytes, bytes | None]:
    txt: dict[bytes, bytes | None] = {
        b"node_id": os.urandom(NODE_ID_BYTES).hex().encode(),
        b"name": b"raw",
        b"fingerprint": FP_A.encode(),
        b"port": b"7000",
        b"protocol": b"1",
    }
    txt.update({k.encode(): v for k, v in override.items()})
    return txt


# --- two nodes in one process -------------------------------------------------------------------


async def test_two_instances_find_each_other_with_txt_fields() -> None:
    a = announcement("alpha", 5001, FP_A, protocol=1)
    b = announcement("beta node", 5002, FP_B, protocol=7)
    t0 = time.perf_counter()
    clock = lambda: 42.5  # noqa: E731
    async with Discovery(loopback(), announce=a, clock=clock) as da, Discovery(loopback(), announce=b) as db:
        await asyncio.gather(wait_event(da, found(b.node_id)), wait_event(db, found(a.node_id)))
        elapsed = time.perf_counter() - t0
        seen_b, seen_a = da.peers[b.node_id], db.peers[a.node_id]
    print(f"\nin-process discovery of 2 nodes: {elapsed * 1000:.1f} ms")
    assert elapsed < 3.0
    assert (seen_b.name, seen_b.fingerprint, seen_b.port, seen_b.protocol, seen_b.host) == (
        "beta node",
        FP_B,
        5002,
        7,
        "127.0.0.1",
    )
    assert (seen_a.name, seen_a.fingerprint, seen_a.port, seen_a.protocol, seen_a.host) == (
        "alpha",
        FP_A,
        5001,
        1,
        "127.0.0.1",
    )
    assert seen_a.addresses == ("127.0.0.1",)
    assert seen_a.service_name == service_name_for(a.node_id, "alpha")
    assert seen_b.last_seen == 42.5  # the injected clock
    assert abs(seen_a.last_seen - time.monotonic()) < 5.0  # the default clock is monotonic
    assert not other_tasks()


async def test_update_emits_peer_updated_with_previous() -> None:
    a = announcement("alpha", 5001)
    async with Discovery(loopback(), announce=a) as da, Discovery(loopback()) as watcher:
        await wait_event(watcher, found(a.node_id))
        changed = ServiceAnnouncement(a.node_id, "alpha", FP_B, 5009, 2, "127.0.0.1")
        await da.update(changed)
        event = await wait_event(
            watcher, lambda e: isinstance(e, PeerUpdated) and e.peer.node_id == a.node_id
        )
        assert isinstance(event, PeerUpdated)
        assert (event.peer.fingerprint, event.peer.port, event.peer.protocol) == (FP_B, 5009, 2)
        assert (event.previous.fingerprint, event.previous.port) == (FP_A, 5001)
        assert watcher.peers[a.node_id] == event.peer
        with pytest.raises(LocalError):
            await da.update(announcement("other", 5001))


async def test_unregister_on_exit_emits_peer_removed() -> None:
    a, b = announcement("stays", 5001), announcement("leaves", 5002)
    async with Discovery(loopback(), announce=a) as da:
        db = Discovery(loopback(), announce=b)
        await db.__aenter__()
        try:
            await wait_event(da, found(b.node_id))
        finally:
            t0 = time.perf_counter()
            leaving = asyncio.create_task(db.__aexit__(None, None, None))
        event = await wait_event(
            da, lambda e: isinstance(e, PeerRemoved) and e.peer.node_id == b.node_id, within=2.0
        )
        elapsed = time.perf_counter() - t0
        await leaving
        assert isinstance(event, PeerRemoved)
        assert event.peer.name == "leaves"
        assert b.node_id not in da.peers
    print(f"\ngoodbye -> PeerRemoved: {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0


# --- three nodes in three processes -----------------------------------------------------------------

NODE_SCRIPT = """
import asyncio, contextlib, json, sys, time
from ccied_p2p.runtime.discovery import Discovery, DiscoveryConfig, ServiceAnnouncement

async def main() -> None:
    node_id, name, port = bytes.fromhex(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    expected = {bytes.fromhex(h) for h in sys.argv[4].split(",")}
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print("ready", flush=True)
    await stdin.readline()
    t0 = time.perf_counter()
    config = DiscoveryConfig(interfaces=["127.0.0.1"])
    async with Discovery(config, announce=ServiceAnnouncement(node_id, name, "ab" * 32, port)) as d:
        async with asyncio.timeout(10), contextlib.aclosing(d.events()) as events:
            async for _ in events:
                if expected <= d.peers.keys():
                    break
        elapsed = time.perf_counter() - t0
        peers = {p.node_id.hex(): [p.name, p.port, p.host] for p in d.peers.values() if p.node_id in expected}
        print(json.dumps({"elapsed": elapsed, "peers": peers}), flush=True)
        await stdin.readline()  # EOF: leave
    print("bye", flush=True)

asyncio.run(main())
"""


async def test_three_processes_discover_each_other_within_3s(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    nodes = [(os.urandom(NODE_ID_BYTES), f"proc-{i}", 6100 + i) for i in range(3)]
    procs = []
    try:
        for node_id, name, port in nodes:
            others = ",".join(n.hex() for n, _, _ in nodes if n != node_id)
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(script),
                    node_id.hex(),
                    name,
                    str(port),
                    others,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            )
        async with asyncio.timeout(40):  # interpreter start and imports, not measured
            for p in procs:
                assert p.stdout is not None
                assert await p.stdout.readline() == b"ready\n"
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        reports = []
        async with asyncio.timeout(10):
            for p in procs:
                assert p.stdout is not None
                reports.append(json.loads(await p.stdout.readline()))
        wall = time.perf_counter() - t0
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        async with asyncio.timeout(10):
            for p in procs:
                assert p.stdout is not None
                assert await p.stdout.readline() == b"bye\n"
                assert await p.wait() == 0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    per_node = [r["elapsed"] for r in reports]
    print(
        f"\n3 processes: per-node discovery {[f'{t * 1000:.0f} ms' for t in per_node]}, all done {wall * 1000:.0f} ms"
    )
    for (node_id, _, _), report in zip(nodes, reports, strict=True):
        expect = {n.hex(): [name, port, "127.0.0.1"] for n, name, port in nodes if n != node_id}
        assert report["peers"] == expect
    assert max(per_node) < 3.0
    assert wall < 3.0


# --- what is ignored ---------------------------------------------------------------------------------

MALFORMED: dict[str, dict[bytes, bytes | None]] = {
    "missing-keys": {b"node_id": os.urandom(NODE_ID_BYTES).hex().encode(), b"name": b"x"},
    "bad-id-hex": good_txt(node_id=b"zz" * NODE_ID_BYTES),
    "short-id": good_txt(node_id=b"abcd"),
    "upper-id": good_txt(node_id=os.urandom(NODE_ID_BYTES).hex().upper().encode()),
    "port-too-big": good_txt(port=b"99999"),
    "port-negative": good_txt(port=b"-1"),
    "port-zero": good_txt(port=b"0"),
    "protocol-text": good_txt(protocol=b"one"),
    "name-not-utf8": good_txt(name=b"\xff\xfe"),
    "name-empty": good_txt(name=b""),
    "name-control": good_txt(name=b"a\x00b"),
    "fp-upper": good_txt(fingerprint=b"ABCDEF"),
    "fp-no-value": good_txt(fingerprint=None),
}


async def test_malformed_txt_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=disc.__name__)
    infos = {label: raw_info(label, txt) for label, txt in MALFORMED.items()}
    control = raw_info("control", good_txt(name=b"control"))
    async with raw_zeroconf() as raw, Discovery(loopback()) as d:
        for info in [*infos.values(), control]:
            await raw.register(info)
        control_id = bytes.fromhex(control.properties[b"node_id"].decode())  # type: ignore[union-attr]
        await wait_event(d, found(control_id))
        await until(lambda: all(logged(caplog, info.name)() for info in infos.values()), 3.0)
        bad_names = {info.name for info in infos.values()}
        assert not bad_names & {p.service_name for p in d.peers.values()}
        assert d.peers[control_id].name == "control"
        assert d.running
    reasons = {r.getMessage() for r in caplog.records if "malformed" in r.getMessage()}
    assert len([m for m in reasons if any(n in m for n in bad_names)]) == len(MALFORMED)
    assert not other_tasks()


async def test_own_record_and_claims_of_own_id_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=disc.__name__)
    me = announcement("me", 5001)
    spoof = raw_info("spoof", good_txt(node_id=me.node_id.hex().encode()))
    async with (
        Discovery(loopback(), announce=me) as d,
        Discovery(loopback()) as watcher,
        raw_zeroconf() as raw,
    ):
        # The watcher finding `me` proves the record was on the wire where `d` could see it too.
        await wait_event(watcher, found(me.node_id))
        await raw.register(spoof)
        await until(logged(caplog, spoof.name, "this node's id"), 3.0)
        assert me.node_id not in d.peers
        assert me.node_id in watcher.peers
        assert watcher.peers[me.node_id].service_name == d.service_name
    async with contextlib.aclosing(d.events()) as events:
        assert me.node_id not in {e.peer.node_id async for e in events}


async def test_disabled_starts_nothing() -> None:
    before = other_tasks()
    d = Discovery(DiscoveryConfig(enabled=False), announce=announcement("off", 5001))
    async with d:
        assert not d.running
        assert other_tasks() == before
        assert d._aiozc is None
        assert dict(d.peers) == {}
    assert other_tasks() == before
    async with asyncio.timeout(0.5), contextlib.aclosing(d.events()) as events:
        assert [e async for e in events] == []


async def test_exit_leaves_no_task_browser_or_zeroconf() -> None:
    assert not other_tasks()
    # A record without an address keeps a lookup pending, so exit must cancel it.
    unresolvable = raw_info("no-address", good_txt(), address=False)
    async with raw_zeroconf() as raw:
        await raw.register(unresolvable)
        d = Discovery(loopback(resolve_timeout=20.0), announce=announcement("leak-check", 5001))
        async with d:
            aiozc, browser = d._aiozc, d._browser
            assert aiozc is not None
            assert browser is not None
            await until(
                lambda: any(t.get_name().startswith("ccied-discovery-resolve") for t in other_tasks()), 3.0
            )
            t0 = time.perf_counter()
        exit_s = time.perf_counter() - t0
        assert browser.done
        assert aiozc.zeroconf.done
        assert not d.running
        assert not d._tasks
        assert not d._resolving
        assert not [t for t in other_tasks() if "discovery" in t.get_name()]
    assert not other_tasks()
    assert exit_s < 1.5
    with pytest.raises(LocalError):
        await d.__aenter__()


async def test_unusable_interface_is_config_error_and_leaves_nothing() -> None:
    absent = "198.51.100.254"  # TEST-NET-2: must not be an address of this machine, or mDNS could leave it
    if any(ip.ip == absent for adapter in ifaddr.get_adapters() for ip in adapter.ips):
        pytest.skip(f"{absent} is assigned here")
    d = Discovery(DiscoveryConfig(interfaces=[absent]), announce=announcement("nowhere", 5001))
    with pytest.raises(ConfigError, match=absent.replace(".", r"\.")):
        await d.__aenter__()
    assert not d.running
    assert not other_tasks()


async def test_browse_once_finds_announced_node() -> None:
    a = dataclasses.replace(announcement("visible", 5055), host="0.0.0.0")  # announced as 127.0.0.1
    async with Discovery(loopback(), announce=a):
        peers = await browse_once(0.5, LOOPBACK)
    mine = [p for p in peers if p.node_id == a.node_id]
    assert [(p.name, p.port, p.host) for p in mine] == [("visible", 5055, "127.0.0.1")]
    assert not other_tasks()


async def test_event_queue_is_bounded_drops_oldest(caplog: pytest.LogCaptureFixture) -> None:
    d = Discovery(DiscoveryConfig(enabled=False, max_events=2))
    peers = [
        DiscoveredPeer(bytes([i]) * NODE_ID_BYTES, f"p{i}", FP_A, "127.0.0.1", 1, 1, 0.0) for i in range(3)
    ]
    for p in peers:
        d._emit(PeerFound(p))
    assert d._queue.qsize() == 2
    async with d:
        pass
    async with contextlib.aclosing(d.events()) as events:
        assert [e.peer.name async for e in events] == ["p1", "p2"]  # p0 dropped; the end marker is not
    assert any("queue full" in r.getMessage() for r in caplog.records)


# --- validation without the network ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": b"short"},
        {"name": ""},
        {"name": "x" * 64},
        {"name": "tab\there"},
        {"fingerprint": "NOT-HEX"},
        {"fingerprint": ""},
        {"port": 0},
        {"port": 65536},
        {"protocol": -1},
        {"host": "::1"},
        {"host": "localhost"},
        {"host": "224.0.0.251"},
    ],
)
def test_bad_announcement_is_config_error(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "node_id": b"\x01" * NODE_ID_BYTES,
        "name": "n",
        "fingerprint": FP_A,
        "port": 1,
    }
    with pytest.raises(ConfigError):
        ServiceAnnouncement(**{**base, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interfaces": "eth0"},
        {"interfaces": []},
        {"interfaces": ["::1"]},
        {"interfaces": ["not-an-ip"]},
        {"interfaces": ["0.0.0.0"]},
        {"interfaces": ["224.0.0.251"]},
        {"interfaces": ["255.255.255.255"]},
        {"resolve_timeout": 0},
        {"goodbye_timeout": -1},
        {"max_events": 0},
    ],
)
def test_bad_config_is_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DiscoveryConfig(**kwargs)  # type: ignore[arg-type]


def test_config_defaults_to_loopback_and_normalises_lists() -> None:
    assert DiscoveryConfig().interfaces == ("127.0.0.1",)
    assert DiscoveryConfig(interfaces=["127.0.0.1"]).interfaces == ("127.0.0.1",)
    assert DiscoveryConfig(interfaces="all").interfaces == "all"


def test_service_name_is_unique_per_node_and_dns_safe() -> None:
    a, b = os.urandom(NODE_ID_BYTES), os.urandom(NODE_ID_BYTES)
    name = service_name_for(a, "Laptop A (kitchen) ünï")
    label = name.removesuffix("." + SERVICE_TYPE)
    assert label.endswith(a.hex())
    assert len(label.encode()) <= 63
    assert all(c.isalnum() or c == "-" for c in label)
    assert service_name_for(b, "Laptop A (kitchen) ünï") != name
    assert service_name_for(a, "....").startswith("ccied-")


def test_announcement_txt_round_trips_through_parser() -> None:
    a = announcement("round trip", 4242, FP_B, protocol=3)
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        service_name_for(a.node_id, a.name),
        properties=a.txt(),
        parsed_addresses=["127.0.0.1"],
        port=a.port,
    )
    peer = disc._peer_from_info(info, now=12.5)
    assert (peer.node_id, peer.name, peer.fingerprint, peer.port, peer.protocol, peer.last_seen) == (
        a.node_id,
        "round trip",
        FP_B,
        4242,
        3,
        12.5,
    )


@settings(max_examples=300, deadline=None)
@given(text=st.binary(max_size=300))
def test_arbitrary_txt_bytes_parse_or_raise_malformed_only(text: bytes) -> None:
    info = AsyncServiceInfo(
        SERVICE_TYPE, f"fuzz.{SERVICE_TYPE}", properties=text, parsed_addresses=["127.0.0.1"]
    )
    try:
        peer = disc._peer_from_info(info, now=0.0)
    except MalformedError:
        return
    assert len(peer.node_id) == NODE_ID_BYTES
    assert 1 <= peer.port <= 65535


def test_all_interfaces_announce_non_loopback_addresses_first() -> None:
    addrs = disc._interface_addresses("all")  # reads the interface list only; nothing is sent
    assert "127.0.0.1" in addrs
    loopback_at = [i for i, a in enumerate(addrs) if a.startswith("127.")]
    assert loopback_at == list(range(len(addrs) - len(loopback_at), len(addrs)))
    assert disc._interface_addresses(("127.0.0.1",)) == ["127.0.0.1"]
