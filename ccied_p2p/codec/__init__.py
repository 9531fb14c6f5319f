"""The wire codec, pure (no I/O, no clock): messages, frames, tensor encodings and authentication.

- :mod:`ccied_p2p.codec.messages` the message dataclasses peers exchange
- :mod:`ccied_p2p.codec.wire`     frames: :func:`encode_message`, :func:`decode_message` (bounded)
- :mod:`ccied_p2p.codec.layouts`  each message type's byte and field layout: encoders, decoders, checks
- :mod:`ccied_p2p.codec.tensor`   tensor encodings (strategies): dense / sparse x f32 / f16 / i8, optional lz4
- :mod:`ccied_p2p.codec.auth`     HMAC handshake proofs, HKDF session keys, ChaCha20-Poly1305 seal / open
- :mod:`ccied_p2p.codec.session`  :class:`Session`: one link's handshake, sealed frames and request ids, sans I/O

Frame format, version 1 (all integers little-endian; full field-by-field layout in ``docs/wire-format.md``)::

    u8 version=1 | u8 type | u16 tensor count T | u32 metadata length M
    M bytes msgpack array: the message's fields in dataclass order, tensors left out
    T x (u32 length L | L bytes tensor blob)

    tensor blob: u8 encoding id | u8 ndim | ndim x u32 shape | [u32 body size | lz4 block]  or  body
    sparse body: channel mask | nonzero bitmap of kept channels | [i8: f32 scale per kept channel] | values

On an authenticated connection each frame travels encrypted as ``u64 seq | ChaCha20-Poly1305(frame) | 16-byte tag``.
Decoding raises only :class:`~ccied_p2p.errors.CodecError` subclasses (opening a sealed frame only
:class:`~ccied_p2p.errors.AuthenticationError`); encoding raises :class:`~ccied_p2p.errors.EncodeError`.
"""

from __future__ import annotations

from ccied_p2p.codec.auth import (
    Role,
    SessionKeys,
    SessionOpener,
    SessionSealer,
    compute_proof,
    derive_session_keys,
    new_nonce,
    open_session,
    verify_proof,
)
from ccied_p2p.codec.messages import (
    Ack,
    Auth,
    CacheEntries,
    CacheEntry,
    CacheSummary,
    CacheSync,
    ErrorMessage,
    Gossip,
    Hello,
    InferInput,
    InferRequest,
    InferResponse,
    Leave,
    LoadReport,
    MemberState,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
)
from ccied_p2p.codec.tensor import (
    DEFAULT_LIMITS,
    ENCODINGS,
    Limits,
    TensorEncoding,
    decode_tensor,
    encode_tensor,
    get_encoding,
)
from ccied_p2p.codec.wire import FORMAT_VERSION, decode_message, encode_message, message_type

__all__ = [
    "DEFAULT_LIMITS",
    "ENCODINGS",
    "FORMAT_VERSION",
    "Ack",
    "Auth",
    "CacheEntries",
    "CacheEntry",
    "CacheSummary",
    "CacheSync",
    "ErrorMessage",
    "Gossip",
    "Hello",
    "InferInput",
    "InferRequest",
    "InferResponse",
    "Leave",
    "Limits",
    "LoadReport",
    "MemberState",
    "MemberUpdate",
    "Message",
    "Ping",
    "PingReq",
    "Role",
    "SessionKeys",
    "SessionOpener",
    "SessionSealer",
    "TensorEncoding",
    "compute_proof",
    "decode_message",
    "decode_tensor",
    "derive_session_keys",
    "encode_message",
    "encode_tensor",
    "get_encoding",
    "message_type",
    "new_nonce",
    "open_session",
    "verify_proof",
]
