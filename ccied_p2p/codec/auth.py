"""Cluster-secret authentication and link encryption, pure: handshake proofs, session keys, sealed frames.

Handshake (each side sends :class:`Hello` without its name and fingerprint, see :func:`clear_hello`, then
:class:`Auth`)::

    K_proof  = HKDF-SHA256(ikm=secret, salt="ccied-p2p/1 auth", info="proof")
    proof(R) = HMAC-SHA256(K_proof, "ccied-p2p/1 proof" | R | transcript(initiator hello, responder hello))

where R is the prover's role label (``initiator`` or ``responder``), so one side's proof can never be
reflected back as the other side's; both hellos as sent (node ids, protocol, nonces, ports) are in the
transcript, so a proof answers exactly one pair of fresh nonces. Then per connection, one ChaCha20-Poly1305
key per direction::

    K_i2r | K_r2i = HKDF-SHA256(ikm=secret, salt=initiator nonce | responder nonce,
                                info="ccied-p2p/2 session" | SHA-256(transcript), length=64)

and every frame travels encrypted and authenticated with the sender's direction key::

    S = u64 sequence number (LE, from 0, +1 per frame)
    S | ChaCha20-Poly1305(key, nonce = 4 zero bytes | S, plaintext = frame, aad = S)   (ciphertext | 16-byte tag)

The first sealed frame each way is the sender's full :class:`Hello` (:func:`check_identity`). Each
:class:`SessionOpener` accepts only the next sequence number under a valid tag: forged, replayed, reordered,
dropped or reflected frames raise :class:`~ccied_p2p.errors.AuthenticationError`, after which the opener
refuses everything (drop the connection). Proofs are compared in constant time (:func:`hmac.compare_digest`),
tags by the AEAD. Primitives come from ``cryptography`` (OpenSSL); HMAC from the standard library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ccied_p2p.codec.messages import Hello, Message
from ccied_p2p.errors import AuthenticationError, ConfigError, EncodeError

__all__ = [
    "KEY_BYTES",
    "MIN_NONCE_BYTES",
    "NONCE_BYTES",
    "PROOF_BYTES",
    "SEAL_OVERHEAD",
    "TAG_BYTES",
    "Role",
    "SessionKeys",
    "SessionOpener",
    "SessionSealer",
    "check_identity",
    "clear_hello",
    "compute_proof",
    "derive_session_keys",
    "hkdf_sha256",
    "new_nonce",
    "open_session",
    "transcript",
    "verify_proof",
]

NONCE_BYTES: Final = 32
MIN_NONCE_BYTES: Final = 16
PROOF_BYTES: Final = 32
KEY_BYTES: Final = 32
TAG_BYTES: Final = 16
_SEQ: Final = struct.Struct("<Q")
SEAL_OVERHEAD: Final = _SEQ.size + TAG_BYTES
_SEQ_LIMIT: Final = 1 << 64
_NONCE_PAD: Final = bytes(4)  # ChaCha20-Poly1305 nonces are 12 bytes: 4 zero bytes, then the sequence number

_LABEL: Final = b"ccied-p2p/1 "
_AUTH_SALT: Final = _LABEL + b"auth"
_PROOF_INFO: Final = b"proof"
_PROOF_LABEL: Final = _LABEL + b"proof"
_SESSION_INFO: Final = b"ccied-p2p/2 session"  # /2: the keys became AEAD keys (v1 keyed an HMAC)


class Role(StrEnum):
    """Which end of a connection a party is: the one that dialled, or the one that accepted."""

    INITIATOR = "initiator"
    RESPONDER = "responder"

    @property
    def peer(self) -> Role:
        return Role.RESPONDER if self is Role.INITIATOR else Role.INITIATOR


def new_nonce(randbytes: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """A fresh handshake nonce (``NONCE_BYTES`` from the OS CSPRNG unless another source is injected)."""
    nonce = randbytes(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise ConfigError(f"nonce source returned {len(nonce)} bytes, wanted {NONCE_BYTES}")
    return nonce


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF (RFC 5869) with SHA-256; an empty salt means the RFC's default (32 zero bytes)."""
    if not 0 < length <= 255 * 32:
        raise ConfigError(f"HKDF length {length} out of range")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


def _secret_bytes(secret: str | bytes) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ConfigError("the cluster secret is empty")
    return raw


