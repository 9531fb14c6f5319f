"""The metadata layout of every message type: its type byte, its fields in order, and their checks.

Each message type has an encoder (message -> msgpack-ready field list and the tensors to append) and a decoder
(field list, decoded tensors -> message) that run the same :class:`FieldCheck`, so anything that encodes also
decodes. :mod:`ccied_p2p.codec.wire` frames the result; the field-by-field table is in ``docs/wire-format.md``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, Final

import numpy as np

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
from ccied_p2p.codec.tensor import DEFAULT_LIMITS, FloatArray, Limits, TensorEncoding, get_encoding
from ccied_p2p.errors import EncodeError, EncodeLimitError, MalformedError

__all__ = [
    "DECODERS",
    "DECODE_CHECK",
    "ENCODERS",
    "ENCODE_CHECK",
    "FEATURE_ENCODING",
    "INPUT_FORMATS",
    "MESSAGE_TYPES",
    "NODE_ID_BYTES",
    "RETIRED_TYPES",
    "U64_MAX",
    "Decoder",
    "Encoder",
    "FieldCheck",
    "Tensors",
]

NODE_ID_BYTES: Final = 16
FEATURE_ENCODING: Final = "dense-f32"
"""Cache features travel exactly (they are small and key a nearest-neighbour index)."""

MESSAGE_TYPES: Final[dict[type[Any], int]] = {
    Hello: 1,
    Auth: 2,
    InferRequest: 3,
    InferResponse: 4,
    ErrorMessage: 5,
    Ping: 6,
    PingReq: 7,
    Ack: 8,
    Gossip: 9,
    Leave: 10,
    CacheSync: 11,
    CacheEntries: 12,
    InferInput: 15,
}
"""The message type byte of each message class."""

RETIRED_TYPES: Final[dict[int, str]] = {13: "CacheLookup", 14: "CacheLookupResult"}
"""Type bytes of removed messages (remote cache lookups, never sent by any node), never to be reassigned:
a frame carrying one is refused as a protocol error (UnsupportedError) naming what it was."""

U64_MAX: Final = (1 << 64) - 1
_I32_MIN: Final = -(1 << 31)
_I32_MAX: Final = (1 << 31) - 1
_U32_MAX: Final = (1 << 32) - 1

# ----------------------------------------------------------------------------------------------------
# Field checks. The same helpers run on encode (raising EncodeError) and decode (raising MalformedError), so
# anything that encodes also decodes.


class FieldCheck:
    __slots__ = ("error", "limit_error", "limits")

    def __init__(self, error: type[EncodeError] | type[MalformedError], limits: Limits) -> None:
        self.error = error
        # A value above a limit: the encoder says so by type; the decoder keeps MalformedError (msgpack's own
        # bounds already caught most such fields as malformed metadata).
        self.limit_error: type[EncodeError] | type[MalformedError] = (
            EncodeLimitError if error is EncodeError else error
        )
        self.limits = limits

    def fail(self, what: str) -> Exception:
        return self.error(what)

    def over(self, what: str) -> Exception:
        return self.limit_error(what)

    def int_(self, value: object, name: str, lo: int = 0, hi: int = U64_MAX) -> int:
        if type(value) is not int:
            # Encoding accepts numpy integers (labels from argmax); decoding only msgpack ints.
            if (
                self.error is not EncodeError
                or isinstance(value, bool)
                or not isinstance(value, numbers.Integral)
            ):
                raise self.fail(f"{name} must be an int, got {type(value).__name__}")
            value = int(value)
        if not lo <= value <= hi:
            raise self.fail(f"{name}={value} outside [{lo}, {hi}]")
        return value

    def float_(self, value: object, name: str) -> float:
        if type(value) is not float:
            if (
                self.error is not EncodeError
                or isinstance(value, bool)
                or not isinstance(value, numbers.Real)
            ):
                raise self.fail(f"{name} must be a float, got {type(value).__name__}")
            value = float(value)
        if math.isnan(value):
            raise self.fail(f"{name} is NaN")
        return value

    def str_(self, value: object, name: str) -> str:
        if type(value) is not str:
            raise self.fail(f"{name} must be a str, got {type(value).__name__}")
        # Decoding: msgpack already bounded the length. Encoding: only long strings need the UTF-8 count.
        if (
            self.error is EncodeError
            and len(value) * 4 > self.limits.max_string_bytes
            and len(value.encode("utf-8", "surrogatepass")) > self.limits.max_string_bytes
        ):
            raise self.over(f"{name} is longer than max_string_bytes={self.limits.max_string_bytes}")
        return value

    def bytes_(self, value: object, name: str, exact: int | None = None, long: bool = False) -> bytes:
        if type(value) is not bytes:
            raise self.fail(f"{name} must be bytes, got {type(value).__name__}")
        if exact is not None and len(value) != exact:
            raise self.fail(f"{name} must be {exact} bytes, got {len(value)}")
        bound, limit = (
            (self.limits.max_input_bytes, "max_input_bytes")
            if long
            else (self.limits.max_bytes_len, "max_bytes_len")
        )
        if len(value) > bound:
            raise self.over(f"{name} is longer than {limit}={bound}")
        return value

    def seq(self, value: object, name: str, length: int | None = None) -> list[Any] | tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise self.fail(f"{name} must be a sequence, got {type(value).__name__}")
        if length is not None and len(value) != length:
            raise self.fail(f"{name} must have {length} fields, got {len(value)}")
        if len(value) > self.limits.max_items:
            raise self.over(f"{name} has {len(value)} items, limit max_items={self.limits.max_items}")
        return value


# Both sides check the same table: before this, the encoder used looser bounds, and an InferResponse with
# 1 025 labels encoded but did not decode.
ENCODE_CHECK = FieldCheck(EncodeError, DEFAULT_LIMITS)
DECODE_CHECK = FieldCheck(MalformedError, DEFAULT_LIMITS)

# ----------------------------------------------------------------------------------------------------
# Nested structures: MemberUpdate (with LoadReport and CacheSummary) and CacheEntry metadata.


def _load_out(c: FieldCheck, load: LoadReport) -> list[Any]:
    return [
        c.int_(load.version, "load.version"),
        c.int_(load.queue_depth, "load.queue_depth"),
        c.float_(load.tail_ms, "load.tail_ms"),
        c.float_(load.service_rate, "load.service_rate"),
        c.float_(load.model_ms, "load.model_ms"),
        c.float_(load.head_ms, "load.head_ms"),
    ]


def _load_in(c: FieldCheck, raw: object) -> LoadReport:
    f = c.seq(raw, "load", 6)
    return LoadReport(
        version=c.int_(f[0], "load.version"),
        queue_depth=c.int_(f[1], "load.queue_depth"),
        tail_ms=c.float_(f[2], "load.tail_ms"),
        service_rate=c.float_(f[3], "load.service_rate"),
        model_ms=c.float_(f[4], "load.model_ms"),
        head_ms=c.float_(f[5], "load.head_ms"),
    )


def _summary_out(c: FieldCheck, cache: CacheSummary) -> list[Any]:
    if not isinstance(cache.label_counts, dict):
        raise c.fail("cache.label_counts must be a dict")
    pairs = [
        [c.int_(k, "label", _I32_MIN, _I32_MAX), c.int_(v, "label count")]
        for k, v in cache.label_counts.items()
    ]
    return [
        c.int_(cache.version, "cache.version"),
        c.int_(cache.entries, "cache.entries"),
        c.bytes_(cache.digest, "cache.digest"),
        c.float_(cache.hit_rate, "cache.hit_rate"),
        c.seq(pairs, "cache.label_counts"),
    ]


def _summary_in(c: FieldCheck, raw: object) -> CacheSummary:
    f = c.seq(raw, "cache", 5)
    counts: dict[int, int] = {}
    for pair in c.seq(f[4], "cache.label_counts"):
        p = c.seq(pair, "label count pair", 2)
        label = c.int_(p[0], "label", _I32_MIN, _I32_MAX)
        if label in counts:
            raise c.fail(f"label {label} counted twice")
        counts[label] = c.int_(p[1], "label count")
    return CacheSummary(
        version=c.int_(f[0], "cache.version"),
        entries=c.int_(f[1], "cache.entries"),
        digest=c.bytes_(f[2], "cache.digest"),
        hit_rate=c.float_(f[3], "cache.hit_rate"),
        label_counts=counts,
    )


def _member_out(c: FieldCheck, m: MemberUpdate) -> list[Any]:
    if not isinstance(m, MemberUpdate):
        raise c.fail(f"updates must hold MemberUpdate, got {type(m).__name__}")
    if not isinstance(m.state, MemberState):
        raise c.fail(f"member state must be a MemberState, got {m.state!r}")
    return [
        c.bytes_(m.node_id, "node_id", NODE_ID_BYTES),
        c.str_(m.name, "name"),
        c.str_(m.host, "host"),
        c.int_(m.port, "port", 0, 0xFFFF),
        c.str_(m.fingerprint, "fingerprint"),
        m.state.value,
        c.int_(m.incarnation, "incarnation"),
        None if m.load is None else _load_out(c, m.load),
        None if m.cache is None else _summary_out(c, m.cache),
    ]


def _state_in(c: FieldCheck, raw: object) -> MemberState:
    text = c.str_(raw, "state")
    try:
        return MemberState(text)
    except ValueError:
        raise c.fail(f"unknown member state {text!r}") from None


def _member_in(c: FieldCheck, raw: object) -> MemberUpdate:
    f = c.seq(raw, "member", 9)
    return MemberUpdate(
        node_id=c.bytes_(f[0], "node_id", NODE_ID_BYTES),
        name=c.str_(f[1], "name"),
        host=c.str_(f[2], "host"),
        port=c.int_(f[3], "port", 0, 0xFFFF),
        fingerprint=c.str_(f[4], "fingerprint"),
        state=_state_in(c, f[5]),
        incarnation=c.int_(f[6], "incarnation"),
        load=None if f[7] is None else _load_in(c, f[7]),
        cache=None if f[8] is None else _summary_in(c, f[8]),
    )


def _updates_out(c: FieldCheck, updates: object) -> list[Any]:
    return [_member_out(c, m) for m in c.seq(updates, "updates")]


def _updates_in(c: FieldCheck, raw: object) -> tuple[MemberUpdate, ...]:
    return tuple(_member_in(c, m) for m in c.seq(raw, "updates"))


# ----------------------------------------------------------------------------------------------------
# Per message type: fields -> (metadata list, tensors) and back.

Tensors = list[tuple[FloatArray, TensorEncoding]]


def _out_hello(c: FieldCheck, m: Hello) -> tuple[list[Any], Tensors]:
    return [
        c.bytes_(m.node_id, "node_id", NODE_ID_BYTES),
        c.str_(m.name, "name"),
        c.str_(m.fingerprint, "fingerprint"),
        c.int_(m.protocol, "protocol", 0, _U32_MAX),
        c.bytes_(m.nonce, "nonce"),
        c.int_(m.port, "port", 0, 0xFFFF),
    ], []


def _in_hello(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> Hello:
    return Hello(
        node_id=c.bytes_(f[0], "node_id", NODE_ID_BYTES),
        name=c.str_(f[1], "name"),
        fingerprint=c.str_(f[2], "fingerprint"),
        protocol=c.int_(f[3], "protocol", 0, _U32_MAX),
        nonce=c.bytes_(f[4], "nonce"),
        port=c.int_(f[5], "port", 0, 0xFFFF),
    )


def _out_auth(c: FieldCheck, m: Auth) -> tuple[list[Any], Tensors]:
    return [c.bytes_(m.proof, "proof")], []


def _in_auth(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> Auth:
    return Auth(proof=c.bytes_(f[0], "proof"))


def _out_infer_request(c: FieldCheck, m: InferRequest) -> tuple[list[Any], Tensors]:
    if not isinstance(m.activation, np.ndarray) or m.activation.ndim < 1:
        raise c.fail("activation must be a numpy array with a batch axis")
    return [
        c.int_(m.request_id, "request_id"),
        c.str_(m.fingerprint, "fingerprint"),
        c.str_(m.split, "split"),
    ], [(m.activation, get_encoding(m.encoding))]


def _in_infer_request(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> InferRequest:
    if t[0].ndim < 1:
        raise c.fail("activation must have a batch axis")
    return InferRequest(
        request_id=c.int_(f[0], "request_id"),
        fingerprint=c.str_(f[1], "fingerprint"),
        split=c.str_(f[2], "split"),
        activation=t[0],
        encoding=enc[0],
    )


INPUT_FORMATS: Final = ("jpeg", "raw")


def _shape(c: FieldCheck, raw: object) -> tuple[int, ...]:
    dims = c.seq(raw, "shape")
    if not 1 <= len(dims) <= c.limits.max_ndim:
        raise c.fail(f"shape must have 1..{c.limits.max_ndim} dimensions, got {len(dims)}")
    return tuple(c.int_(d, "dimension", 1, c.limits.max_dim) for d in dims)


def _out_infer_input(c: FieldCheck, m: InferInput) -> tuple[list[Any], Tensors]:
    fmt = c.str_(m.format, "format")
    if fmt not in INPUT_FORMATS:
        raise c.fail(f"format must be one of {INPUT_FORMATS}, got {fmt!r}")
    shape = _shape(c, m.shape)
    tensors: Tensors = []
    if fmt == "raw":
        if not isinstance(m.tensor, np.ndarray) or tuple(m.tensor.shape) != (1, *shape):
            raise c.fail(f"a raw input must be a numpy array shaped (1, *{shape})")
        if m.data:
            raise c.fail("a raw input carries no JPEG bytes")
        tensors.append((m.tensor, get_encoding(m.encoding)))
    elif m.tensor is not None:
        raise c.fail("a JPEG input carries no tensor")
    meta = [
        c.int_(m.request_id, "request_id"),
        c.str_(m.fingerprint, "fingerprint"),
        c.str_(m.preprocess, "preprocess"),
        fmt,
        list(shape),
        c.bytes_(m.data, "data", long=True),
    ]
    return meta, tensors


def _in_infer_input(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> InferInput:
    fmt = c.str_(f[3], "format")
    if fmt not in INPUT_FORMATS:
        raise c.fail(f"format must be one of {INPUT_FORMATS}, got {fmt!r}")
    shape = _shape(c, f[4])
    data = c.bytes_(f[5], "data", long=True)
    if fmt == "raw":
        if len(t) != 1 or data:
            raise c.fail("a raw input carries one tensor and no JPEG bytes")
        if tuple(t[0].shape) != (1, *shape):
            raise c.fail(f"raw input {t[0].shape}, expected (1, *{shape})")
    elif t:
        raise c.fail("a JPEG input carries no tensor")
    return InferInput(
        request_id=c.int_(f[0], "request_id"),
        fingerprint=c.str_(f[1], "fingerprint"),
        preprocess=c.str_(f[2], "preprocess"),
        format=fmt,
        shape=shape,
        data=data,
        tensor=t[0] if t else None,
        encoding=enc[0] if enc else "dense-f32",
    )


def _out_infer_response(c: FieldCheck, m: InferResponse) -> tuple[list[Any], Tensors]:
    labels = [c.int_(x, "label", _I32_MIN, _I32_MAX) for x in c.seq(m.labels, "labels")]
    confidences = [c.float_(x, "confidence") for x in c.seq(m.confidences, "confidences")]
    if len(labels) != len(confidences):
        raise c.fail(f"{len(labels)} labels but {len(confidences)} confidences")
    if not isinstance(m.timings, dict):
        raise c.fail("timings must be a dict")
    if len(m.timings) > c.limits.max_items:
        raise c.over(f"timings has {len(m.timings)} entries, limit max_items={c.limits.max_items}")
    timings = {c.str_(k, "timing name"): c.float_(v, "timing") for k, v in m.timings.items()}
    return [c.int_(m.request_id, "request_id"), labels, confidences, timings], []


def _in_infer_response(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> InferResponse:
    labels = tuple(c.int_(x, "label", _I32_MIN, _I32_MAX) for x in c.seq(f[1], "labels"))
    confidences = tuple(c.float_(x, "confidence") for x in c.seq(f[2], "confidences"))
    if len(labels) != len(confidences):
        raise c.fail(f"{len(labels)} labels but {len(confidences)} confidences")
    if not isinstance(f[3], dict):
        raise c.fail("timings must be a map")
    timings = {c.str_(k, "timing name"): c.float_(v, "timing") for k, v in f[3].items()}
    return InferResponse(
        request_id=c.int_(f[0], "request_id"), labels=labels, confidences=confidences, timings=timings
    )


def _out_error(c: FieldCheck, m: ErrorMessage) -> tuple[list[Any], Tensors]:
    return [c.int_(m.request_id, "request_id"), c.str_(m.code, "code"), c.str_(m.message, "message")], []


def _in_error(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> ErrorMessage:
    return ErrorMessage(
        request_id=c.int_(f[0], "request_id"), code=c.str_(f[1], "code"), message=c.str_(f[2], "message")
    )


def _out_ping(c: FieldCheck, m: Ping) -> tuple[list[Any], Tensors]:
    return [c.int_(m.seq, "seq"), _updates_out(c, m.updates)], []


def _in_ping(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> Ping:
    return Ping(seq=c.int_(f[0], "seq"), updates=_updates_in(c, f[1]))


def _out_ping_req(c: FieldCheck, m: PingReq) -> tuple[list[Any], Tensors]:
    return [c.int_(m.seq, "seq"), c.bytes_(m.target, "target", NODE_ID_BYTES), _updates_out(c, m.updates)], []


def _in_ping_req(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> PingReq:
    return PingReq(
        seq=c.int_(f[0], "seq"), target=c.bytes_(f[1], "target", NODE_ID_BYTES), updates=_updates_in(c, f[2])
    )


def _out_ack(c: FieldCheck, m: Ack) -> tuple[list[Any], Tensors]:
    return [c.int_(m.seq, "seq"), c.bytes_(m.target, "target", NODE_ID_BYTES), _updates_out(c, m.updates)], []


def _in_ack(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> Ack:
    return Ack(
        seq=c.int_(f[0], "seq"), target=c.bytes_(f[1], "target", NODE_ID_BYTES), updates=_updates_in(c, f[2])
    )


def _out_gossip(c: FieldCheck, m: Gossip) -> tuple[list[Any], Tensors]:
    return [_updates_out(c, m.updates)], []


def _in_gossip(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> Gossip:
    return Gossip(updates=_updates_in(c, f[0]))


def _out_leave(c: FieldCheck, m: Leave) -> tuple[list[Any], Tensors]:
    return [c.bytes_(m.node_id, "node_id", NODE_ID_BYTES), c.int_(m.incarnation, "incarnation")], []


def _in_leave(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> Leave:
    return Leave(node_id=c.bytes_(f[0], "node_id", NODE_ID_BYTES), incarnation=c.int_(f[1], "incarnation"))


def _out_cache_sync(c: FieldCheck, m: CacheSync) -> tuple[list[Any], Tensors]:
    known = []
    for pair in c.seq(m.known, "known"):
        p = c.seq(pair, "known pair", 2)
        known.append([c.bytes_(p[0], "origin", NODE_ID_BYTES), c.int_(p[1], "version")])
    return [known, c.int_(m.max_bytes, "max_bytes")], []


def _in_cache_sync(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> CacheSync:
    known = []
    for pair in c.seq(f[0], "known"):
        p = c.seq(pair, "known pair", 2)
        known.append((c.bytes_(p[0], "origin", NODE_ID_BYTES), c.int_(p[1], "version")))
    return CacheSync(known=tuple(known), max_bytes=c.int_(f[1], "max_bytes"))


def _entry_out(c: FieldCheck, e: CacheEntry) -> list[Any]:
    if not isinstance(e, CacheEntry):
        raise c.fail(f"entries must hold CacheEntry, got {type(e).__name__}")
    _feature_out(c, e.feature)
    return [
        c.int_(e.label, "label", _I32_MIN, _I32_MAX),
        c.float_(e.confidence, "confidence"),
        c.str_(e.fingerprint, "fingerprint"),
        c.bytes_(e.origin, "origin", NODE_ID_BYTES),
        c.int_(e.version, "version"),
        c.float_(e.created, "created"),
    ]


def _feature_out(c: FieldCheck, feature: object) -> None:
    if not isinstance(feature, np.ndarray) or feature.ndim != 1:
        raise c.fail("a feature must be a 1-D numpy array")


def _feature_in(c: FieldCheck, feature: FloatArray) -> FloatArray:
    if feature.ndim != 1:
        raise c.fail(f"a feature must be 1-D, got shape {feature.shape}")
    return feature


def _out_cache_entries(c: FieldCheck, m: CacheEntries) -> tuple[list[Any], Tensors]:
    entries = c.seq(m.entries, "entries")
    meta = [_entry_out(c, e) for e in entries]
    feature = get_encoding(FEATURE_ENCODING)
    return [meta], [(e.feature, feature) for e in entries]


def _in_cache_entries(c: FieldCheck, f: list[Any], t: list[FloatArray], enc: list[str]) -> CacheEntries:
    rows = c.seq(f[0], "entries")
    if len(rows) != len(t):
        raise c.fail(f"{len(rows)} entries but {len(t)} feature tensors")
    entries = []
    for row, feature in zip(rows, t, strict=True):
        e = c.seq(row, "entry", 6)
        entries.append(
            CacheEntry(
                feature=_feature_in(c, feature),
                label=c.int_(e[0], "label", _I32_MIN, _I32_MAX),
                confidence=c.float_(e[1], "confidence"),
                fingerprint=c.str_(e[2], "fingerprint"),
                origin=c.bytes_(e[3], "origin", NODE_ID_BYTES),
                version=c.int_(e[4], "version"),
                created=c.float_(e[5], "created"),
            )
        )
    return CacheEntries(entries=tuple(entries))


Encoder = Callable[[FieldCheck, Any], tuple[list[Any], Tensors]]
"""A message -> its metadata fields (msgpack-ready) and the tensors to append, with their encodings."""
Decoder = Callable[[FieldCheck, list[Any], list[FloatArray], list[str]], Message]
"""Metadata fields, decoded tensors and their encodings' names -> the message."""
ENCODERS: Final[dict[type[Any], Encoder]] = {
    Hello: _out_hello,
    Auth: _out_auth,
    InferRequest: _out_infer_request,
    InferResponse: _out_infer_response,
    ErrorMessage: _out_error,
    Ping: _out_ping,
    PingReq: _out_ping_req,
    Ack: _out_ack,
    Gossip: _out_gossip,
    Leave: _out_leave,
    CacheSync: _out_cache_sync,
    CacheEntries: _out_cache_entries,
    InferInput: _out_infer_input,
}
DECODERS: Final[dict[int, tuple[int, int | None, Decoder]]] = {
    1: (6, 0, _in_hello),
    2: (1, 0, _in_auth),
    3: (3, 1, _in_infer_request),
    4: (4, 0, _in_infer_response),
    5: (3, 0, _in_error),
    6: (2, 0, _in_ping),
    7: (3, 0, _in_ping_req),
    8: (3, 0, _in_ack),
    9: (1, 0, _in_gossip),
    10: (2, 0, _in_leave),
    11: (2, 0, _in_cache_sync),
    12: (1, None, _in_cache_entries),
    15: (6, None, _in_infer_input),
}
