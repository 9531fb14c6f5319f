"""Authenticated peer links over aiohttp WebSockets: the handshake, sealed frames, request multiplexing.

A link is one WebSocket between two nodes, whichever side dialled. After the handshake (see
:mod:`ccied_p2p.codec.auth`) every binary frame is ``seal(encode_message(msg))``, encrypted and authenticated;
the clear hellos carry no names or fingerprints, which travel as the first sealed frame each way. A frame
that fails to open or decode, or is larger than the limit, is logged (rate-limited) and closes the link (the
session's sequence numbers make a bad frame unrecoverable), and the node keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from ccied_p2p.codec.auth import (
    Role,
    check_identity,
    clear_hello,
    compute_proof,
    open_session,
    verify_proof,
)
from ccied_p2p.codec.messages import (
    Auth,
    ErrorMessage,
    Hello,
    InferInput,
    InferRequest,
    InferResponse,
    Message,
)
from ccied_p2p.codec.tensor import Limits
from ccied_p2p.codec.wire import Frame, decode_message, encode_message, peek_message
from ccied_p2p.errors import (
    AuthenticationError,
    CCIEDError,
    CodecError,
    PeerError,
    RemoteError,
    RequestTimeoutError,
)
from ccied_p2p.logs import RateLimitedLog

__all__ = ["HANDSHAKE_TIMEOUT", "PROTOCOL_VERSION", "WS_PATH", "Link", "LinkClosedError", "handshake"]

log = logging.getLogger(__name__)
# Links closed for bad frames: logged, but never a line per frame an attacker can make a node read.
frame_log = RateLimitedLog(log)

# 2: frames encrypted (ChaCha20-Poly1305), names and fingerprints only sealed; 3: InferInput (offload), load
# reports carry the model's and its head's measured cost
PROTOCOL_VERSION = 3
WS_PATH = "/ccied"
HANDSHAKE_TIMEOUT = 5.0

Ws = aiohttp.ClientWebSocketResponse | web.WebSocketResponse


class LinkClosedError(RemoteError, ConnectionError):
    """The link to the peer closed before the request was answered."""


async def _receive_frame(ws: Ws, timeout: float) -> bytes:
    msg = await ws.receive(timeout=timeout)
    if msg.type is aiohttp.WSMsgType.BINARY:
        data: bytes = msg.data
        return data
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        raise LinkClosedError("peer closed the connection during the handshake")
    raise AuthenticationError(f"expected a binary handshake frame, got {msg.type.name}")


async def handshake(
    ws: Ws, role: Role, me: Hello, secret: str | None, limits: Limits, timeout: float = HANDSHAKE_TIMEOUT
) -> tuple[Hello, Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """Run the mutual challenge-response; returns the peer's full hello and the (seal, open) pair.

    The whole exchange must finish within ``timeout`` seconds (a ``TimeoutError`` saying so otherwise).
    With a secret, the hellos travel without names and fingerprints; each side sends its full hello as its
    first sealed frame once it has verified the other's proof (the responder right after its own ``Auth``,
    so the initiator still finishes in two round trips). With ``secret=None`` (insecure mode, explicit
    opt-in) the full hellos and all frames travel in clear.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _handshake(ws, role, me, secret, limits, timeout)
    except TimeoutError as exc:
        raise TimeoutError(f"no complete handshake within {timeout:g} s") from exc


async def _handshake(
    ws: Ws, role: Role, me: Hello, secret: str | None, limits: Limits, timeout: float
) -> tuple[Hello, Callable[[bytes], bytes], Callable[[bytes], bytes]]:

    async def send(msg: Message) -> None:
        await ws.send_bytes(encode_message(msg))

    async def recv() -> Message:
        # Only the handshake's own messages: nothing with tensors is decoded before the peer is trusted.
        msg = decode_message(await _receive_frame(ws, timeout), limits, only=(Hello, Auth, ErrorMessage))
        if isinstance(msg, ErrorMessage):
            raise AuthenticationError(f"peer refused the handshake: {msg.message}")
        return msg

    public = me if secret is None else clear_hello(me)
    if role is Role.INITIATOR:
        await send(public)
        peer = await recv()
    else:
        peer = await recv()
        if isinstance(peer, Hello):
            await send(public)
    if not isinstance(peer, Hello):
        raise AuthenticationError(f"expected Hello, got {type(peer).__name__}")
    if peer.protocol != PROTOCOL_VERSION:
        raise AuthenticationError(f"peer speaks protocol {peer.protocol}, this node {PROTOCOL_VERSION}")
    initiator, responder = (public, peer) if role is Role.INITIATOR else (peer, public)
    if secret is None:
        return peer, bytes, bytes
    mine = compute_proof(secret, role, initiator, responder)
    sealer, opener = open_session(secret, role, initiator, responder)
    if role is Role.INITIATOR:
        await send(Auth(mine))
        theirs = await recv()
        if not isinstance(theirs, Auth):
            raise AuthenticationError(f"expected Auth, got {type(theirs).__name__}")
        verify_proof(secret, role.peer, initiator, responder, theirs.proof)
        await ws.send_bytes(sealer.seal(encode_message(me)))
    else:
        theirs = await recv()
        if not isinstance(theirs, Auth):
            raise AuthenticationError(f"expected Auth, got {type(theirs).__name__}")
        verify_proof(secret, role.peer, initiator, responder, theirs.proof)
        await send(Auth(mine))
        await ws.send_bytes(sealer.seal(encode_message(me)))
    sealed = decode_message(opener.open(await _receive_frame(ws, timeout)), limits)
    return check_identity(peer, sealed), sealer.seal, opener.open


