"""The link mesh of a node: one authenticated link per peer, dialled or accepted, and what membership sends.

Inbound WebSockets (:meth:`Mesh.handle_ws`) and outbound dials (:meth:`Mesh.dial`) both end in
:meth:`Mesh.adopt`, which keeps one link per peer (the one dialled by the lower node id) and reads it until
it closes. Messages to a member without a link wait in a short outbox while a dial runs (:meth:`send_all`).
mDNS sightings (:meth:`watch_discovery`) and membership events (:meth:`drain_events`) open and close links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from ccied_p2p.codec.auth import Role, new_nonce
from ccied_p2p.codec.messages import (
    CacheSync,
    ErrorMessage,
    Hello,
    MemberState,
    MemberUpdate,
    Message,
)
from ccied_p2p.codec.wire import encode_message
from ccied_p2p.errors import AuthenticationError, CodecError, EncodeError, RemoteError
from ccied_p2p.gossip.membership import MemberEventKind
from ccied_p2p.runtime.transport import PROTOCOL_VERSION, WS_PATH, Link, LinkClosedError, handshake

if TYPE_CHECKING:
    from ccied_p2p.runtime.discovery import Discovery
    from ccied_p2p.runtime.node import Node

__all__ = ["OUTBOX_LIMIT", "Mesh"]

log = logging.getLogger(__name__)

OUTBOX_LIMIT = 32  # messages kept per member while its link is being dialled


class Mesh:
    """The links of ``node``, by peer node id; :meth:`open` before dialling, the node closes the session.

    From the node it reads its identity (id, name, fingerprint, port), config, membership and cache (to offer
    a cache sync on a new link); it hands every message to ``node._on_message``, admits frames through the
    node's :class:`~ccied_p2p.runtime.serving.Serving`, and runs its tasks with ``node._spawn``.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.links: dict[bytes, Link] = {}
        self.changed = asyncio.Event()  # set whenever a link is added or removed
        self.outbox: dict[bytes, list[Message]] = {}
        self._dialing: dict[bytes, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        # Authenticated links whose adopt() has not ended yet (its task may be cancelled before it starts).
        self._unowned: set[Link] = set()
        # Server-side WebSockets still in their handshake: closed when the node closes, so the dialling peer
        # learns at once instead of holding a half-open link for the handshake timeout.
        self._handshaking: set[web.WebSocketResponse] = set()

    def open(self, local_host: str | None) -> aiohttp.ClientSession:
        """The client session dials go through (leaving from ``local_host`` if given); the caller closes it."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(local_host, 0) if local_host else None),
            timeout=aiohttp.ClientTimeout(total=None, connect=2.0),
        )
        return self._session

    async def close_links(self) -> None:
        """Close every link, adopted or still waiting for its adopt() to run, and every server-side
        handshake in progress."""
        for ws in list(self._handshaking):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"node closing")
        for link in [*self.links.values(), *self._unowned]:
            await link.close()

    def abort_links(self) -> None:
        """Drop every link's socket as a crash would (no close frame)."""
        for link in list(self.links.values()):
            # aiohttp keeps the socket on both ends' WebSocketWriter; no public API drops it without a close.
            transport = getattr(getattr(link.ws, "_writer", None), "transport", None)
            if transport is not None:
                transport.abort()

    # ------------------------------------------------------------------ opening links

    def _hello(self) -> Hello:
        node = self.node
        return Hello(
            node.node_id, node.config.name, node.split.fingerprint, PROTOCOL_VERSION, new_nonce(), node.port
        )

    def _closing(self) -> bool:
        """Whether the node began closing (a call, read afresh after every await)."""
        return self.node._closing

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        """The server side: a peer's WebSocket, authenticated, then adopted for as long as it stays open."""
        node, cfg = self.node, self.node.config
        ws = web.WebSocketResponse(
            max_msg_size=cfg.serving.limits.max_frame_bytes + 64, heartbeat=cfg.network.heartbeat
        )
        await ws.prepare(request)
        if self._closing():
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"node closing")
            return ws
        peername = request.transport.get_extra_info("peername") if request.transport else None
        self._handshaking.add(ws)
        try:
            session = await handshake(
                ws,
                Role.RESPONDER,
                self._hello(),
                cfg.secret,
                cfg.serving.limits,
                cfg.connections.handshake_timeout,
            )
        except (AuthenticationError, CodecError, TimeoutError, LinkClosedError) as exc:
            if self._closing() and isinstance(exc, LinkClosedError):  # we closed it: not the peer's failure
                log.debug("[%s] handshake with %s ended: the node is closing", cfg.name, peername)
                return ws
            node.counters.auth_failures += 1
            reason = str(exc) or type(exc).__name__
            node._notify("on_auth_failure", str(peername), reason)
            node.refusal_log.warning(
                "auth", "[%s] rejected a connection from %s: %s", cfg.name, peername, reason
            )
            try:
                await ws.send_bytes(encode_message(ErrorMessage(0, "auth", "authentication failed")))
            except ConnectionError:
                pass  # the peer is gone already
            except Exception:
                log.warning(
                    "[%s] could not tell %s its authentication failed", cfg.name, peername, exc_info=True
                )
            await ws.close()
            return ws
        finally:
            self._handshaking.discard(ws)
        link = Link(
            ws,
            session,
            node._on_message,
            cfg.network.max_in_flight,
            refusal_log=node.refusal_log,
            admit=node._serving.admit,
        )
        self._unowned.add(link)
        await self.adopt(link)
        return ws

    async def dial(self, host: str, port: int) -> None:
        """Connect and authenticate to ``host:port``; the link is adopted by a task of its own."""
        assert self._session is not None, "Mesh.open first"
        node, cfg = self.node, self.node.config
        ws = await self._session.ws_connect(
            f"http://{host}:{port}{WS_PATH}",
            max_msg_size=cfg.serving.limits.max_frame_bytes + 64,
            heartbeat=cfg.network.heartbeat,
            autoping=True,
        )
        try:
            session = await handshake(
                ws,
                Role.INITIATOR,
                self._hello(),
                cfg.secret,
                cfg.serving.limits,
                cfg.connections.handshake_timeout,
            )
        except BaseException:
            await ws.close()
            raise
        link = Link(
            ws,
            session,
            node._on_message,
            cfg.network.max_in_flight,
            address=(host, port),
            refusal_log=node.refusal_log,
            admit=node._serving.admit,
        )
        self._unowned.add(link)
        node._spawn(self.adopt(link), f"link:{session.peer.name}")

    async def dial_address(self, address: str, attempts: int = 20) -> None:
        """Dial ``host:port`` until it answers (backing off up to 2 s), at most ``attempts`` times."""
        name = self.node.config.name
        host, _, port = address.rpartition(":")
        delay = 0.1
        for _ in range(attempts):
            try:
                await self.dial(host or "127.0.0.1", int(port))
                return
            except AuthenticationError as exc:
                log.warning("[%s] seed %s refused us: %s", name, address, exc)
                return
            except (OSError, aiohttp.ClientError, TimeoutError, RemoteError) as exc:
                log.debug("[%s] seed %s not reachable yet: %s", name, address, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def ensure_link(self, node_id: bytes) -> None:
        """Dial a known member unless a link or a dial to it exists."""
        node = self.node
        if node_id in self.links or node_id in self._dialing or node._closing:
            return
        member = node.membership.get(node_id)
        # Dead members are dialled too: that is how a healed partition reconnects (membership rate-limits
        # its messages to the dead to one per sync period).
        if member is None or member.state is MemberState.LEFT or not member.port:
            return

        async def dial() -> None:
            try:
                await self.dial(member.host, member.port)
            except (OSError, aiohttp.ClientError, TimeoutError, RemoteError) as exc:
                log.debug("[%s] dial %s failed: %s", node.config.name, member.name, exc)
                self.outbox.pop(node_id, None)
            finally:
                self._dialing.pop(node_id, None)

        self._dialing[node_id] = node._spawn(dial(), f"dial:{member.name}")

    # ------------------------------------------------------------------ owning links

    async def adopt(self, link: Link) -> None:
        """Own a new authenticated link for as long as it runs; its socket is closed however this ends (a
        duplicate, a failure, a cancellation while sending the first messages)."""
        try:
            await self._own(link)
        finally:
            self._unowned.discard(link)
            await link.close()

    async def _own(self, link: Link) -> None:
        """Keep one link per peer (the one dialled by the lower node id), greet it, run it."""
        node = self.node
        pid = link.node_id
        if pid == node.node_id:
            await link.close()
            return
        old = self.links.get(pid)
        if old is not None and not old.closed.is_set():

            def dialer(lk: Link) -> bytes:
                return node.node_id if lk.role is Role.INITIATOR else lk.node_id

            if dialer(old) <= dialer(link):
                await link.close()
                return
            await old.close()
        self.links[pid] = link
        self.changed.set()
        node._notify("on_link_opened", link)
        if node.membership.get(pid) is None:
            host = (link.address[0] if link.address else "") or _peer_host(link)
            member = MemberUpdate(
                pid, link.peer.name, host, link.peer.port, link.peer.fingerprint, MemberState.ALIVE, 0
            )
            await self.send_all(node.membership.add_seed(member, node._now()))
            self.drain_events()
        for queued in self.outbox.pop(pid, []):
            with contextlib.suppress(LinkClosedError):
                await link.send(queued)
        cfg = node.config
        if cfg.cache.share and cfg.cache.enabled and link.peer.fingerprint == node.split.fingerprint:
            with contextlib.suppress(LinkClosedError):
                await link.send(CacheSync(tuple(node.cache.known().items()), 256 << 10))
        try:
            await link.run()
        finally:
            node._serving.forget(link)
            if self.links.get(pid) is link:
                del self.links[pid]
                self.changed.set()
            node._notify("on_link_closed", link)

    # ------------------------------------------------------------------ membership traffic

    async def send_all(self, out: list[tuple[bytes, Message]]) -> None:
        """Send what membership returned; to a member without a link, queue (a few) and dial it."""
        for dest, msg in out:
            link = self.links.get(dest)
            if link is None or link.closed.is_set():
                box = self.outbox.setdefault(dest, [])
                if len(box) < OUTBOX_LIMIT:
                    box.append(msg)
                self.ensure_link(dest)
                continue
            try:
                await link.send(msg)
            except LinkClosedError:
                pass
            except EncodeError as exc:  # one unencodable message must never stop the ticker
                log.error(
                    "[%s] dropped a %s to %s: %s",
                    self.node.config.name,
                    type(msg).__name__,
                    link.peer.name,
                    exc,
                )

    def drain_events(self) -> None:
        """Act on membership's events: dial who joined or came back, drop the links of the dead and gone."""
        node = self.node
        for event in node.membership.drain_events():
            member = event.member
            level = logging.DEBUG if event.kind is MemberEventKind.UPDATED else logging.INFO
            log.log(
                level,
                "[%s] member %s %s %s",
                node.config.name,
                member.name,
                member.node_id.hex()[:12],
                event.kind.value,
            )
            node._notify("on_member", event)
            if event.kind in (MemberEventKind.JOINED, MemberEventKind.ALIVE):
                self.ensure_link(member.node_id)
            elif event.kind in (MemberEventKind.DEAD, MemberEventKind.LEFT):
                link = self.links.pop(member.node_id, None)
                self.outbox.pop(member.node_id, None)
                if link is not None:
                    node._spawn(link.close(), "close")

    async def watch_discovery(self, discovery: Discovery) -> None:
        """Dial every node mDNS finds or sees change, unless it is this node or linked already."""
        from ccied_p2p.runtime.discovery import PeerFound, PeerRemoved, PeerUpdated

        node = self.node
        async for event in discovery.events():
            match event:
                case PeerFound(peer=peer) | PeerUpdated(peer=peer):
                    if peer.node_id == node.node_id or peer.node_id in self.links:
                        continue
                    node._spawn(
                        self.dial_address(f"{peer.host}:{peer.port}", attempts=3), f"mdns:{peer.name}"
                    )
                case PeerRemoved():
                    pass  # gossip tells when a member is gone; mDNS goodbyes are only hints


def _peer_host(link: Link) -> str:
    """The address an accepted link came from (where the peer can be dialled back, on its own port)."""
    transport = getattr(link.ws, "_req", None)
    peer = None
    if transport is not None and transport.transport is not None:
        peer = transport.transport.get_extra_info("peername")
    return str(peer[0]) if peer else "127.0.0.1"
