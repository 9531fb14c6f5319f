"""Authenticated peer links over aiohttp WebSockets: the I/O around a :class:`~ccied_p2p.codec.session.Session`.

A link is one WebSocket between two nodes, whichever side dialled. The protocol (the handshake, sealing and
opening frames, request ids) is the session's, sans I/O; this module only moves bytes between the socket and
the session, awaits answers and applies backpressure. After the handshake every binary frame is
``seal(encode_message(msg))``, encrypted and authenticated; the clear hellos carry no names or fingerprints,
which travel as the first sealed frame each way. A frame that fails to open or decode, or is larger than the
limit, is logged (rate-limited) and closes the link (the session's sequence numbers make a bad frame
unrecoverable), and the node keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from ccied_p2p.codec.auth import Role
from ccied_p2p.codec.messages import (
    ErrorMessage,
    Hello,
    InferInput,
    InferRequest,
    InferResponse,
    Message,
)
from ccied_p2p.codec.session import PROTOCOL_VERSION, Session
from ccied_p2p.codec.tensor import Limits
from ccied_p2p.codec.wire import Frame
from ccied_p2p.errors import (
    AuthenticationError,
    CCIEDError,
    CodecError,
    PeerError,
    RemoteError,
    RequestTimeoutError,
)
from ccied_p2p.logs import RateLimitedLog

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "PROTOCOL_VERSION",
    "WS_PATH",
    "Link",
    "LinkClosedError",
    "handshake",
]

log = logging.getLogger(__name__)
# Links closed for bad frames: logged, but never a line per frame an attacker can make a node read.
frame_log = RateLimitedLog(log)

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


async def _flush(ws: Ws, session: Session) -> None:
    for frame in session.data_to_send():
        await ws.send_bytes(frame)


async def handshake(
    ws: Ws, role: Role, me: Hello, secret: str | None, limits: Limits, timeout: float = HANDSHAKE_TIMEOUT
) -> Session:
    """Run the mutual challenge-response over ``ws``; returns the open session.

    The whole exchange must finish within ``timeout`` seconds (a ``TimeoutError`` saying so otherwise).
    With ``secret=None`` (insecure mode, explicit opt-in) the full hellos and all frames travel in clear.
    """
    session = Session(role, me, secret, limits)
    try:
        async with asyncio.timeout(timeout):
            while True:
                await _flush(ws, session)
                if session.is_open:
                    return session
                frame = await _receive_frame(ws, timeout)
                try:
                    session.receive_data(frame)
                except (AuthenticationError, CodecError):
                    await _flush(ws, session)  # what it said before failing (a responder's hello)
                    raise
    except TimeoutError as exc:
        raise TimeoutError(f"no complete handshake within {timeout:g} s") from exc


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

    Built over the session :func:`handshake` opened on ``ws``; :attr:`session` holds the protocol state.
    """

    def __init__(
        self,
        ws: Ws,
        session: Session,
        on_message: Callable[[Link, Message, float], Awaitable[None]],
        max_in_flight: int = 64,
        address: tuple[str, int] | None = None,
        refusal_log: RateLimitedLog | None = None,
        admit: Callable[[Link, Frame], Awaitable[bool]] | None = None,
    ) -> None:
        if not session.is_open:
            raise ValueError("a link needs a session whose handshake is complete")
        self.ws = ws
        self.session = session
        self._admit = admit
        self.address = address
        self._on_message = on_message
        self._warn = refusal_log if refusal_log is not None else frame_log
        self._pending: dict[int, asyncio.Future[InferResponse]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._send_lock = asyncio.Lock()
        self.stats = LinkStats()
        self.closed = asyncio.Event()

    @property
    def peer(self) -> Hello:
        return self.session.peer

    @property
    def role(self) -> Role:
        return self.session.role

    @property
    def node_id(self) -> bytes:
        return self.peer.node_id

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _check_open(self) -> None:
        if self.closed.is_set():
            raise LinkClosedError(f"link to {self.peer.name} is closed")

    async def send(self, msg: Message) -> int:
        """Seal and send one message; returns the bytes put on the wire."""
        self._check_open()
        async with self._send_lock:  # sealed in the order written: the peer accepts only the next sequence
            self._check_open()
            return await self._write(self.session.send(msg))

    async def _write(self, frame: bytes) -> int:
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
        seconds). The request id is this link's (the session's).

        At most ``max_in_flight`` requests wait on one link; more wait for a slot (backpressure).
        """
        async with self._slots:
            fut: asyncio.Future[InferResponse] = asyncio.get_running_loop().create_future()
            request_id: int | None = None
            try:
                self._check_open()
                async with self._send_lock:
                    self._check_open()
                    start = time.perf_counter()
                    request_id, frame = self.session.request(msg)
                    encode_s = time.perf_counter() - start
                    self._pending[request_id] = fut
                    sent = await self._write(frame)
                async with asyncio.timeout(timeout):
                    return await fut, sent, encode_s
            except TimeoutError as exc:
                raise RequestTimeoutError(f"{self.peer.name} did not answer within {timeout:.3f} s") from exc
            finally:
                if request_id is not None:
                    self._pending.pop(request_id, None)
                    self.session.finish(request_id)
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
                    frame = self.session.receive_data(data)
                    if frame is None:  # a handshake frame: an open session never returns one
                        continue
                    if self._admit is not None and not await self._admit(self, frame):
                        continue
                    msg = frame.decode()
                except (AuthenticationError, CodecError) as exc:
                    self._warn.warning("frame", "closing link to %s: bad frame: %s", self.peer.name, exc)
                    reason = exc
                    break
                request_id = self.session.answers(msg)
                if request_id is not None:
                    fut = self._pending.get(request_id)
                    if fut is not None and not fut.done():
                        if isinstance(msg, InferResponse):
                            fut.set_result(msg)
                        elif isinstance(msg, ErrorMessage):
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
