"""A user-space link emulator: an asyncio TCP relay with rate, one-way delay, jitter, loss and partitions.

No root needed. A :class:`Relay` listens on one address and forwards every connection to one target; each
direction of each connection is shaped by a :class:`~ccied_p2p.testing.linkmodel.Direction` (token bucket,
then a delay schedule; the model and its honest treatment of loss on a byte stream are described in
:mod:`ccied_p2p.testing.linkmodel`). Relays that belong to one :class:`Network` share it: the network knows
which source IP is which endpoint (so a per-pair spec and partitions apply), and all connections from ``a`` to
``b`` share one token bucket per direction, as they would share one radio link.

A partition stops forwarding across the cut at once (bytes already read wait in the relay, nothing more is
read, so TCP back-pressure builds as on a black-holed path) and new connections across it are refused with a
TCP reset; :meth:`Network.heal` resumes the waiting bytes. ``partition(..., reset=True)`` resets the
existing connections across the cut too.

``Relay(..., record=True)`` also keeps every byte it forwards, per connection and direction
(:attr:`Relay.captures`): what a passive eavesdropper on the link would see.

Accuracy (``tests/test_relay.py``, 2 noisy cores): a 10 Mbit/s, 20 ms link measured 1.2492-1.2503 MB/s
over 2 MB (configured 1.25) and a median one-way delay of 20.7-21.0 ms. The excess is the event loop's
timer granularity (epoll rounds its timeout up to the millisecond) plus ~0.2 ms of loopback hops, so delays
under a few milliseconds are approximate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ccied_p2p.errors import ConfigError
from ccied_p2p.testing.linkmodel import Direction, Label, LinkSpec, TokenBucket, Topology

__all__ = ["Capture", "Network", "Relay", "RelayStats"]

log = logging.getLogger(__name__)

_CHUNK = 64 << 10
_EARLY = 0.0005  # deliver a segment this early rather than sleep again for a fraction of a millisecond


class _Reset(Exception):
    """The link model chose to reset this connection."""


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) rather than a FIN, as a dropped connection looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Network:
    """Endpoints (by the IP their connections come from), link specs per directed pair, partitions.

    ``forward_from``: the address a relay uses when it forwards an endpoint's connection, so the receiver
    sees the address that endpoint advertises (its own ingress relay) rather than the relay's.
    """

    def __init__(self, default: LinkSpec | None = None, *, seed: int = 0) -> None:
        self.topology = Topology(default)
        self._rng = random.Random(seed)
        self._by_ip: dict[str, Label] = {}
        self._forward_from: dict[Label, str] = {}
        self._buckets: dict[tuple[Label, Label], TokenBucket] = {}
        self._relays: list[Relay] = []
        self._changed: asyncio.Event | None = None

    def add_endpoint(self, label: Label, source_ip: str, forward_from: str | None = None) -> None:
        """Connections from ``source_ip`` are ``label``'s; forward them from ``forward_from`` (if given)."""
        self._by_ip[source_ip] = label
        if forward_from is not None:
            self._forward_from[label] = forward_from

    def label_of(self, ip: str) -> Label | None:
        return self._by_ip.get(ip)

    def forward_from(self, label: Label | None) -> str | None:
        return None if label is None else self._forward_from.get(label)

    def set_link(self, a: Label, b: Label, spec: LinkSpec, *, both: bool = True) -> None:
        """Bytes from ``a`` to ``b`` (and back, unless ``both=False``) follow ``spec`` on connections opened from
        now on (an open connection keeps the model it started with)."""
        self.topology.set_link(a, b, spec, both=both)
        self._buckets.pop((a, b), None)
        if both:
            self._buckets.pop((b, a), None)

    def direction(self, a: Label | None, b: Label | None) -> Direction:
        """A fresh direction model for one connection's bytes from ``a`` to ``b``."""
        spec = self.topology.spec(a, b)
        bucket = None
        if spec.rate is not None and a is not None and b is not None:
            bucket = self._buckets.get((a, b))
            if bucket is None or bucket.rate != spec.rate:
                bucket = self._buckets[(a, b)] = TokenBucket(spec.rate, spec.bucket_depth)
        return Direction(spec, random.Random(self._rng.getrandbits(64)), bucket)

    def blocked(self, a: Label | None, b: Label | None) -> bool:
        return self.topology.blocked(a, b)

    def partition(self, *groups: Iterable[Label], reset: bool = False) -> None:
        """Cut the groups off from each other (see the module docstring); ``reset`` also kills connections."""
        self.topology.partition(groups)
        self._notify()
        if reset:
            for relay in list(self._relays):
                relay.reset_blocked()

    def heal(self) -> None:
        """Remove every partition; bytes held at the cut flow again."""
        self.topology.heal()
        self._notify()

    async def changed(self) -> None:
        """Wait for the next partition or heal."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


@dataclass
class RelayStats:
    connections: int = 0
    refused: int = 0
    resets: int = 0
    bytes_up: int = 0  # client to target
    bytes_down: int = 0  # target to client


@dataclass
class Capture:
    """The bytes one relayed connection carried, in the order the relay forwarded them."""

    source: Label | None
    up: bytearray  # client to target
    down: bytearray  # target to client


class _Pipe:
    """One direction of one connection: read, plan with the link model, wait, write in order."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        model: Direction,
        network: Network,
        src: Label | None,
        dst: Label | None,
        count: Callable[[bytes], None],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.model = model
        self.network = network
        self.src, self.dst = src, dst
        self._count = count
        self._queue: deque[tuple[float, bytes | None]] = deque()
        self._queued = 0
        self._eof = False
        self._more = asyncio.Event()
        self._room = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read())
            group.create_task(self._write())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.model.spec.queue_bytes
        while True:
            while self._queued >= limit:
                self._room.clear()
                await self._room.wait()
            data = await self.reader.read(_CHUNK)
            if not data:
                break
            plan = self.model.plan(len(data), loop.time())
            view = memoryview(data)
            offset = 0
            for at, size in plan.segments:
                self._queue.append((at, bytes(view[offset : offset + size])))
                offset += size
                self._queued += size
            if plan.reset:
                self._queue.append((plan.segments[-1][0], None))
                self._more.set()
                return
            self._more.set()
        self._eof = True
        self._more.set()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            if not queue:
                if self._eof:
                    if self.writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            self.writer.write_eof()
                    return
                self._more.clear()
                await self._more.wait()
                continue
            wait = queue[0][0] - loop.time()
            if wait > _EARLY:
                await asyncio.sleep(wait - _EARLY)  # epoll rounds its timeout up to the next millisecond
                continue
            while self.network.blocked(self.src, self.dst):
                await self.network.changed()
            now = loop.time() + _EARLY
            chunks: list[bytes] = []
            reset = False
            while queue and queue[0][0] <= now:
                data = queue.popleft()[1]
                if data is None:
                    reset = True
                    break
                chunks.append(data)
            payload = b"".join(chunks)
            if payload:
                self._queued -= len(payload)
                self._room.set()
                self.writer.write(payload)
                self._count(payload)
                await self.writer.drain()
            if reset:
                raise _Reset


