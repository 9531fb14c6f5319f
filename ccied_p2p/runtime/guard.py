"""The connection guard of a node's server: header and idle timeouts, per-address and total caps.

aiohttp has no header-read timeout: a client that sends half a request head and then one byte a second
holds its socket (a file descriptor) for as long as it likes, and about a thousand of them lock every new
client and peer out under the usual limit of 1 024 open files. The guard wraps each accepted connection
before aiohttp sees it::

    accepted ──► its address at max_per_address, or the node at max_connections?
                   yes: evict the oldest connection of that address (or of any) that is idle or still
                        sending its request head; none: refuse (abort, the descriptor is freed at once)
             ──► HEADER  the request head must be complete within header_timeout of the first byte
             ──► ACTIVE  a handler runs (an HTTP request, a peer's WebSocket, an event stream): no timer
             ──► IDLE    after a response, the next request must start within idle_timeout ──► HEADER

An expired timer aborts the connection. A head is complete when aiohttp calls the application, which the
guard learns through :meth:`ConnectionGuard.middleware`. Every refusal, eviction and timeout is counted by
reason (:attr:`ConnectionGuard.refused`) and logged through a :class:`~ccied_p2p.logs.RateLimitedLog`.

:class:`AcceptStormFilter` thins asyncio's ``socket.accept() out of system resource`` records: while the
process is out of file descriptors, asyncio logs one (with a traceback) for every connection in the
backlog on every retry, megabytes a second.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web

from ccied_p2p.logs import RateLimitedLog

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

__all__ = [
    "ACCEPT_STORM_MESSAGE",
    "REASONS",
    "AcceptStormFilter",
    "ConnectionGuard",
    "GuardLimits",
    "GuardedSite",
    "address_key",
    "descriptor_budget",
    "hold_accept_storm_filter",
    "release_accept_storm_filter",
]

log = logging.getLogger(__name__)

REASONS: Final = ("per_address", "total", "evicted", "header_timeout", "idle_timeout")
ACCEPT_STORM_MESSAGE: Final = "socket.accept() out of system resource"

_HEADER, _ACTIVE, _IDLE = "header", "active", "idle"


@dataclass(frozen=True)
class GuardLimits:
    """Timeouts in seconds and connection caps of one server."""

    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 512
    max_per_address: int = 64


def address_key(peername: Any) -> str:
    """What the per-address cap counts: the IPv4 address, or the IPv6 /64 (one host usually owns a /64)."""
    host = peername[0] if isinstance(peername, tuple | list) and peername else peername
    if not isinstance(host, str):
        return "?"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def descriptor_budget() -> int | None:
    """Half the process's soft open-file limit (at least 16): the most connections a node should hold."""
    try:
        import resource
    except ImportError:  # not on Unix: no limit to read
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return max(16, int(soft) // 2)


class _Conn(asyncio.Protocol):
    """One accepted connection: the guard's state, and aiohttp's handler once admitted."""

    __slots__ = (
        "_factory",
        "_guard",
        "active",
        "admitted",
        "deadline",
        "dirty",
        "inner",
        "key",
        "phase",
        "released",
        "timer",
        "transport",
    )

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.key = "?"
        self.phase = _HEADER
        self.active = 0
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.dirty = False  # bytes arrived while a handler ran (maybe the next request's head)
        self.admitted = False
        self.released = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self._guard._admit(self):
            self.transport.abort()
            return
        # Only now does aiohttp allocate its parser and start its task.
        self.inner = self._factory()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None or self.released:
            return
        if self.phase == _IDLE:
            self._guard._head_started(self)
        elif self.phase == _ACTIVE:
            self.dirty = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._release(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    @property
    def peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


class ConnectionGuard:
    """Admits, times and evicts a server's connections (see the module docstring); one per server.

    ``refused`` (reason -> count) may be a dict the caller exports as metrics; it is updated in place.
    """

    def __init__(
        self,
        limits: GuardLimits,
        refused: dict[str, int] | None = None,
        logger: RateLimitedLog | None = None,
        name: str = "",
    ) -> None:
        self.limits = limits
        self.refused = refused if refused is not None else {}
        self.log = logger if logger is not None else RateLimitedLog(log)
        self.name = name
        self.open = 0
        self.peak = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._count: dict[str, int] = {}
        self._conns: set[_Conn] = set()
        self._evictable: OrderedDict[_Conn, None] = OrderedDict()
        self._evictable_by: dict[str, OrderedDict[_Conn, None]] = {}
        self._closed = False

    def protocol_factory(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """Wrap a server's protocol factory (aiohttp's ``web.Server``) so every connection is guarded."""
        return lambda: _Conn(self, factory)

    def middleware(self) -> Middleware:
        """The aiohttp middleware that tells the guard when a request head is complete and when it is done."""

        @web.middleware
        async def connection_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            transport = request.transport
            conn = transport.get_protocol() if transport is not None else None
            if not isinstance(conn, _Conn) or conn._guard is not self:
                return await handler(request)
            self._started(conn)
            try:
                return await handler(request)
            finally:
                self._finished(conn)

        return connection_guard

    def stats(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "peak": self.peak,
            "refused": {r: self.refused.get(r, 0) for r in REASONS},
            "max_connections": self.limits.max_connections,
            "max_per_address": self.limits.max_per_address,
            "header_timeout_s": self.limits.header_timeout,
            "idle_timeout_s": self.limits.idle_timeout,
        }

    def close(self) -> None:
        """Abort every connection still held (after the server stopped) and drop the timers; refuse any
        connection accepted after this (one already in asyncio's accept path when the server closed would
        otherwise reach a stopped aiohttp server and leak its socket)."""
        self._closed = True
        for conn in list(self._conns):
            self._release(conn)
            if conn.transport is not None:
                conn.transport.abort()

    # ------------------------------------------------------------------ state changes

    def _admit(self, conn: _Conn) -> bool:
        if self._closed:
            return False
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        assert conn.transport is not None
        key = conn.key = address_key(conn.transport.get_extra_info("peername"))
        lim = self.limits
        if self._count.get(key, 0) >= lim.max_per_address and not self._evict(self._evictable_by.get(key)):
            self._refuse(conn, "per_address", f"{lim.max_per_address} connections from {key} already open")
            return False
        if self.open >= lim.max_connections and not self._evict(self._evictable):
            self._refuse(conn, "total", f"{lim.max_connections} connections already open, all busy")
            return False
        conn.admitted = True
        self._conns.add(conn)
        self.open += 1
        self.peak = max(self.peak, self.open)
        self._count[key] = self._count.get(key, 0) + 1
        conn.phase = _HEADER
        self._mark_evictable(conn)
        self._arm(conn, self._loop.time() + lim.header_timeout)
        return True

    def _head_started(self, conn: _Conn) -> None:
        assert self._loop is not None
        conn.phase = _HEADER
        self._arm(conn, min(conn.deadline, self._loop.time() + self.limits.header_timeout))

    def _started(self, conn: _Conn) -> None:
        conn.active += 1
        conn.phase = _ACTIVE
        conn.dirty = False
        self._unmark_evictable(conn)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _finished(self, conn: _Conn) -> None:
        conn.active -= 1
        if conn.active > 0 or conn.released or self._loop is None:
            return
        now = self._loop.time()
        if conn.dirty:  # part of the next request already arrived: its head is on the clock
            conn.phase, deadline = _HEADER, now + self.limits.header_timeout
        else:
            conn.phase, deadline = _IDLE, now + self.limits.idle_timeout
        self._mark_evictable(conn)
        self._arm(conn, deadline)

    def _release(self, conn: _Conn) -> None:
        if not conn.admitted or conn.released:
            return
        conn.released = True
        self._conns.discard(conn)
        self.open -= 1
        left = self._count.get(conn.key, 0) - 1
        if left > 0:
            self._count[conn.key] = left
        else:
            self._count.pop(conn.key, None)
        self._unmark_evictable(conn)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    # ------------------------------------------------------------------ timers and eviction

    def _arm(self, conn: _Conn, deadline: float) -> None:
        assert self._loop is not None
        conn.deadline = deadline
        if conn.timer is not None:
            if conn.timer.when() <= deadline:
                return  # fires first and re-arms for the later deadline
            conn.timer.cancel()
        conn.timer = self._loop.call_at(deadline, self._expire, conn)

    def _expire(self, conn: _Conn) -> None:
        conn.timer = None
        if conn.released or conn.phase == _ACTIVE or self._loop is None:
            return
        if self._loop.time() < conn.deadline:
            conn.timer = self._loop.call_at(conn.deadline, self._expire, conn)
            return
        if conn.phase == _HEADER:
            self._close(
                conn, "header_timeout", f"no complete request head within {self.limits.header_timeout:g} s"
            )
        else:
            self._close(conn, "idle_timeout", f"idle for {self.limits.idle_timeout:g} s")

    def _mark_evictable(self, conn: _Conn) -> None:
        self._evictable[conn] = None
        self._evictable_by.setdefault(conn.key, OrderedDict())[conn] = None

    def _unmark_evictable(self, conn: _Conn) -> None:
        self._evictable.pop(conn, None)
        by = self._evictable_by.get(conn.key)
        if by is not None:
            by.pop(conn, None)
            if not by:
                del self._evictable_by[conn.key]

    def _evict(self, candidates: OrderedDict[_Conn, None] | None) -> bool:
        """Close the oldest idle or head-sending connection among ``candidates``; False if there is none."""
        if not candidates:
            return False
        victim = next(iter(candidates))
        self._close(victim, "evicted", f"{victim.phase} connection closed to make room")
        return True

    def _close(self, conn: _Conn, reason: str, why: str) -> None:
        peer = conn.peer
        self._release(conn)
        self._count_refusal(reason, peer, why)
        if conn.transport is not None:
            conn.transport.abort()

    def _refuse(self, conn: _Conn, reason: str, why: str) -> None:
        self._count_refusal(reason, conn.peer, why)

    def _count_refusal(self, reason: str, peer: str, why: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.log.warning(
            "connection", "[%s] closed a connection from %s (%s): %s", self.name, peer, reason, why
        )


class GuardedSite(web.BaseSite):
    """A TCP site like aiohttp's ``TCPSite`` whose connections pass through a :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, backlog: int = 128
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def sockets(self) -> list[socket.socket]:
        server = self._server
        return list(getattr(server, "sockets", None) or [])

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocol_factory(server), self._host, self._port, backlog=self._backlog
        )


class AcceptStormFilter(logging.Filter):
    """Let a few of asyncio's ``socket.accept() out of system resource`` records through per window."""

    def __init__(self, limiter: RateLimitedLog) -> None:
        super().__init__()
        self.limiter = limiter
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(ACCEPT_STORM_MESSAGE)):
            return True
        self.seen += 1
        return self.limiter.allow(ACCEPT_STORM_MESSAGE)


_storm: AcceptStormFilter | None = None
_storm_holders = 0


def hold_accept_storm_filter() -> AcceptStormFilter:
    """Install the filter on the ``asyncio`` logger (once per process, counted; see the release)."""
    global _storm, _storm_holders
    if _storm is None:
        _storm = AcceptStormFilter(RateLimitedLog(log, burst=3, window=10.0))
        logging.getLogger("asyncio").addFilter(_storm)
    _storm_holders += 1
    return _storm


def release_accept_storm_filter() -> None:
    """Remove the filter when its last holder (node) lets go."""
    global _storm, _storm_holders
    if _storm_holders == 0:
        return
    _storm_holders -= 1
    if _storm_holders == 0 and _storm is not None:
        logging.getLogger("asyncio").removeFilter(_storm)
        _storm = None
