"""Frames: every message round-trips; decoding is strict, bounded, and only ever raises CodecError."""

from __future__ import annotations

import ast
import dataclasses
import struct
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ccied_p2p.codec as codec
from ccied_p2p.codec import messages as m
from ccied_p2p.codec.tensor import DEFAULT_LIMITS, ENCODINGS, encode_tensor
from ccied_p2p.codec.wire import (
    FORMAT_VERSION,
    MESSAGE_TYPES,
    RETIRED_TYPES,
    Limits,
    decode_message,
    encode_message,
    message_type,
    peek_message,
)
from ccied_p2p.errors import (
    CodecError,
    EncodeError,
    LimitExceededError,
    MalformedError,
    TruncatedError,
    UnsupportedError,
)

PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies for every message -------------------------------------------------------------------------------

node_ids = st.binary(min_size=16, max_size=16)
texts = st.text(max_size=40)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
floats = st.floats(allow_nan=False)
small_bytes = st.binary(max_size=64)
features = st.integers(0, 64).flatmap(
    lambda n: st.lists(st.floats(-1e6, 1e6, width=32), min_size=n, max_size=n).map(
        lambda v: np.array(v, dtype=np.float32)
    )
)
loads = st.builds(
    m.LoadReport,
    version=u64,
    queue_depth=u64,
    tail_ms=floats,
    service_rate=floats,
    model_ms=floats,
    head_ms=floats,
)
summaries = st.builds(
    m.CacheSummary,
    version=u64,
    entries=u64,
    digest=small_bytes,
    hit_rate=floats,
    label_counts=st.dictionaries(i32, u64, max_size=10),
)
members = st.builds(
    m.MemberUpdate,
    node_id=node_ids,
    name=texts,
    host=texts,
    port=st.integers(0, 65535),
    fingerprint=texts,
    state=st.sampled_from(m.MemberState),
    incarnation=u64,
    load=st.none() | loads,
    cache=st.none() | summaries,
)
updates = st.lists(members, max_size=4).map(tuple)


@st.composite
def activations(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    n = draw(st.integers(0, 3))
    c = draw(st.integers(0, 8))
    s = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    x = np.maximum(rng.standard_normal((n, c, s, s)).astype(np.float32), 0)
    x[:, rng.random(c) < 0.75] = 0
    return x


@st.composite
def infer_responses(draw: st.DrawFn) -> m.InferResponse:
    k = draw(st.integers(0, 8))
    return m.InferResponse(
        request_id=draw(u64),
        labels=tuple(draw(st.lists(i32, min_size=k, max_size=k))),
        confidences=tuple(draw(st.lists(floats, min_size=k, max_size=k))),
        timings=draw(st.dictionaries(texts, floats, max_size=5)),
    )


entries = st.builds(
    m.CacheEntry,
    feature=features,
    label=i32,
    confidence=floats,
    fingerprint=texts,
    origin=node_ids,
    version=u64,
    created=floats,
)

MESSAGES: dict[type[Any], st.SearchStrategy[Any]] = {
    m.Hello: st.builds(
        m.Hello,
        node_id=node_ids,
        name=texts,
        fingerprint=texts,
        protocol=st.integers(0, 2**32 - 1),
        nonce=small_bytes,
        port=st.integers(0, 65535),
    ),
    m.Auth: st.builds(m.Auth, proof=small_bytes),
    m.InferRequest: st.builds(
        m.InferRequest,
        request_id=u64,
        fingerprint=texts,
        split=texts,
        activation=activations(),
        encoding=st.sampled_from(sorted(n for n in ENCODINGS if "-f32" in n)),
    ),
    m.InferResponse: infer_responses(),
    m.ErrorMessage: st.builds(m.ErrorMessage, request_id=u64, code=texts, message=texts),
    m.Ping: st.builds(m.Ping, seq=u64, updates=updates),
    m.PingReq: st.builds(m.PingReq, seq=u64, target=node_ids, updates=updates),
    m.Ack: st.builds(m.Ack, seq=u64, target=node_ids, updates=updates),
    m.Gossip: st.builds(m.Gossip, updates=updates),
    m.Leave: st.builds(m.Leave, node_id=node_ids, incarnation=u64),
    m.CacheSync: st.builds(
        m.CacheSync, known=st.lists(st.tuples(node_ids, u64), max_size=5).map(tuple), max_bytes=u64
    ),
    m.CacheEntries: st.builds(m.CacheEntries, entries=st.lists(entries, max_size=4).map(tuple)),
    m.InferInput: st.one_of(
        st.builds(
            m.InferInput,
            request_id=u64,
            fingerprint=texts,
            preprocess=texts,
            format=st.just("jpeg"),
            shape=st.lists(st.integers(1, 300), min_size=1, max_size=4).map(tuple),
            data=st.binary(max_size=2000),
        ),
        st.lists(st.integers(1, 6), min_size=1, max_size=3).flatmap(
            lambda shape: st.builds(
                m.InferInput,
                request_id=u64,
                fingerprint=texts,
                preprocess=texts,
                format=st.just("raw"),
                shape=st.just(tuple(shape)),
                tensor=st.just(np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape)),
            )
        ),
    ),
}
any_message = st.one_of(*MESSAGES.values())


