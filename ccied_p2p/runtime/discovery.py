"""mDNS discovery: announce this node as ``_ccied._tcp.local.`` and follow the other nodes that do.

One :class:`Discovery` per node, an async context manager over :mod:`zeroconf.asyncio`::

    async with Discovery(DiscoveryConfig(), announce=ServiceAnnouncement(...)) as d:
        async for event in d:          # PeerFound | PeerUpdated | PeerRemoved, until the context closes
            ...
        d.peers                        # node id -> DiscoveredPeer, kept current

The TXT record carries ``node_id`` (hex), ``name``, ``fingerprint``, ``port`` and ``protocol``; the instance
name is derived from the node id, so it is unique per node. Records that do not parse are logged and
ignored. Interfaces default to loopback only (``("127.0.0.1",)``), the safe choice for tests and one-machine
runs; ``interfaces="all"`` announces on every IPv4 interface for a real LAN. mDNS is unauthenticated and
does not notice a crashed peer (no goodbye): trust comes from the transport handshake, liveness from gossip.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

import ifaddr
from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ccied_p2p.codec.wire import FORMAT_VERSION, NODE_ID_BYTES
from ccied_p2p.errors import ConfigError, LocalError, MalformedError

__all__ = [
    "LOOPBACK",
    "SERVICE_TYPE",
    "TXT_KEYS",
    "DiscoveredPeer",
    "Discovery",
    "DiscoveryConfig",
    "DiscoveryEvent",
    "PeerFound",
    "PeerRemoved",
    "PeerUpdated",
    "ServiceAnnouncement",
    "browse_once",
    "service_name_for",
]

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_ccied._tcp.local."
TXT_KEYS: Final = ("node_id", "name", "fingerprint", "port", "protocol")
LOOPBACK: Final = ("127.0.0.1",)
MAX_NAME_CHARS: Final = 63
MAX_FINGERPRINT_CHARS: Final = 128
_FINGERPRINT_RE: Final = re.compile(r"[0-9a-f]+")
_DECIMAL_RE: Final = re.compile(r"[0-9]{1,5}")
_LABEL_UNSAFE_RE: Final = re.compile(r"[^A-Za-z0-9-]+")
_MAX_REPORTED: Final = 256


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """How discovery runs; the defaults never send a packet off this machine."""

    enabled: bool = True
    """False: start nothing (networks that use static seeds only)."""
    interfaces: str | Sequence[str] = LOOPBACK
    """IPv4 addresses of the interfaces to use, or ``"all"`` for every interface (a real LAN)."""
    resolve_timeout: float = 1.0
    """Seconds one address lookup (SRV, TXT, A) may take before the record is skipped."""
    probe: bool = False
    """Probe for name conflicts before announcing (RFC 6762 §8.1), about 1.2 s. Off by default: the
    instance and host names embed a fresh 128-bit node id, so they cannot collide by accident."""
    goodbye_timeout: float = 1.0
    """Seconds to spend sending goodbye packets on exit."""
    max_events: int = 1024
    """Events kept for a slow consumer; beyond this the oldest is dropped (and logged)."""

    def __post_init__(self) -> None:
        if isinstance(self.interfaces, str):
            if self.interfaces != "all":
                raise ConfigError(
                    f"interfaces must be 'all' or a list of IPv4 addresses, got {self.interfaces!r}"
                )
        else:
            addrs = tuple(self.interfaces)
            if not addrs:
                raise ConfigError("interfaces is empty; use enabled=False to turn discovery off")
            for addr in addrs:
                ip = _check_ipv4(addr, "interface address")
                # 0.0.0.0 would let the kernel pick the default-route interface: the uplink, silently.
                if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
                    raise ConfigError(
                        f"interface address must be one interface's unicast address, got {addr!r}"
                    )
            object.__setattr__(self, "interfaces", addrs)
        for field_name in ("resolve_timeout", "goodbye_timeout"):
            value = getattr(self, field_name)
            if not 0 < value <= 60:
                raise ConfigError(f"{field_name} must be in (0, 60] seconds, got {value!r}")
        if self.max_events < 1:
            raise ConfigError(f"max_events must be >= 1, got {self.max_events}")


@dataclass(frozen=True, slots=True)
class ServiceAnnouncement:
    """What this node tells the network; ``host`` ``""`` or ``"0.0.0.0"``: the configured interfaces' addresses."""

    node_id: bytes
    name: str
    fingerprint: str
    port: int
    protocol: int = FORMAT_VERSION
    host: str = ""

    def __post_init__(self) -> None:
        if len(self.node_id) != NODE_ID_BYTES:
            raise ConfigError(f"node_id must be {NODE_ID_BYTES} bytes, got {len(self.node_id)}")
        try:
            _check_name(self.name)
            _check_fingerprint(self.fingerprint)
        except MalformedError as exc:
            raise ConfigError(str(exc)) from None
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if not 0 <= self.protocol <= 65535:
            raise ConfigError(f"protocol must be in 0..65535, got {self.protocol}")
        if self.host:
            ip = _check_ipv4(self.host, "host")
            if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
                raise ConfigError(f"host must be a unicast address, got {self.host!r}")

    def txt(self) -> dict[str, str]:
        """The TXT record, key by key."""
        return {
            "node_id": self.node_id.hex(),
            "name": self.name,
            "fingerprint": self.fingerprint,
            "port": str(self.port),
            "protocol": str(self.protocol),
        }