def _field(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


def _hello_bytes(hello: Hello) -> bytes:
    if not 0 <= hello.protocol < 1 << 64 or not 0 <= hello.port <= 0xFFFF:
        raise EncodeError("hello protocol or port out of range")
    return b"".join(
        (
            _field(bytes(hello.node_id)),
            _field(hello.name.encode("utf-8", "surrogatepass")),
            _field(hello.fingerprint.encode("utf-8", "surrogatepass")),
            struct.pack("<QH", hello.protocol, hello.port),
            _field(bytes(hello.nonce)),
        )
    )


def transcript(initiator: Hello, responder: Hello) -> bytes:
    """Canonical bytes of both hellos, each field length-prefixed, initiator first."""
    return b"".join(
        (_field(b"initiator"), _hello_bytes(initiator), _field(b"responder"), _hello_bytes(responder))
    )


def _check_nonces(initiator: Hello, responder: Hello) -> None:
    for hello in (initiator, responder):
        if len(hello.nonce) < MIN_NONCE_BYTES:
            raise AuthenticationError(
                f"nonce of {len(hello.nonce)} bytes; at least {MIN_NONCE_BYTES} required"
            )
    if hmac.compare_digest(initiator.nonce, responder.nonce):
        raise AuthenticationError("both hellos carry the same nonce (a reflected hello)")


def compute_proof(secret: str | bytes, role: Role, initiator: Hello, responder: Hello) -> bytes:
    """The proof the party in ``role`` sends in its :class:`Auth` message."""
    _check_nonces(initiator, responder)
    key = hkdf_sha256(_secret_bytes(secret), _AUTH_SALT, _PROOF_INFO)
    message = b"".join(
        (_field(_PROOF_LABEL), _field(Role(role).value.encode()), transcript(initiator, responder))
    )
    return hmac.digest(key, message, "sha256")


def verify_proof(secret: str | bytes, role: Role, initiator: Hello, responder: Hello, proof: bytes) -> None:
    """Check the proof sent by the party in ``role``; AuthenticationError unless it is exactly right."""
    expected = compute_proof(secret, role, initiator, responder)
    if not isinstance(proof, bytes) or not hmac.compare_digest(expected, proof):
        raise AuthenticationError(f"bad handshake proof from the {Role(role).value}")


def clear_hello(hello: Hello) -> Hello:
    """The hello as it travels before any key exists: without the node's name and model fingerprint."""
    return dataclasses.replace(hello, name="", fingerprint="")


def check_identity(clear: Hello, sealed: Message) -> Hello:
    """The peer's full hello, its first sealed frame; it must repeat what its clear hello said."""
    if not isinstance(sealed, Hello):
        raise AuthenticationError(f"expected the sealed Hello first, got {type(sealed).__name__}")
    if (sealed.node_id, sealed.protocol, sealed.nonce, sealed.port) != (
        clear.node_id,
        clear.protocol,
        clear.nonce,
        clear.port,
    ):
        raise AuthenticationError("the sealed hello contradicts the clear one")
    return sealed


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """One 32-byte ChaCha20-Poly1305 key per direction of a connection."""

    initiator_to_responder: bytes
    responder_to_initiator: bytes

    def __repr__(self) -> str:
        return "SessionKeys(<redacted>)"


def derive_session_keys(secret: str | bytes, initiator: Hello, responder: Hello) -> SessionKeys:
    """Per-connection, per-direction AEAD keys from the secret, both nonces and the handshake transcript."""
    _check_nonces(initiator, responder)
    salt = _field(bytes(initiator.nonce)) + _field(bytes(responder.nonce))
    info = _SESSION_INFO + hashlib.sha256(transcript(initiator, responder)).digest()
    okm = hkdf_sha256(_secret_bytes(secret), salt, info, 64)
    return SessionKeys(okm[:32], okm[32:])


def _aead(key: bytes) -> ChaCha20Poly1305:
    if len(key) != KEY_BYTES:
        raise ConfigError(f"session key of {len(key)} bytes; ChaCha20-Poly1305 takes {KEY_BYTES}")
    return ChaCha20Poly1305(key)


class SessionSealer:
    """Encrypts each outgoing frame of one direction under the next sequence number."""

    __slots__ = ("_aead", "_seq")

    def __init__(self, key: bytes) -> None:
        self._aead = _aead(key)
        self._seq = 0

    @property
    def seq(self) -> int:
        """The sequence number the next sealed frame will carry."""
        return self._seq

    def seal(self, frame: bytes | bytearray | memoryview) -> bytes:
        """``seq | ciphertext | tag``; sequence numbers (the nonces) never repeat (EncodeError after 2**64)."""
        if self._seq >= _SEQ_LIMIT:
            raise EncodeError("session sequence numbers exhausted; reconnect")
        header = _SEQ.pack(self._seq)
        sealed = header + self._aead.encrypt(_NONCE_PAD + header, frame, header)
        self._seq += 1
        return sealed


class SessionOpener:
    """Authenticates and decrypts each incoming frame of one direction, in order and once."""

    __slots__ = ("_aead", "_broken", "_seq")

    def __init__(self, key: bytes) -> None:
        self._aead = _aead(key)
        self._seq = 0
        self._broken = False

    @property
    def seq(self) -> int:
        """The sequence number the next frame must carry."""
        return self._seq

    @property
    def broken(self) -> bool:
        """True once a frame failed: the opener then refuses everything."""
        return self._broken

    def open(self, sealed: bytes | bytearray | memoryview) -> bytes:
        """The frame inside ``sealed``; AuthenticationError for a bad tag, a replay, a gap or reordering."""
        if self._broken:
            raise AuthenticationError("session already failed an integrity check")
        view = memoryview(sealed).cast("B")
        if len(view) < SEAL_OVERHEAD:
            self._broken = True
            raise AuthenticationError(f"sealed frame of {len(view)} bytes is shorter than {SEAL_OVERHEAD}")
        header = bytes(view[: _SEQ.size])
        try:
            frame = self._aead.decrypt(_NONCE_PAD + header, view[_SEQ.size :], header)
        except InvalidTag:
            self._broken = True
            raise AuthenticationError("bad frame tag") from None
        (seq,) = _SEQ.unpack(header)
        if seq != self._seq:
            self._broken = True
            kind = "replayed" if seq < self._seq else "out-of-order"
            raise AuthenticationError(f"{kind} frame: sequence {seq}, expected {self._seq}")
        self._seq += 1
        return frame


def open_session(
    secret: str | bytes, role: Role, initiator: Hello, responder: Hello
) -> tuple[SessionSealer, SessionOpener]:
    """The sealer for what ``role`` sends and the opener for what it receives on this connection."""
    keys = derive_session_keys(secret, initiator, responder)
    if Role(role) is Role.INITIATOR:
        return SessionSealer(keys.initiator_to_responder), SessionOpener(keys.responder_to_initiator)
    return SessionSealer(keys.responder_to_initiator), SessionOpener(keys.initiator_to_responder)