def assert_same(a: Any, b: Any) -> None:
    """Deep equality for dataclasses holding numpy arrays."""
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype == np.float32
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b


def test_every_message_class_has_a_type_and_a_strategy() -> None:
    classes = set(m.Message.__args__)
    assert set(MESSAGE_TYPES) == classes == set(MESSAGES)
    assert not set(MESSAGE_TYPES.values()) & set(RETIRED_TYPES)  # retired numbers are never reassigned
    assert sorted([*MESSAGE_TYPES.values(), *RETIRED_TYPES]) == list(
        range(1, len(classes) + len(RETIRED_TYPES) + 1)
    )


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
@PROPS
@given(data=st.data())
def test_round_trip(cls: type[Any], data: st.DataObject) -> None:
    msg = data.draw(MESSAGES[cls])
    frame = encode_message(msg)
    assert frame[0] == FORMAT_VERSION
    assert message_type(frame) == MESSAGE_TYPES[cls]
    assert_same(decode_message(frame), msg)
    assert_same(decode_message(memoryview(frame)), msg)


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_infer_request_learns_the_encoding_from_the_blob(name: str) -> None:
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((2, 16, 7, 7)).astype(np.float32), 0)
    x[:, :12] = 0
    msg = m.InferRequest(request_id=9, fingerprint="ab" * 32, split="features.7", activation=x, encoding=name)
    got = decode_message(encode_message(msg))
    assert isinstance(got, m.InferRequest)
    assert got.encoding == name
    assert got.activation.shape == x.shape
    # i4: within half a step of a per-channel scale max|x_c| / 7
    tol = {"f32": 0.0, "i4": float(np.abs(x).max()) / 14 * 1.001}.get(name.split("-")[1], 0.02)
    np.testing.assert_allclose(got.activation, x, rtol=0 if "-i4" in name else tol, atol=tol)


def test_encode_accepts_numpy_scalars_and_ints_for_floats() -> None:
    msg = m.InferResponse(
        request_id=np.uint64(3),  # type: ignore[arg-type]
        labels=(np.int64(4), 5),  # type: ignore[arg-type]
        confidences=(np.float32(0.5), 1),  # type: ignore[arg-type]
    )
    got = decode_message(encode_message(msg))
    assert got == m.InferResponse(request_id=3, labels=(4, 5), confidences=(0.5, 1.0))
    assert all(type(x) is int for x in got.labels)
    assert all(type(x) is float for x in got.confidences)


def test_infinite_floats_travel_but_nan_does_not() -> None:
    msg = m.InferResponse(request_id=1, labels=(-1, 2), confidences=(float("inf"), float("-inf")))
    assert decode_message(encode_message(msg)) == msg
    with pytest.raises(EncodeError, match="NaN"):
        encode_message(dataclasses.replace(msg, confidences=(0.5, float("nan"))))


# -- encode errors are local errors ---------------------------------------------------------------------------------