@dataclass(frozen=True, slots=True)
class DiscoveredPeer:
    """Another node as its mDNS record describes it; ``last_seen`` is on the Discovery's clock."""

    node_id: bytes
    name: str
    fingerprint: str
    host: str
    port: int
    protocol: int
    last_seen: float
    addresses: tuple[str, ...] = ()
    service_name: str = ""


@dataclass(frozen=True, slots=True)
class PeerFound:
    """A node appeared."""

    peer: DiscoveredPeer


@dataclass(frozen=True, slots=True)
class PeerUpdated:
    """A known node announced something new (address, port, fingerprint, ...)."""

    peer: DiscoveredPeer
    previous: DiscoveredPeer


@dataclass(frozen=True, slots=True)
class PeerRemoved:
    """A node said goodbye (or its record expired)."""

    peer: DiscoveredPeer


DiscoveryEvent = PeerFound | PeerUpdated | PeerRemoved


def service_name_for(node_id: bytes, name: str) -> str:
    """The mDNS instance name of a node: a readable prefix of its name, then its full node id in hex."""
    prefix = _LABEL_UNSAFE_RE.sub("-", name)[:24].strip("-") or "ccied"
    return f"{prefix}-{node_id.hex()}.{SERVICE_TYPE}"


class Discovery:
    """Announces one node (optional) and follows every other ``_ccied._tcp`` node; see the module docstring."""

    def __init__(
        self,
        config: DiscoveryConfig | None = None,
        *,
        announce: ServiceAnnouncement | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config if config is not None else DiscoveryConfig()
        self._announcement = announce
        self._clock = clock
        self._own_name = service_name_for(announce.node_id, announce.name).lower() if announce else None
        self._state = "new"
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._peers: dict[bytes, DiscoveredPeer] = {}
        self._id_by_name: dict[str, bytes] = {}
        self._reported: dict[str, bytes] = {}
        self._queue: asyncio.Queue[DiscoveryEvent | None] = asyncio.Queue()

    @property
    def config(self) -> DiscoveryConfig:
        return self._config

    @property
    def announcement(self) -> ServiceAnnouncement | None:
        return self._announcement

    @property
    def service_name(self) -> str | None:
        """This node's mDNS instance name, if it announces."""
        a = self._announcement
        return service_name_for(a.node_id, a.name) if a else None

    @property
    def peers(self) -> Mapping[bytes, DiscoveredPeer]:
        """Live read-only view: node id -> the latest record of every other node seen."""
        return MappingProxyType(self._peers)

    @property
    def running(self) -> bool:
        """True between entering and leaving the context, with zeroconf started."""
        return self._state == "open" and self._aiozc is not None

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LocalError("a Discovery can be entered once")
        self._state = "open"
        if not self._config.enabled:
            return self
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    def __aiter__(self) -> AsyncGenerator[DiscoveryEvent, None]:
        return self.events()

    async def events(self) -> AsyncGenerator[DiscoveryEvent, None]:
        """Events in order of arrival, for one consumer; ends once the context has closed and the backlog is read."""
        while True:
            event = await self._queue.get()
            if event is None:
                self._queue.put_nowait(None)  # let every other iterator end too
                return
            yield event

    async def update(self, announcement: ServiceAnnouncement) -> None:
        """Re-announce this node with new TXT values (same node id and name)."""
        old = self._announcement
        if old is None or self._aiozc is None or self._info is None:
            raise LocalError("update() needs an open Discovery that announces")
        if (announcement.node_id, announcement.name) != (old.node_id, old.name):
            raise LocalError("update() cannot change the node id or name")
        info = self._service_info(announcement)
        self._hold(await self._aiozc.async_update_service(info))
        self._announcement, self._info = announcement, info

    async def _start(self) -> None:
        cfg = self._config
        interfaces: InterfaceChoice | list[str] = (
            InterfaceChoice.All if cfg.interfaces == "all" else list(cfg.interfaces)
        )
        if cfg.interfaces != "all":
            # zeroconf leaks its listening socket when it fails on an absent address, so check first.
            local = set(_local_ipv4_addresses())
            missing = [a for a in cfg.interfaces if a not in local]
            if missing:
                raise ConfigError(
                    f"interfaces {missing!r} are not addresses of this machine: {sorted(local)}"
                )
        try:
            self._aiozc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        except OSError as exc:
            raise ConfigError(f"cannot open mDNS sockets on interfaces {cfg.interfaces!r}: {exc}") from exc
        # Browse first so peers answer while this node's registration is being sent. QM, not QU: with
        # several responders on one host sharing port 5353, a unicast answer lands in a random one's socket.
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf,
            [SERVICE_TYPE],
            handlers=[self._on_state_change],
            question_type=DNSQuestionType.QM,
        )
        if self._announcement is not None:
            info = self._service_info(self._announcement)
            try:
                announcing = await self._aiozc.async_register_service(
                    info, cooperating_responders=not cfg.probe
                )
            except NonUniqueNameException:
                raise ConfigError(f"another responder already announces {info.name}") from None
            self._info = info
            self._hold(announcing)

    async def _stop(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            pending = list(self._tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._aiozc is not None and self._info is not None:
                goodbye = await self._aiozc.async_unregister_service(self._info)
                try:
                    await asyncio.wait_for(goodbye, self._config.goodbye_timeout)
                except TimeoutError:
                    log.warning(
                        "mDNS goodbye for %s took longer than %.1f s",
                        self._info.name,
                        self._config.goodbye_timeout,
                    )
        finally:
            self._info = None
            self._browser = None
            if self._aiozc is not None:
                aiozc, self._aiozc = self._aiozc, None
                await aiozc.async_close()
            self._queue.put_nowait(None)  # the end marker, never dropped

    def _service_info(self, a: ServiceAnnouncement) -> AsyncServiceInfo:
        # A server bound to 0.0.0.0 is reachable on every configured interface: announce those.
        hosts = [a.host] if a.host not in ("", "0.0.0.0") else _interface_addresses(self._config.interfaces)
        return AsyncServiceInfo(
            SERVICE_TYPE,
            service_name_for(a.node_id, a.name),
            port=a.port,
            properties=a.txt(),
            server=f"ccied-{a.node_id.hex()}.local.",
            parsed_addresses=hosts,
        )

    def _hold(self, awaitable: Awaitable[object]) -> None:
        fut = asyncio.ensure_future(awaitable)
        self._tasks.add(fut)
        fut.add_done_callback(self._task_done)

    def _task_done(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.discard(fut)
        for key, task in list(self._resolving.items()):
            if task is fut:
                del self._resolving[key]
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            log.error("mDNS task failed", exc_info=exc)

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if self._state != "open" or name.lower() == self._own_name:
            return
        key = name.lower()
        running = self._resolving.pop(key, None)
        if running is not None:
            running.cancel()
        if state_change is ServiceStateChange.Removed:
            self._reported.pop(key, None)
            self._drop(key)
            return
        task = asyncio.create_task(self._resolve(zeroconf, name), name=f"ccied-discovery-resolve {name}")
        self._resolving[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        timeout_ms = self._config.resolve_timeout * 1000
        if not await info.async_request(zeroconf, timeout_ms, question_type=DNSQuestionType.QM):
            log.debug("mDNS record %s did not resolve within %.1f s", name, self._config.resolve_timeout)
            return
        try:
            peer = _peer_from_info(info, self._clock())
        except MalformedError as exc:
            self._report(name, info.text, exc)
            return
        self._upsert(name.lower(), peer)

    def _report(self, name: str, text: bytes, exc: MalformedError) -> None:
        key = name.lower()
        if self._reported.get(key) == text:
            return
        if len(self._reported) >= _MAX_REPORTED:
            self._reported.clear()
        self._reported[key] = text
        log.warning("ignoring malformed mDNS record %s: %s", name, exc)

    def _upsert(self, key: str, peer: DiscoveredPeer) -> None:
        own = self._announcement
        if own is not None and peer.node_id == own.node_id:
            self._report(key, b"own-id", MalformedError("it claims this node's id"))
            return
        owner = next((n for n, i in self._id_by_name.items() if i == peer.node_id and n != key), None)
        if owner is not None:
            self._report(key, b"dup-id", MalformedError(f"node id {peer.node_id.hex()} is already {owner}"))
            return
        known = self._id_by_name.get(key)
        if known is not None and known != peer.node_id:
            self._drop(key)
        previous = self._peers.get(peer.node_id)
        self._peers[peer.node_id] = peer
        self._id_by_name[key] = peer.node_id
        if previous is None:
            log.info("found peer %s (%s) at %s:%d", peer.name, peer.node_id.hex()[:8], peer.host, peer.port)
            self._emit(PeerFound(peer))
        elif dataclasses.replace(previous, last_seen=peer.last_seen) != peer:
            self._emit(PeerUpdated(peer, previous))

    def _drop(self, key: str) -> None:
        node_id = self._id_by_name.pop(key, None)
        peer = self._peers.pop(node_id, None) if node_id is not None else None
        if peer is not None:
            log.info("peer %s (%s) left", peer.name, peer.node_id.hex()[:8])
            self._emit(PeerRemoved(peer))

    def _emit(self, event: DiscoveryEvent) -> None:
        if self._queue.qsize() >= self._config.max_events:
            dropped = self._queue.get_nowait()
            log.warning("discovery event queue full; dropped %r", dropped)
        self._queue.put_nowait(event)


async def browse_once(
    duration: float = 1.5, interfaces: str | Sequence[str] = LOOPBACK, settle: float | None = None
) -> list[DiscoveredPeer]:
    """Listen for up to ``duration`` seconds without announcing; every node found, sorted by name.

    With ``settle``, stop ``settle`` seconds after the first node answers (those who answer the same query
    arrive together): enough for callers that learn the rest of the cluster from any one member, such as
    ``ccied-p2p status``. Responders answer a QM query at most once a second per record (RFC 6762 §6), so a
    browse that follows another within a second can wait about 1.1 s: keep ``duration`` above that.
    """
    if not 0 < duration <= 600:
        raise ConfigError(f"duration must be in (0, 600] seconds, got {duration!r}")
    config = DiscoveryConfig(interfaces=interfaces, resolve_timeout=min(1.0, duration))
    async with Discovery(config) as d:
        if settle is None:
            await asyncio.sleep(duration)
        else:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + duration
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    async for event in d.events():
                        if isinstance(event, PeerFound):
                            break
            if d.peers:
                await asyncio.sleep(max(0.0, min(settle, deadline - loop.time())))
        return sorted(d.peers.values(), key=lambda p: (p.name, p.node_id))


def _peer_from_info(info: AsyncServiceInfo, now: float) -> DiscoveredPeer:
    props = info.properties
    txt: dict[str, str] = {}
    for key in TXT_KEYS:
        raw = props.get(key.encode())
        if raw is None:
            raise MalformedError(f"TXT key {key!r} missing or without a value")
        try:
            txt[key] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedError(f"TXT key {key!r} is not UTF-8") from None
    node_hex = txt["node_id"]
    if len(node_hex) != 2 * NODE_ID_BYTES or not _FINGERPRINT_RE.fullmatch(node_hex):
        raise MalformedError(
            f"node_id must be {2 * NODE_ID_BYTES} lowercase hex digits, got {node_hex[:40]!r}"
        )
    _check_name(txt["name"])
    _check_fingerprint(txt["fingerprint"])
    port = _decimal(txt["port"], "port", 1)
    protocol = _decimal(txt["protocol"], "protocol", 0)
    addresses = tuple(info.parsed_addresses(IPVersion.V4Only))
    if not addresses:
        raise MalformedError("no IPv4 address")
    return DiscoveredPeer(
        node_id=bytes.fromhex(node_hex),
        name=txt["name"],
        fingerprint=txt["fingerprint"],
        host=addresses[0],
        port=port,
        protocol=protocol,
        last_seen=now,
        addresses=addresses,
        service_name=info.name,
    )


def _decimal(text: str, what: str, low: int) -> int:
    if not _DECIMAL_RE.fullmatch(text) or not low <= int(text) <= 65535:
        raise MalformedError(f"{what} must be a decimal in {low}..65535, got {text[:20]!r}")
    return int(text)


def _check_name(name: str) -> None:
    if not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise MalformedError(f"name must be 1..{MAX_NAME_CHARS} printable characters, got {name[:80]!r}")


def _check_fingerprint(fp: str) -> None:
    if not 1 <= len(fp) <= MAX_FINGERPRINT_CHARS or not _FINGERPRINT_RE.fullmatch(fp):
        raise MalformedError(
            f"fingerprint must be 1..{MAX_FINGERPRINT_CHARS} lowercase hex digits, got {fp[:80]!r}"
        )


def _check_ipv4(addr: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(addr)
    except ValueError:
        raise ConfigError(f"{what} must be an IPv4 address, got {addr!r}") from None


def _interface_addresses(interfaces: str | Sequence[str]) -> list[str]:
    if interfaces != "all":
        return list(interfaces)
    found = _local_ipv4_addresses()
    if not found:
        raise ConfigError("no IPv4 interface to announce on")
    # Peers on other machines try the first address first, so loopback goes last.
    return sorted(found, key=lambda a: ipaddress.IPv4Address(a).is_loopback)


def _local_ipv4_addresses() -> list[str]:
    return [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if ip.is_IPv4 and isinstance(ip.ip, str)
    ]