@dataclass
class LinkStats:
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class Link:
    """One authenticated connection to a peer: send messages, await request answers, read the rest.

    Incoming messages other than answers go to ``on_message(link, msg)``; the node owns the task that runs
    :meth:`run`. ``admit(link, frame)``, if given, sees each frame's headers before its tensors are decoded
    and returns False to drop it (it answers the peer itself); reading waits for it, which is the backpressure.
    """

    def __init__(
        self,
        ws: Ws,
        peer: Hello,
        role: Role,
        seal: Callable[[bytes], bytes],
        open_: Callable[[bytes], bytes],
        limits: Limits,
        on_message: Callable[[Link, Message, float], Awaitable[None]],
        max_in_flight: int = 64,
        address: tuple[str, int] | None = None,
        refusal_log: RateLimitedLog | None = None,
        admit: Callable[[Link, Frame], Awaitable[bool]] | None = None,
    ) -> None:
        self.ws = ws
        self._admit = admit
        self.peer = peer
        self.role = role
        self.address = address
        self._seal = seal
        self._open = open_
        self._limits = limits
        self._on_message = on_message
        self._warn = refusal_log if refusal_log is not None else frame_log
        self._pending: dict[int, asyncio.Future[InferResponse]] = {}
        self._ids = itertools.count(1)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._send_lock = asyncio.Lock()
        self.stats = LinkStats()
        self.closed = asyncio.Event()

    @property
    def node_id(self) -> bytes:
        return self.peer.node_id

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def send(self, msg: Message) -> int:
        """Seal and send one message; returns the bytes put on the wire."""
        return await self._send_frame(self._seal(encode_message(msg)))

    async def _send_frame(self, frame: bytes) -> int:
        if self.closed.is_set():
            raise LinkClosedError(f"link to {self.peer.name} is closed")
        async with self._send_lock:
            try:
                await self.ws.send_bytes(frame)
            except (ConnectionError, RuntimeError) as exc:
                self._fail(LinkClosedError(f"send to {self.peer.name} failed: {exc}"))
                raise LinkClosedError(f"send to {self.peer.name} failed: {exc}") from exc
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)
        return len(frame)

    async def request(
        self, msg: InferRequest | InferInput, timeout: float
    ) -> tuple[InferResponse, int, float]:
        """Send a tail request or a whole input and await its answer; returns (answer, bytes sent, encode
        seconds). The request id is this link's.

        At most ``max_in_flight`` requests wait on one link; more wait for a slot (backpressure).
        """
        async with self._slots:
            request_id = next(self._ids)
            fut: asyncio.Future[InferResponse] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = fut
            try:
                start = time.perf_counter()
                frame = self._seal(encode_message(dataclasses.replace(msg, request_id=request_id)))
                encode_s = time.perf_counter() - start
                sent = await self._send_frame(frame)
                async with asyncio.timeout(timeout):
                    return await fut, sent, encode_s
            except TimeoutError as exc:
                raise RequestTimeoutError(f"{self.peer.name} did not answer within {timeout:.3f} s") from exc
            finally:
                self._pending.pop(request_id, None)
                if fut.done() and not fut.cancelled():
                    fut.exception()  # mark it retrieved: the caller got the error another way

    def _fail(self, exc: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.closed.set()

    async def run(self) -> None:
        """Read frames until the socket closes or a frame is bad; dispatch each message."""
        reason: BaseException = LinkClosedError(f"link to {self.peer.name} closed")
        try:
            async for raw in self.ws:
                if raw.type is not aiohttp.WSMsgType.BINARY:
                    if raw.type is aiohttp.WSMsgType.ERROR:  # e.g. a frame above max_msg_size
                        self._warn.warning(
                            "frame", "closing link to %s: %s", self.peer.name, raw.data or "WebSocket error"
                        )
                        break
                    self._warn.warning(
                        "frame", "closing link to %s: non-binary frame %s", self.peer.name, raw.type.name
                    )
                    break
                data: bytes = raw.data
                self.stats.frames_received += 1
                self.stats.bytes_received += len(data)
                start = time.perf_counter()
                try:
                    frame = peek_message(self._open(data), self._limits)
                    if self._admit is not None and not await self._admit(self, frame):
                        continue
                    msg = frame.decode()
                except (AuthenticationError, CodecError) as exc:
                    self._warn.warning("frame", "closing link to %s: bad frame: %s", self.peer.name, exc)
                    reason = exc
                    break
                if isinstance(msg, InferResponse | ErrorMessage) and msg.request_id in self._pending:
                    fut = self._pending[msg.request_id]
                    if not fut.done():
                        if isinstance(msg, InferResponse):
                            fut.set_result(msg)
                        else:
                            fut.set_exception(PeerError(f"{self.peer.name}: {msg.message}", msg.code))
                    continue
                try:
                    await self._on_message(self, msg, time.perf_counter() - start)
                except CCIEDError as exc:
                    log.warning("message %s from %s failed: %s", type(msg).__name__, self.peer.name, exc)
        finally:
            self._fail(reason)
            await self._close_ws()

    async def close(self) -> None:
        self._fail(LinkClosedError(f"link to {self.peer.name} closed locally"))
        await self._close_ws()

    async def _close_ws(self) -> None:
        try:
            await self.ws.close()
        except ConnectionError:
            pass  # the socket is gone already (the peer dropped it, or abort() did)
        except Exception:
            log.warning("closing the link to %s failed", self.peer.name, exc_info=True)

    def __repr__(self) -> str:
        return f"Link({self.peer.name}, {self.role.value}, in_flight={self.in_flight})"