NODE = b"n" * 16


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (object(), "not a wire message"),
        (m.Leave(node_id=b"short", incarnation=1), "16 bytes"),
        (m.Leave(node_id=NODE, incarnation=-1), "outside"),
        (m.Leave(node_id=NODE, incarnation=True), "must be an int"),
        (m.Leave(node_id="n" * 16, incarnation=1), "must be bytes"),  # type: ignore[arg-type]
        (m.ErrorMessage(request_id=2**64, code="x", message="y"), "outside"),
        (m.InferResponse(request_id=1, labels=(1, 2), confidences=(0.5,)), "2 labels but 1"),
        (m.InferResponse(request_id=1, labels=(1,), confidences=(float("nan"),)), "NaN"),
        (m.InferResponse(request_id=1, labels=(1.5,), confidences=(0.5,)), "must be an int"),  # type: ignore[arg-type]
        (
            m.InferRequest(1, "f", "s", np.zeros((1, 2), np.float32), encoding="gzip"),
            "unknown tensor encoding",
        ),
        (m.InferRequest(1, "f", "s", np.full((1, 2), np.nan, np.float32)), "NaN"),
        (
            m.CacheEntries((m.CacheEntry(np.zeros((2, 2), np.float32), 1, 0.5, "f", b"n" * 16, 1, 0.0),)),
            "1-D",
        ),
        (m.Gossip(updates=("not a member",)), "MemberUpdate"),  # type: ignore[arg-type]
        (m.ErrorMessage(request_id=0, code="\udc80", message=""), "does not pack"),
    ],
)
def test_unencodable_messages_raise_encode_error(msg: Any, match: str) -> None:
    with pytest.raises(EncodeError, match=match):
        encode_message(msg)


# -- explicit decode limits and malformed fields --------------------------------------------------------------------


def frame(mtype: int, fields: Any, blobs: tuple[bytes, ...] = (), version: int = FORMAT_VERSION) -> bytes:
    meta: bytes = msgpack.packb(fields, use_bin_type=True)
    out = struct.pack("<BBHI", version, mtype, len(blobs), len(meta)) + meta
    for blob in blobs:
        out += struct.pack("<I", len(blob)) + blob
    return out


LEAVE = MESSAGE_TYPES[m.Leave]


def test_a_hand_built_frame_decodes() -> None:
    assert decode_message(frame(LEAVE, [NODE, 7])) == m.Leave(node_id=NODE, incarnation=7)


def test_unknown_version() -> None:
    with pytest.raises(UnsupportedError, match="version"):
        decode_message(frame(LEAVE, [NODE, 7], version=2))


@pytest.mark.parametrize("mtype", [0, 16, 255])
def test_unknown_message_type(mtype: int) -> None:
    with pytest.raises(UnsupportedError, match="message type"):
        decode_message(frame(mtype, []))


@pytest.mark.parametrize(("mtype", "name"), sorted(RETIRED_TYPES.items()))
def test_a_retired_message_type_is_a_protocol_error(mtype: int, name: str) -> None:
    # The frames the removed CacheLookup / CacheLookupResult encoders produced, well-formed in every other way.
    lookup = frame(mtype, [1, "fp"], (encode_tensor(np.zeros(4, np.float32), "dense-f32"),))
    result = frame(mtype, [1, -1, 0.0, 0.5, 3])
    for data in (lookup, result):
        with pytest.raises(UnsupportedError, match=f"message type {mtype} \\({name}\\) is retired"):
            decode_message(data)
        with pytest.raises(UnsupportedError, match="retired"):
            peek_message(data)
    assert not hasattr(m, name)
    assert not hasattr(codec, name)


def test_frame_over_the_limit() -> None:
    data = frame(LEAVE, [NODE, 7])
    with pytest.raises(LimitExceededError, match="frame of"):
        decode_message(data, Limits(max_frame_bytes=len(data) - 1))


def test_metadata_over_the_limit() -> None:
    data = frame(MESSAGE_TYPES[m.ErrorMessage], [0, "c", "x" * 1000])
    with pytest.raises(LimitExceededError, match="metadata of"):
        decode_message(data, Limits(max_metadata_bytes=100))


def test_declared_metadata_length_past_the_end() -> None:
    data = bytearray(frame(LEAVE, [NODE, 7]))
    struct.pack_into("<I", data, 4, 1000)
    with pytest.raises(TruncatedError, match="metadata"):
        decode_message(bytes(data))


def test_too_many_tensors() -> None:
    data = struct.pack("<BBHI", FORMAT_VERSION, MESSAGE_TYPES[m.CacheEntries], 2000, 1) + b"\x90"
    with pytest.raises(LimitExceededError, match="tensors"):
        decode_message(data)


def test_string_over_the_limit() -> None:
    data = frame(MESSAGE_TYPES[m.ErrorMessage], [0, "c", "x" * 5000])
    with pytest.raises(MalformedError, match="msgpack within limits"):
        decode_message(data)


def test_bytes_over_the_limit() -> None:
    data = frame(MESSAGE_TYPES[m.Auth], [b"p" * 300])
    with pytest.raises(MalformedError, match="longer than max_bytes_len"):
        decode_message(data)
    data = frame(MESSAGE_TYPES[m.Auth], [b"p" * (DEFAULT_LIMITS.max_input_bytes + 1)])
    with pytest.raises(MalformedError, match="msgpack within limits"):
        decode_message(data)


