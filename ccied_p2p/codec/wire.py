"""Frames: every message of :mod:`ccied_p2p.codec.messages` as bytes, and back, strictly bounded.

A frame is an 8-byte header, msgpack metadata, then tensor blobs (:mod:`ccied_p2p.codec.tensor`)::

    u8 version (1) | u8 message type | u16 tensor count T | u32 metadata length M
    M bytes msgpack array (the message's fields, positional; tensors left out)
    T x (u32 blob length L | L bytes tensor blob)

Nothing may follow the last blob. Field-by-field layouts per message type are in ``docs/wire-format.md`` and,
as code (type bytes, field encoders, decoders and their checks), in :mod:`ccied_p2p.codec.layouts`.
:func:`decode_message` checks every length, count, range and type against :class:`Limits` before it
allocates, and raises only :class:`~ccied_p2p.errors.CodecError` subclasses on bad bytes;
:func:`encode_message` checks the same :class:`Limits` and raises :class:`~ccied_p2p.errors.EncodeError`
(:class:`~ccied_p2p.errors.EncodeLimitError` above a limit) for a message the other side would refuse.

Decoding in two steps lets a receiver refuse before it allocates: :func:`peek_message` checks the framing and
metadata and reads every tensor's shape from its header (a :class:`Frame`); :meth:`Frame.decode` then
inflates the tensors and builds the message.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from ccied_p2p.codec.layouts import (
    DECODE_CHECK,
    DECODERS,
    ENCODE_CHECK,
    ENCODERS,
    FEATURE_ENCODING,
    INPUT_FORMATS,
    MESSAGE_TYPES,
    NODE_ID_BYTES,
    RETIRED_TYPES,
    U64_MAX,
    FieldCheck,
)
from ccied_p2p.codec.messages import (
    ErrorMessage,
    InferInput,
    InferRequest,
    InferResponse,
    Message,
)
from ccied_p2p.codec.tensor import (
    DEFAULT_LIMITS,
    Buffer,
    Limits,
    encoding_of,
    peek_shape,
)
from ccied_p2p.errors import (
    EncodeError,
    EncodeLimitError,
    LimitExceededError,
    MalformedError,
    TruncatedError,
    UnsupportedError,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FEATURE_ENCODING",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "INPUT_FORMATS",
    "MESSAGE_TYPES",
    "NODE_ID_BYTES",
    "RETIRED_TYPES",
    "Frame",
    "Limits",
    "TensorInfo",
    "decode_message",
    "encode_message",
    "message_type",
    "peek_message",
]

FORMAT_VERSION: Final = 1

_HEADER: Final = struct.Struct("<BBHI")
HEADER_SIZE: Final = _HEADER.size
_U32: Final = struct.Struct("<I")


def message_type(data: Buffer) -> int:
    """The message type byte of a frame, after checking the header's version; CodecError if unreadable."""
    if len(data) < HEADER_SIZE:
        raise TruncatedError(f"frame of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    version, mtype, _, _ = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise UnsupportedError(f"unknown frame format version {version}")
    return int(mtype)


def encode_message(msg: Message, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The frame for ``msg``; EncodeError if a field cannot be represented (type, range, NaN, ...) and
    EncodeLimitError if the frame breaks a bound of ``limits`` that :func:`decode_message` enforces."""
    out = ENCODERS.get(type(msg))
    if out is None:
        raise EncodeError(f"not a wire message: {type(msg).__name__}")
    meta, tensors = out(ENCODE_CHECK if limits is DEFAULT_LIMITS else FieldCheck(EncodeError, limits), msg)
    try:
        packed = msgpack.packb(meta, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"metadata does not pack: {exc}") from None
    if len(packed) > limits.max_metadata_bytes:
        raise EncodeLimitError(
            f"metadata of {len(packed)} bytes, limit max_metadata_bytes={limits.max_metadata_bytes}"
        )
    if len(tensors) > limits.max_tensors:
        raise EncodeLimitError(f"{len(tensors)} tensors, limit max_tensors={limits.max_tensors}")
    parts: list[bytes] = [
        _HEADER.pack(FORMAT_VERSION, MESSAGE_TYPES[type(msg)], len(tensors), len(packed)),
        packed,
    ]
    size = HEADER_SIZE + len(packed)
    budget = limits.max_elements  # per frame, as the decoder counts it
    for array, encoding in tensors:
        blob = encoding.encode(array, limits, max_elements=budget)
        budget -= math.prod(array.shape)
        parts.append(_U32.pack(len(blob)))
        parts.append(blob)
        size += 4 + len(blob)
    if size > limits.max_frame_bytes:
        raise EncodeLimitError(f"frame of {size} bytes, limit max_frame_bytes={limits.max_frame_bytes}")
    return b"".join(parts)


def _unpack_metadata(meta: Buffer, limits: Limits) -> list[Any]:
    try:
        obj = msgpack.unpackb(
            meta,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limits.max_string_bytes,
            max_bin_len=max(limits.max_bytes_len, limits.max_input_bytes),
            max_array_len=limits.max_items,
            max_map_len=limits.max_items,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise MalformedError("bytes after the metadata object") from None
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        # msgpack raises ValueError subclasses for truncation, bad bytes, over-long fields and stack depth.
        raise MalformedError(f"metadata is not valid msgpack within limits: {exc}") from None
    if type(obj) is not list:
        raise MalformedError(f"metadata must be a msgpack array, got {type(obj).__name__}")
    return obj


_HAS_REQUEST_ID: Final = frozenset(
    MESSAGE_TYPES[t] for t in (InferRequest, InferResponse, ErrorMessage, InferInput)
)
_CLASS_OF: Final[dict[int, type[Any]]] = {code: cls for cls, code in MESSAGE_TYPES.items()}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """What a tensor blob's header declares: enough to refuse it before it is inflated."""

    encoding: str
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def decoded_bytes(self) -> int:
        """The float32 array it decodes to (decompression and bitmaps add at most as much again, briefly)."""
        return 4 * self.elements


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """A frame whose header, metadata and tensor headers passed :class:`Limits`; tensors not yet decoded.

    ``request_id`` is the message's request id when its type has one and the field is a valid u64.
    """

    kind: type[Message]
    request_id: int | None
    tensors: tuple[TensorInfo, ...]
    _fields: list[Any]
    _blobs: tuple[memoryview, ...]
    _limits: Limits

    @property
    def decoded_bytes(self) -> int:
        return sum(t.decoded_bytes for t in self.tensors)

    @property
    def fields(self) -> tuple[Any, ...]:
        """The metadata fields as msgpack gave them (types not yet checked: admission must not trust them)."""
        return tuple(self._fields)

    def decode(self) -> Message:
        """Inflate the tensors and build the message; only CodecError subclasses escape."""
        limits = self._limits
        tensors = []
        encodings = []
        budget = limits.max_elements
        for blob in self._blobs:
            encoding = encoding_of(blob)
            tensor = encoding.decode(blob, limits, max_elements=budget)
            budget -= tensor.size
            tensors.append(tensor)
            encodings.append(encoding.name)
        check = DECODE_CHECK if limits is DEFAULT_LIMITS else FieldCheck(MalformedError, limits)
        return DECODERS[MESSAGE_TYPES[self.kind]][2](check, self._fields, tensors, encodings)


def peek_message(
    data: Buffer, limits: Limits = DEFAULT_LIMITS, only: Collection[type[Any]] | None = None
) -> Frame:
    """Check a frame's framing, metadata and tensor headers without decoding any tensor.

    ``only``: the message classes acceptable here (a handshake wants Hello and Auth); any other type is
    refused (UnsupportedError) before its metadata is read.
    """
    if len(data) > limits.max_frame_bytes:
        raise LimitExceededError(f"frame of {len(data)} bytes, limit {limits.max_frame_bytes}")
    view = memoryview(data).cast("B")  # slices below share the input's memory: no copies of tensor payloads
    mtype = message_type(view)
    _, _, count, meta_len = _HEADER.unpack_from(view)
    spec = DECODERS.get(mtype)
    if mtype in RETIRED_TYPES:
        raise UnsupportedError(f"message type {mtype} ({RETIRED_TYPES[mtype]}) is retired; no node sends it")
    if spec is None:
        raise UnsupportedError(f"unknown message type {mtype}")
    kind = _CLASS_OF[mtype]
    if only is not None and kind not in only:
        raise UnsupportedError(f"a {kind.__name__} is not acceptable here")
    if meta_len > limits.max_metadata_bytes:
        raise LimitExceededError(f"metadata of {meta_len} bytes, limit {limits.max_metadata_bytes}")
    if count > limits.max_tensors:
        raise LimitExceededError(f"{count} tensors, limit {limits.max_tensors}")
    end = HEADER_SIZE + meta_len
    if len(view) < end:
        raise TruncatedError(f"frame ends inside its {meta_len}-byte metadata")
    fields = _unpack_metadata(view[HEADER_SIZE:end], limits)

    n_fields, fixed, _ = spec
    n_tensors = fixed if fixed is not None else count
    if len(fields) != n_fields:
        raise MalformedError(f"message type {mtype} has {n_fields} fields, got {len(fields)}")
    if count != n_tensors:
        raise MalformedError(f"message type {mtype} carries {n_tensors} tensors, header says {count}")

    # Walk the length table first: the framing is checked before any tensor header is read.
    blobs = []
    offset = end
    for _ in range(count):
        if len(view) < offset + 4:
            raise TruncatedError("frame ends inside a tensor length")
        (length,) = _U32.unpack_from(view, offset)
        offset += 4
        if len(view) < offset + length:
            raise TruncatedError(f"frame ends inside a {length}-byte tensor")
        blobs.append(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise MalformedError(f"{len(view) - offset} bytes after the last tensor")

    # One element budget per frame, from the headers alone.
    infos = []
    budget = limits.max_elements
    for blob in blobs:
        shape = peek_shape(blob, limits, max_elements=budget)
        info = TensorInfo(encoding_of(blob).name, shape)
        budget -= info.elements
        infos.append(info)

    request_id = None
    if mtype in _HAS_REQUEST_ID:
        rid = fields[0]
        if type(rid) is int and 0 <= rid <= U64_MAX:
            request_id = rid
    return Frame(kind, request_id, tuple(infos), fields, tuple(blobs), limits)


def decode_message(
    data: Buffer, limits: Limits = DEFAULT_LIMITS, only: Collection[type[Any]] | None = None
) -> Message:
    """The message in a frame; only CodecError subclasses escape, for any bytes at all."""
    return peek_message(data, limits, only).decode()
