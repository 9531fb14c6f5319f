"""One table of limits for both ends: what encodes decodes, what would not decode does not encode.

Also the two-step decode (:func:`peek_message`, :meth:`Frame.decode`) and the serving node's admission rules
(:mod:`ccied_p2p.codec.admission`), which refuse from a frame's headers before any tensor is inflated.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import tracemalloc

import msgpack
import numpy as np
import pytest

from ccied_p2p.codec.admission import AdmissionPolicy, PeerBudget, Refusal
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
from ccied_p2p.codec.tensor import DEFAULT_LIMITS, Limits
from ccied_p2p.codec.wire import MESSAGE_TYPES, Frame, decode_message, encode_message, peek_message
from ccied_p2p.errors import (
    CodecError,
    ConfigError,
    EncodeError,
    EncodeLimitError,
    LimitExceededError,
    LocalError,
    MalformedError,
    UnsupportedError,
)

ROOMY = Limits(
    max_frame_bytes=1 << 30,
    max_metadata_bytes=1 << 30,
    max_tensors=1 << 16,
    max_ndim=16,
    max_dim=1 << 30,
    max_elements=1 << 26,
    max_decompressed_bytes=1 << 30,
    max_items=1 << 20,
    max_string_bytes=1 << 20,
    max_bytes_len=1 << 20,
)
ID = bytes(range(16))


def _frame(mtype: type[Message], fields: list[object], blobs: tuple[bytes, ...] = ()) -> bytes:
    meta: bytes = msgpack.packb(fields, use_bin_type=True)
    out = struct.pack("<BBHI", 1, MESSAGE_TYPES[mtype], len(blobs), len(meta)) + meta
    return out + b"".join(struct.pack("<I", len(b)) + b for b in blobs)


def test_an_infer_response_with_more_labels_than_a_frame_may_carry_neither_encodes_nor_decodes() -> None:
    n = DEFAULT_LIMITS.max_items + 1
    with pytest.raises(EncodeLimitError, match="max_items"):
        encode_message(InferResponse(1, (3,) * n, (0.5,) * n))
    with pytest.raises(MalformedError):
        decode_message(_frame(InferResponse, [1, [3] * n, [0.5] * n, {}]))
    full = InferResponse(1, (3,) * (n - 1), (0.5,) * (n - 1))
    assert decode_message(encode_message(full)) == full


def test_encode_limit_error_is_a_local_encode_error() -> None:
    assert issubclass(EncodeLimitError, EncodeError)
    assert issubclass(EncodeLimitError, LocalError)
    assert issubclass(EncodeLimitError, ValueError)
    assert not issubclass(EncodeLimitError, CodecError)  # our own mistake, not a peer's


@pytest.mark.parametrize(
    ("message", "limit"),
    [
        (ErrorMessage(1, "x", "y" * 4097), "max_string_bytes"),
        (Hello(ID, "n", "f", 1, b"\x00" * 257, 1), "max_bytes_len"),
        (Gossip(tuple(MemberUpdate(ID, "m", "h", 1, "f", MemberState.ALIVE, 0) for _ in range(1025))), "max_items"),
        (CacheSync(((ID, 1),) * 1025, 1), "max_items"),
        (InferResponse(1, (1,), (0.5,), {str(i): 0.0 for i in range(1025)}), "max_items"),
        (InferRequest(1, "f", "s", np.zeros((1, 1 << 21, 2), np.float32), "dense-f32-lz4"), "max_dim"),
        (InferRequest(1, "f", "s", np.zeros((2, 1025, 2049), np.float32), "sparse-f32-lz4"), "elements"),
    ],
)  # fmt: skip
def test_encode_refuses_what_the_default_decoder_refuses(message: Message, limit: str) -> None:
    with pytest.raises(EncodeLimitError, match=limit):
        encode_message(message)
    with pytest.raises(CodecError):
        decode_message(encode_message(message, ROOMY))
    assert type(decode_message(encode_message(message, ROOMY), ROOMY)) is type(message)


def _corpus() -> list[Message]:
    rng = np.random.default_rng(7)
    act = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    act[:, 1] = 0.0
    feature = rng.random(8, dtype=np.float32)
    member = MemberUpdate(
        ID,
        "ghost-é",
        "127.0.0.1",
        1,
        "f" * 40,
        MemberState.SUSPECT,
        3,
        LoadReport(1, 2, 1.5, 0.25),
        CacheSummary(1, 3, b"\x01" * 16, 0.5, {1: 2, -4: 7}),
    )
    entry = CacheEntry(feature, 1, 0.9, "f" * 40, ID, 1, 0.0)
    return [
        Hello(ID, "node-name", "f" * 40, 1, b"\x02" * 32, 7000),
        Auth(b"\x03" * 32),
        InferRequest(1, "f" * 40, "features.3", act, "sparse-f16-lz4"),
        InferRequest(2, "f" * 40, "features.3", act, "dense-f32"),
        InferRequest(3, "f" * 40, "features.3", np.zeros((30, 4, 3, 3), np.float32), "dense-i8-lz4"),
        InferResponse(4, (1, 2, 3), (0.5, 0.25, 1.0), {"tail": 0.001, "queue": 0.0}),
        ErrorMessage(5, "busy", "try again later " * 3),
        Ping(6, (member, member)),
        PingReq(7, ID, (member,)),
        Ack(8, ID, ()),
        Gossip((member,) * 13),
        Leave(ID, 9),
        CacheSync(((ID, 1),) * 12, 1 << 20),
        CacheEntries((entry,) * 3),
    ]


TIGHT = [
    Limits(max_items=9),
    Limits(max_items=10),
    Limits(max_items=12),
    Limits(max_string_bytes=9),
    Limits(max_string_bytes=40),
    Limits(max_bytes_len=16),
    Limits(max_bytes_len=31),
    Limits(max_elements=8),
    Limits(max_elements=72),
    Limits(max_elements=144),
    Limits(max_tensors=1),
    Limits(max_tensors=2),
    Limits(max_ndim=1),
    Limits(max_ndim=3),
    Limits(max_dim=4),
    Limits(max_dim=29),
    Limits(max_metadata_bytes=40),
    Limits(max_metadata_bytes=200),
    Limits(max_frame_bytes=100),
    Limits(max_frame_bytes=600),
    Limits(max_decompressed_bytes=100),
    Limits(max_decompressed_bytes=600),
]


@pytest.mark.parametrize("limits", TIGHT, ids=lambda lim: ",".join(
    f"{f.name}={getattr(lim, f.name)}" for f in dataclasses.fields(lim) if getattr(lim, f.name) != getattr(DEFAULT_LIMITS, f.name)
))  # fmt: skip
def test_a_message_encodes_under_limits_exactly_when_it_decodes_under_them(limits: Limits) -> None:
    outcomes = []
    for message in _corpus():
        try:
            encode_message(message, limits)
            encoded = True
        except EncodeLimitError:
            encoded = False
        try:
            decode_message(encode_message(message, ROOMY), limits)
            decoded = True
        except CodecError:
            decoded = False
        assert encoded == decoded, f"{type(message).__name__}: encodes={encoded}, decodes={decoded}"
        outcomes.append(encoded)
    assert not all(outcomes), "these limits refuse nothing in the corpus: the case tests nothing"


def test_limits_below_what_any_message_needs_are_refused() -> None:
    for field, value in [("max_items", 8), ("max_bytes_len", 15), ("max_elements", 0), ("max_tensors", -1)]:
        with pytest.raises(ConfigError, match=field):
            Limits(**{field: value})


# -- two-step decoding ---------------------------------------------------------------------------------------


def _claim(rows: int = 3566, encoding: str = "sparse-f32-lz4", request_id: int = 9) -> bytes:
    """An InferRequest whose blob claims (rows, 6, 14, 14) of zeros (16 MiB of float32 at 3566 rows)."""
    return encode_message(
        InferRequest(request_id, "f", "s", np.zeros((rows, 6, 14, 14), np.float32), encoding)
    )


def test_peek_reads_a_16_mib_claim_from_21_bytes_without_allocating_it() -> None:
    data = _claim()
    assert len(data) < 64
    tracemalloc.start()
    try:
        frame = peek_message(data)
        _, peeked = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        message = frame.decode()
        _, decoded = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(frame, Frame)
    assert frame.kind is InferRequest
    assert frame.request_id == 9
    assert frame.tensors[0].shape == (3566, 6, 14, 14)
    assert frame.tensors[0].encoding == "sparse-f32-lz4"
    assert frame.decoded_bytes == 4 * 3566 * 6 * 14 * 14
    assert peeked < 64 << 10
    assert decoded >= frame.decoded_bytes
    assert isinstance(message, InferRequest)
    assert message.activation.shape == (3566, 6, 14, 14)


def test_peek_only_refuses_other_types_before_reading_them() -> None:
    with pytest.raises(UnsupportedError, match="InferRequest"):
        peek_message(_claim(), only=(Hello, Auth))
    hello = Hello(ID, "n", "f", 1, b"\x00" * 32, 1)
    assert decode_message(encode_message(hello), only=(Hello, Auth)) == hello


def test_peek_checks_the_frame_element_budget_from_headers() -> None:
    entries = CacheEntries(
        tuple(CacheEntry(np.ones(600, np.float32), 1, 0.9, "f", ID, 1, 0.0) for _ in range(2))
    )
    data = encode_message(entries)
    assert peek_message(data, Limits(max_elements=1200)).decoded_bytes == 4800
    with pytest.raises(LimitExceededError):
        peek_message(data, Limits(max_elements=1199))


# -- admission -----------------------------------------------------------------------------------------------

POLICY = AdmissionPolicy(
    activation_shape=(6, 14, 14), max_rows=32, max_feature=64, queue_rows=64, queue_bytes=1 << 20
)
ROW = 4 * 6 * 14 * 14


def _request(rows: int, shape: tuple[int, ...] = (6, 14, 14), request_id: int = 1) -> Frame:
    return peek_message(
        encode_message(
            InferRequest(request_id, "f", "s", np.zeros((rows, *shape), np.float32), "sparse-f32-lz4")
        )
    )


def test_admission_refuses_shapes_and_row_counts_this_node_would_never_serve() -> None:
    budget = PeerBudget()
    refused = budget.admit(_request(3566), POLICY)
    assert refused is not None
    assert refused.code is Refusal.ROWS
    assert refused.request_id == 1
    assert "1..32" in refused.reason
    for shape in [(6, 14, 13), (6, 14), (7, 14, 14), (6, 14, 14, 1)]:
        refused = budget.admit(_request(1, shape), POLICY)
        assert refused is not None
        assert refused.code is Refusal.SHAPE
    refused = budget.admit(_request(0), POLICY)
    assert refused is not None
    assert refused.code is Refusal.ROWS
    assert (budget.rows, budget.nbytes) == (0, 0)  # refusals reserve nothing
    assert budget.admit(_request(32), POLICY) is None
    assert (budget.rows, budget.nbytes) == (32, 32 * ROW)


def test_admission_budget_refuses_busy_then_admits_after_release() -> None:
    budget = PeerBudget()
    assert budget.admit(_request(32), POLICY) is None
    assert budget.admit(_request(32), POLICY) is None
    refused = budget.admit(_request(1, request_id=77), POLICY)
    assert refused is not None
    assert refused.code is Refusal.BUSY
    assert refused.request_id == 77
    budget.release(32, 32 * ROW)
    assert budget.admit(_request(1), POLICY) is None
    assert (budget.rows, budget.nbytes) == (33, 33 * ROW)


def test_an_idle_peer_always_gets_one_lawful_request_in_even_above_the_byte_budget() -> None:
    small = dataclasses.replace(POLICY, queue_bytes=ROW)
    budget = PeerBudget()
    assert budget.admit(_request(32), small) is None  # 32 rows > the byte budget, but nothing else queued
    refused = budget.admit(_request(1), small)
    assert refused is not None
    assert refused.code is Refusal.BUSY
    budget.release(32, 32 * ROW)
    assert budget.admit(_request(1), small) is None


def test_admission_refuses_oversized_features_and_passes_everything_else() -> None:
    budget = PeerBudget()
    big = CacheEntries((CacheEntry(np.ones(65, np.float32), 1, 0.9, "f", ID, 1, 0.0),))
    refused = budget.admit(peek_message(encode_message(big)), POLICY)
    assert refused is not None
    assert refused.code is Refusal.FEATURE
    assert refused.request_id is None  # CacheEntries carry no request id
    entries = CacheEntries((CacheEntry(np.ones(64, np.float32), 1, 0.9, "f", ID, 1, 0.0),) * 3)
    assert budget.admit(peek_message(encode_message(entries)), POLICY) is None
    for message in _corpus():
        if not isinstance(message, InferRequest | CacheEntries):
            assert budget.admit(peek_message(encode_message(message)), POLICY) is None
    assert (budget.rows, budget.nbytes) == (0, 0)
    assert math.prod(POLICY.activation_shape) * 4 == ROW