def test_too_many_items() -> None:
    data = frame(MESSAGE_TYPES[m.InferResponse], [1, [0] * 2000, [0.5] * 2000, {}])
    with pytest.raises(MalformedError, match="msgpack within limits"):
        decode_message(data)
    small = Limits(max_items=10)
    data = frame(MESSAGE_TYPES[m.InferResponse], [1, [0] * 11, [0.5] * 11, {}])
    with pytest.raises(MalformedError):
        decode_message(data, small)


def test_deep_nesting_is_refused() -> None:
    meta = b"\x91" * 5000 + b"\x90"  # [[[[...]]]] 5000 deep
    data = struct.pack("<BBHI", FORMAT_VERSION, LEAVE, 0, len(meta)) + meta
    with pytest.raises(MalformedError):
        decode_message(data)


def test_total_tensor_elements_per_frame_are_bounded() -> None:
    blob = encode_tensor(np.zeros(600, np.float32), "sparse-f32")
    row = [1, 0.5, "fp", NODE, 1, 0.0]
    data = frame(MESSAGE_TYPES[m.CacheEntries], [[row, row]], (blob, blob))
    assert len(decode_message(data, Limits(max_elements=1200)).entries) == 2  # type: ignore[union-attr]
    with pytest.raises(LimitExceededError, match="600 elements, limit 599"):
        decode_message(data, Limits(max_elements=1199))


