"""One link's protocol, sans I/O: the handshake, sealed frames and request ids, as bytes in and bytes out.

A :class:`Session` is what a peer link *is* apart from its socket (after the ``Protocol`` of the
``websockets`` library): the runtime feeds it each binary WebSocket message with :meth:`Session.receive_data`
and writes what :meth:`Session.data_to_send` returns, in order. It never reads a socket or a clock.

Handshake (the crypto is in :mod:`ccied_p2p.codec.auth`; with a secret the hellos travel without names and
fingerprints, which follow as each side's first sealed frame)::

    initiator                               responder
    Hello (clear)          ------------->                     state HELLO -> AUTH
                           <-------------   Hello (clear)
    Auth(proof)            ------------->                     verify the initiator's proof
                           <-------------   Auth(proof), sealed Hello
    verify, sealed Hello   ------------->
    state OPEN once the peer's sealed Hello repeats its clear one (both sides)

Without a secret (insecure mode, an explicit opt-in) the full hellos travel in clear and the session is
open after them; frames are then not sealed. During the handshake only ``Hello``, ``Auth`` and
``ErrorMessage`` are decoded. Any failure (:class:`~ccied_p2p.errors.AuthenticationError` or
:class:`~ccied_p2p.errors.CodecError`) leaves the session ``FAILED``: it refuses everything after, since
the sequence numbers make a bad frame unrecoverable (drop the connection).

Once open, :meth:`Session.send` seals a message and :meth:`Session.request` gives a request the link's next
request id; :meth:`Session.receive_data` returns each incoming frame opened and peeked (a
:class:`~ccied_p2p.codec.wire.Frame`: headers checked, tensors not yet decoded) so that the runtime can admit
or refuse it before decoding, and :meth:`Session.answers` says whether a message answers an open request.
Frames must go on the wire in the order they were sealed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import StrEnum
from typing import Final

from ccied_p2p.codec.auth import Role, check_identity, clear_hello, compute_proof, open_session, verify_proof
from ccied_p2p.codec.messages import (
    Auth,
    ErrorMessage,
    Hello,
    InferInput,
    InferRequest,
    InferResponse,
    Message,
)
from ccied_p2p.codec.tensor import DEFAULT_LIMITS, Limits
from ccied_p2p.codec.wire import Frame, decode_message, encode_message, peek_message
from ccied_p2p.errors import AuthenticationError, CodecError, LocalError

__all__ = ["HANDSHAKE_MESSAGES", "PROTOCOL_VERSION", "Session", "SessionState"]

# 2: frames encrypted (ChaCha20-Poly1305), names and fingerprints only sealed; 3: InferInput (offload), load
# reports carry the model's and its head's measured cost
PROTOCOL_VERSION: Final = 3

HANDSHAKE_MESSAGES: Final = (Hello, Auth, ErrorMessage)
"""What is decoded before the peer is trusted: nothing with a tensor."""

_U64_MAX: Final = (1 << 64) - 1

Transform = Callable[[bytes], bytes]


def _no_keys(data: bytes) -> bytes:
    raise LocalError("no session keys yet")


class SessionState(StrEnum):
    """Where a session is: what it waits for next, open, or failed for good."""

    HELLO = "hello"  # the peer's clear Hello
    AUTH = "auth"  # the peer's Auth (its proof)
    IDENTITY = "identity"  # the peer's sealed Hello
    OPEN = "open"
    FAILED = "failed"


class Session:
    """The protocol state of one connection, from either end; see the module docstring.

    ``me`` is this node's full hello (its nonce fresh for this connection); ``secret=None`` is insecure mode.
    The initiator's first frame is queued at construction.
    """

    def __init__(
        self,
        role: Role,
        me: Hello,
        secret: str | bytes | None,
        limits: Limits = DEFAULT_LIMITS,
        *,
        protocol: int = PROTOCOL_VERSION,
    ) -> None:
        self.role = Role(role)
        self.limits = limits
        self.protocol = protocol
        self.state = SessionState.HELLO
        self._me = me
        self._secret = secret
        self._public = me if secret is None else clear_hello(me)
        self._out: list[bytes] = []
        self._clear_peer: Hello | None = None
        self._peer: Hello | None = None
        self._hellos: tuple[Hello, Hello] | None = None  # (initiator, responder) as sent in clear
        self._proof = b""
        self._seal: Transform = _no_keys
        self._open: Transform = _no_keys
        self._next_id = 1
        self._requests: set[int] = set()
        if self.role is Role.INITIATOR:
            self._out.append(encode_message(self._public))

    # -- state -----------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state is SessionState.OPEN

    @property
    def peer(self) -> Hello:
        """The peer's full hello (its sealed one when there is a secret); LocalError before the session opens."""
        if self._peer is None:
            raise LocalError(f"the session is {self.state.value}, the peer is not known yet")
        return self._peer

    @property
    def pending(self) -> frozenset[int]:
        """The request ids sent and not yet finished with :meth:`finish`."""
        return frozenset(self._requests)

    def data_to_send(self) -> list[bytes]:
        """The frames to write, in order, since the last call (the handshake's; :meth:`send` returns its own)."""
        out, self._out = self._out, []
        return out

    # -- bytes in --------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> Frame | None:
        """Take one binary WebSocket message from the peer.

        During the handshake returns None (the reply, if any, is in :meth:`data_to_send`); once open, the
        frame opened and peeked (call :meth:`~ccied_p2p.codec.wire.Frame.decode` to get the message).
        Raises AuthenticationError or CodecError for a bad frame, and the session is then ``FAILED``.
        """
        if self.state is SessionState.FAILED:
            raise AuthenticationError("the session already failed; the connection must be dropped")
        try:
            if self.state is SessionState.OPEN:
                return peek_message(self._open(data), self.limits)
            self._handshake(data)
            return None
        except (AuthenticationError, CodecError):
            self.state = SessionState.FAILED  # what was queued before the failure still goes out
            raise

    def _handshake(self, data: bytes) -> None:
        if self.state is SessionState.HELLO:
            self._on_hello(self._clear_message(data))
        elif self.state is SessionState.AUTH:
            self._on_auth(self._clear_message(data))
        else:
            sealed = decode_message(self._open(data), self.limits)
            if self._clear_peer is None:  # unreachable: IDENTITY follows the peer's hello
                raise AuthenticationError("no handshake in progress")
            self._peer = check_identity(self._clear_peer, sealed)
            self.state = SessionState.OPEN

    def _clear_message(self, data: bytes) -> Message:
        msg = decode_message(data, self.limits, only=HANDSHAKE_MESSAGES)
        if isinstance(msg, ErrorMessage):
            raise AuthenticationError(f"peer refused the handshake: {msg.message}")
        return msg

    def _on_hello(self, peer: Message) -> None:
        if not isinstance(peer, Hello):
            raise AuthenticationError(f"expected Hello, got {type(peer).__name__}")
        if self.role is Role.RESPONDER:
            self._out.append(encode_message(self._public))
        if peer.protocol != self.protocol:
            raise AuthenticationError(f"peer speaks protocol {peer.protocol}, this node {self.protocol}")
        self._clear_peer = peer
        if self._secret is None:
            self._peer, self._seal, self._open = peer, bytes, bytes
            self.state = SessionState.OPEN
            return
        initiator, responder = (self._public, peer) if self.role is Role.INITIATOR else (peer, self._public)
        self._hellos = (initiator, responder)
        self._proof = compute_proof(self._secret, self.role, initiator, responder)
        sealer, opener = open_session(self._secret, self.role, initiator, responder)
        self._seal, self._open = sealer.seal, opener.open
        if self.role is Role.INITIATOR:
            self._out.append(encode_message(Auth(self._proof)))
        self.state = SessionState.AUTH

    def _on_auth(self, theirs: Message) -> None:
        if not isinstance(theirs, Auth):
            raise AuthenticationError(f"expected Auth, got {type(theirs).__name__}")
        if self._secret is None or self._hellos is None:  # unreachable: AUTH follows a hello, with a secret
            raise AuthenticationError("no handshake in progress")
        verify_proof(self._secret, self.role.peer, *self._hellos, theirs.proof)
        if self.role is Role.RESPONDER:
            self._out.append(encode_message(Auth(self._proof)))
        self._out.append(self._seal(encode_message(self._me)))
        self.state = SessionState.IDENTITY

    # -- bytes out -------------------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self.state is not SessionState.OPEN:
            raise LocalError(f"the session is {self.state.value}, not open")

    def seal(self, frame: bytes) -> bytes:
        """One encoded frame as it goes on the wire (unchanged in insecure mode); LocalError unless open."""
        self._require_open()
        return self._seal(frame)

    def open(self, data: bytes) -> bytes:
        """One frame from the wire, opened (no message checks); AuthenticationError if it does not open."""
        self._require_open()
        try:
            return self._open(data)
        except AuthenticationError:
            self.state = SessionState.FAILED
            raise

    def send(self, msg: Message) -> bytes:
        """``msg`` encoded and sealed, to be written next."""
        self._require_open()
        return self._seal(encode_message(msg))

    def request(self, msg: InferRequest | InferInput) -> tuple[int, bytes]:
        """Give ``msg`` this link's next request id; returns the id and the sealed frame to write next.

        The id counts from 1 per session and is pending until :meth:`finish`; a request that does not
        encode (EncodeError) takes no id.
        """
        self._require_open()
        request_id = self._next_id
        if request_id > _U64_MAX:
            raise LocalError("request ids exhausted on this link; reconnect")
        frame = self._seal(encode_message(dataclasses.replace(msg, request_id=request_id)))
        self._next_id += 1
        self._requests.add(request_id)
        return request_id, frame

    def answers(self, msg: Message) -> int | None:
        """The pending request ``msg`` answers (an InferResponse or ErrorMessage with its id), else None."""
        if isinstance(msg, InferResponse | ErrorMessage) and msg.request_id in self._requests:
            return msg.request_id
        return None

    def finish(self, request_id: int) -> None:
        """The request is over (answered, failed or given up): a late answer to it is no answer."""
        self._requests.discard(request_id)

    def __repr__(self) -> str:
        name = self._peer.name if self._peer is not None else "?"
        return f"Session({self.role.value}, {self.state.value}, peer={name!r}, pending={len(self._requests)})"