class Relay:
    """Listen on ``(host, port)``, forward each connection to ``target`` through the link model.

        ``owner``: the endpoint behind this relay (the destination of what clients send); with ``network``,
        the source endpoint is the one registered for the client's IP. Without a network the relay uses
        ``spec`` for both directions. ``socket_factory`` makes its sockets (e.g. inside a network namespace, see
    :mod:`ccied_p2p.testing.netns`). ``record``: keep the forwarded bytes in :attr:`captures` (unbounded: for
    tests). ``async with Relay(...) as relay: relay.port``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        target: tuple[str, int],
        *,
        network: Network | None = None,
        owner: Label | None = None,
        spec: LinkSpec | None = None,
        name: str = "relay",
        socket_factory: Callable[[], socket.socket] | None = None,
        record: bool = False,
    ) -> None:
        if network is not None and spec is not None:
            raise ConfigError("give a Relay either a network or a spec, not both")
        self.host = host
        self.port = port
        self.target = target
        self.network = network if network is not None else Network(spec)
        self.owner = owner
        self.name = name
        self._socket = socket_factory
        self.stats = RelayStats()
        self.record = record
        self.captures: list[Capture] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: set[asyncio.Task[Any]] = set()
        self._conns: dict[asyncio.Task[None], tuple[Label | None, list[asyncio.StreamWriter]]] = {}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind and start accepting."""
        if self._socket is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        else:
            sock = self._socket()
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.port))
                sock.listen(128)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            self._server = await asyncio.start_server(self._accept, sock=sock)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.network._relays.append(self)

    async def close(self) -> None:
        """Stop accepting, reset every connection, wait for every task; idempotent."""
        if self.network is not None and self in self.network._relays:
            self.network._relays.remove(self)
        if self._server is not None:
            self._server.close()
        for _, writers in list(self._conns.values()):
            for writer in writers:
                writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._accepting, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def reset_blocked(self) -> None:
        """Reset every connection whose client is cut off from this relay's owner."""
        for src, writers in list(self._conns.values()):
            if self.network.blocked(src, self.owner) or self.network.blocked(self.owner, src):
                self.stats.resets += 1
                for writer in writers:
                    _rst(writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio (3.11) logs an error if the task it made for this callback is cancelled, so the work runs
        # in a task this relay owns and cancels; this one only waits for it (and close() waits for both).
        outer = asyncio.current_task()
        assert outer is not None
        self._accepting.add(outer)
        task: asyncio.Task[None] = asyncio.ensure_future(self._relay(reader, writer))
        self._tasks.add(task)
        try:
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.warning("%s: connection failed", self.name, exc_info=task.exception())
        finally:
            self._tasks.discard(task)
            self._conns.pop(task, None)
            self._accepting.discard(outer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        net = self.network
        peer = writer.get_extra_info("peername")
        src = net.label_of(str(peer[0])) if peer else None
        dst = self.owner
        if net.blocked(src, dst) or net.blocked(dst, src):
            self.stats.refused += 1
            _rst(writer)
            return
        bind = net.forward_from(src)
        try:
            up_reader, up_writer = await self._connect(bind)
        except OSError as exc:
            log.debug("%s: target %s unreachable: %s", self.name, self.target, exc)
            self.stats.refused += 1
            _rst(writer)
            return
        self.stats.connections += 1
        self._conns[task] = (src, [writer, up_writer])

        capture = Capture(src, bytearray(), bytearray())
        if self.record:
            self.captures.append(capture)

        def up(data: bytes) -> None:
            self.stats.bytes_up += len(data)
            if self.record:
                capture.up += data

        def down(data: bytes) -> None:
            self.stats.bytes_down += len(data)
            if self.record:
                capture.down += data

        pipes = (
            _Pipe(reader, up_writer, net.direction(src, dst), net, src, dst, up),
            _Pipe(up_reader, writer, net.direction(dst, src), net, dst, src, down),
        )
        try:
            async with asyncio.TaskGroup() as group:
                for pipe in pipes:
                    group.create_task(pipe.run())
        except* _Reset:
            self.stats.resets += 1
            _rst(writer)
            _rst(up_writer)
        except* (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()
            up_writer.transport.abort()
        finally:
            for w in (writer, up_writer):
                w.close()
            for w in (writer, up_writer):
                with contextlib.suppress(OSError):
                    await w.wait_closed()

    async def _connect(self, bind: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._socket is None:
            return await asyncio.open_connection(*self.target, local_addr=(bind, 0) if bind else None)
        sock = self._socket()
        try:
            if bind:
                sock.bind((bind, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.target)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    def __repr__(self) -> str:
        return f"Relay({self.name}, {self.address} -> {self.target[0]}:{self.target[1]})"