@pytest.mark.parametrize(
    ("mtype", "fields", "match"),
    [
        (LEAVE, [NODE], "has 2 fields"),
        (LEAVE, [NODE, 7, 8], "has 2 fields"),
        (LEAVE, [b"short", 7], "16 bytes"),
        (LEAVE, [NODE, -1], "outside"),
        (LEAVE, [NODE, True], "must be an int"),
        (LEAVE, [NODE, 7.0], "must be an int"),
        (LEAVE, ["n" * 16, 7], "must be bytes"),
        (LEAVE, {"node_id": NODE}, "must be a msgpack array"),
        (MESSAGE_TYPES[m.InferResponse], [1, [-1], [float("nan")], {}], "NaN"),
        (MESSAGE_TYPES[m.InferResponse], [1, [-1], [0], {}], "must be a float"),
        (MESSAGE_TYPES[m.InferResponse], [1, [2**31], [0.5], {}], "outside"),
        (MESSAGE_TYPES[m.InferResponse], [1, [1, 2], [0.5], {}], "2 labels but 1"),
        (MESSAGE_TYPES[m.InferResponse], [1, [], [], [1]], "timings must be a map"),
        (MESSAGE_TYPES[m.InferResponse], [1, [], [], {"t": "x"}], "must be a float"),
        (
            MESSAGE_TYPES[m.Gossip],
            [[[NODE, "a", "h", 1, "f", "zombie", 1, None, None]]],
            "unknown member state",
        ),
        (MESSAGE_TYPES[m.Gossip], [[[NODE, "a", "h", 70000, "f", "alive", 1, None, None]]], "outside"),
        (
            MESSAGE_TYPES[m.Gossip],
            [[[NODE, "a", "h", 1, "f", "alive", 1, [1, 2, 3], None]]],
            "load must have 6",
        ),
        (
            MESSAGE_TYPES[m.Gossip],
            [[[NODE, "a", "h", 1, "f", "alive", 1, None, [1, 1, b"d", 0.5, [[1, 2], [1, 3]]]]]],
            "counted twice",
        ),
        (MESSAGE_TYPES[m.CacheSync], [[[NODE, 1, 2]], 10], "known pair must have 2"),
        (
            MESSAGE_TYPES[m.CacheEntries],
            [[[1, 0.5, "fp", NODE, 1, 0.0]]],
            "carries 0 tensors|1 entries but 0",
        ),
    ],
)
def test_malformed_fields(mtype: int, fields: Any, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        decode_message(frame(mtype, fields))


def test_msgpack_extension_types_are_refused() -> None:
    meta: bytes = msgpack.packb([msgpack.ExtType(5, b"x"), 7], use_bin_type=True)
    data = struct.pack("<BBHI", FORMAT_VERSION, LEAVE, 0, len(meta)) + meta
    with pytest.raises(MalformedError):
        decode_message(data)


def test_tensor_count_must_match_the_message() -> None:
    blob = encode_tensor(np.zeros(4, np.float32), "dense-f32")
    with pytest.raises(MalformedError, match="carries 0 tensors"):
        decode_message(frame(LEAVE, [NODE, 7], (blob,)))
    with pytest.raises(MalformedError, match="carries 1 tensors"):
        decode_message(frame(MESSAGE_TYPES[m.InferRequest], [1, "fp", "s"]))


def test_feature_must_be_one_dimensional() -> None:
    blob = encode_tensor(np.zeros((2, 2), np.float32), "dense-f32")
    row = [1, 0.5, "fp", NODE, 1, 0.0]
    with pytest.raises(MalformedError, match="1-D"):
        decode_message(frame(MESSAGE_TYPES[m.CacheEntries], [[row]], (blob,)))


def test_activation_needs_a_batch_axis() -> None:
    blob = encode_tensor(np.zeros((), np.float32), "dense-f32")
    with pytest.raises(MalformedError, match="batch axis"):
        decode_message(frame(MESSAGE_TYPES[m.InferRequest], [1, "fp", "s"], (blob,)))


def test_bytes_after_the_last_tensor() -> None:
    with pytest.raises(MalformedError, match="after the last tensor"):
        decode_message(frame(LEAVE, [NODE, 7]) + b"\x00")


def test_bytes_after_the_metadata_object() -> None:
    meta = msgpack.packb([NODE, 7], use_bin_type=True) + b"\xc0"
    data = struct.pack("<BBHI", FORMAT_VERSION, LEAVE, 0, len(meta)) + meta
    with pytest.raises(MalformedError, match="after the metadata"):
        decode_message(data)


def test_every_truncation_is_a_codec_error() -> None:
    x = np.zeros((1, 8, 3, 3), np.float32)
    x[0, 1] = 1.5
    data = encode_message(m.InferRequest(request_id=1, fingerprint="fp", split="s", activation=x))
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode_message(data[:cut])
    whole = decode_message(data)  # the frame every cut was taken from is itself valid and means the message
    assert isinstance(whole, m.InferRequest)
    assert (whole.request_id, whole.fingerprint, whole.split) == (1, "fp", "s")
    np.testing.assert_array_equal(whole.activation, x)


# -- fuzzing --------------------------------------------------------------------------------------------------------


def decode_or_codec_error(data: bytes) -> Any:
    try:
        return decode_message(data)
    except CodecError:
        return None


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    decode_or_codec_error(data)


@settings(max_examples=300, deadline=None)
@given(mtype=st.integers(0, 16), body=st.binary(max_size=300), count=st.integers(0, 3))
def test_random_bodies_behind_valid_headers_only_raise_codec_error(
    mtype: int, body: bytes, count: int
) -> None:
    meta_len = len(body) // 2
    decode_or_codec_error(struct.pack("<BBHI", FORMAT_VERSION, mtype, count, meta_len) + body)


@settings(max_examples=150, deadline=None)
@given(
    mtype=st.integers(0, 16),
    fields=st.recursive(
        st.none() | st.booleans() | st.integers() | floats | texts | small_bytes,
        lambda inner: st.lists(inner, max_size=10) | st.dictionaries(texts, inner, max_size=5),
        max_leaves=40,
    ),
)
def test_random_msgpack_metadata_only_raises_codec_error(mtype: int, fields: Any) -> None:
    try:
        meta = msgpack.packb(fields, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    decode_or_codec_error(struct.pack("<BBHI", FORMAT_VERSION, mtype, 0, len(meta)) + meta)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_message(draw(any_message)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_frames())
def test_mutated_frames_only_raise_codec_error(data: bytes) -> None:
    decode_or_codec_error(data)


# -- the codec stays pure and its surface visible ---------------------------------------------------------------------

CODEC_DIR = Path(codec.__file__).parent
FORBIDDEN = {"asyncio", "aiohttp", "zeroconf", "time", "socket", "random", "pickle"}


@pytest.mark.parametrize("path", sorted(CODEC_DIR.glob("*.py")), ids=lambda p: p.name)
def test_codec_modules_import_no_io_clock_or_pickle(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


def test_exports() -> None:
    import ccied_p2p.codec.auth
    import ccied_p2p.codec.layouts
    import ccied_p2p.codec.session
    import ccied_p2p.codec.tensor
    import ccied_p2p.codec.wire

    modules = (codec, ccied_p2p.codec.auth, ccied_p2p.codec.layouts, ccied_p2p.codec.session)
    for module in (*modules, ccied_p2p.codec.tensor, ccied_p2p.codec.wire, m):
        assert module.__doc__
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)
