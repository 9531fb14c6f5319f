"""Tensor encodings: round trips within stated bounds, strict bounded decoding, fuzzed bytes only raise CodecError."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import lz4.block
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ccied_p2p.codec.tensor import (
    DEFAULT_LIMITS,
    ENCODINGS,
    Limits,
    TensorEncoding,
    decode_tensor,
    encode_tensor,
    encoding_of,
    get_encoding,
    peek_shape,
)
from ccied_p2p.errors import (
    CodecError,
    DecompressionError,
    EncodeError,
    EncodeLimitError,
    LimitExceededError,
    MalformedError,
    TruncatedError,
    UnsupportedError,
)

NAMES = sorted(ENCODINGS)
F32 = [n for n in NAMES if "-f32" in n]
F16 = [n for n in NAMES if "-f16" in n]
I8 = [n for n in NAMES if "-i8" in n]
I4 = [n for n in NAMES if "-i4" in n]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def activation_like(rng: np.random.Generator, n: int = 2, c: int = 64, s: int = 7) -> npt.NDArray[np.float32]:
    """Shaped like the pruned VGG split: 75% of channels all-zero, about half the rest zero (ReLU)."""
    x = np.maximum(rng.standard_normal((n, c, s, s)).astype(np.float32), 0)
    x[:, rng.permutation(c)[: c * 3 // 4]] = 0
    return x


@st.composite
def sparse_arrays(draw: st.DrawFn) -> npt.NDArray[np.float32]:
    """Arrays of 0-4 dims with dropped channels, zeroed values, mixed signs and magnitudes."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    elements = st.floats(
        -60000, 60000, allow_nan=False, allow_infinity=False, width=16 if dtype == np.float16 else 32
    )
    x = draw(hnp.arrays(dtype, shape, elements=elements)).astype(np.float32)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x[rng.random(shape) < draw(st.floats(0, 1))] = 0
    if x.ndim >= 2:
        x[:, rng.random(x.shape[1]) < draw(st.floats(0, 1))] = 0
    return x


def channel_amax(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """max |x| per channel (axis 1), broadcast back to x's shape."""
    n = x.shape[0] if x.ndim >= 1 else 1
    c = x.shape[1] if x.ndim >= 2 else 1
    x3 = np.abs(x.reshape(n, c, int(np.prod(x.shape[2:]))))
    amax = x3.max(axis=(0, 2)) if x3.size else np.zeros(c, np.float32)
    return np.broadcast_to(amax[None, :, None], x3.shape).reshape(x.shape)


def check_bound(name: str, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> None:
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    if "-f32" in name:
        assert np.array_equal(x, y)
    elif "-f16" in name:
        assert np.all(err <= np.maximum(np.abs(x) * 2.0**-11, 2.0**-25))
    else:
        levels = 7 if "-i4" in name else 127
        bound = channel_amax(x).astype(np.float64) / (2 * levels) * (1 + 2.0**-10) + 2.0**-126
        assert np.all(err <= bound)


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(x=sparse_arrays())
def test_round_trip_within_stated_bound(name: str, x: npt.NDArray[np.float32]) -> None:
    blob = encode_tensor(x, name)
    y = decode_tensor(blob)
    assert encoding_of(blob).name == name
    assert y.shape == x.shape
    assert y.dtype == np.float32
    assert y.flags.writeable
    assert y.flags.c_contiguous
    check_bound(name, x, y)


@pytest.mark.parametrize("name", NAMES)
def test_realistic_activation_round_trip(name: str) -> None:
    x = activation_like(np.random.default_rng(1), n=3)
    y = decode_tensor(encode_tensor(x, name))
    check_bound(name, x, y)
    assert not np.shares_memory(x, y)
    y += 1  # a fresh, writable array the caller owns


def test_sparse_f16_lz4_is_at_most_a_tenth_of_raw_f32_on_activation_like_input() -> None:
    x = activation_like(np.random.default_rng(2), n=1)
    assert len(encode_tensor(x, "sparse-f16-lz4")) <= x.nbytes / 10


def test_sparse_size_matches_layout() -> None:
    x = activation_like(np.random.default_rng(3), n=2)
    n, c = x.shape[:2]
    s = x[0, 0].size
    k = int((x != 0).any(axis=(0, 2, 3)).sum())
    nnz = int((x != 0).sum())
    header = 2 + 4 * x.ndim
    body = (c + 7) // 8 + (n * k * s + 7) // 8
    assert len(encode_tensor(x, "sparse-f32")) == header + body + 4 * nnz
    assert len(encode_tensor(x, "sparse-f16")) == header + body + 2 * nnz
    assert len(encode_tensor(x, "sparse-i8")) == header + body + 4 * k + nnz
    assert len(encode_tensor(x, "sparse-i4")) == header + body + 4 * k + (nnz + 1) // 2
    assert len(encode_tensor(x, "dense-i4")) == header + 4 * c + (x.size + 1) // 2
    assert len(encode_tensor(x, "dense-f32")) == header + 4 * x.size


def test_names_ids_and_registry() -> None:
    assert len(ENCODINGS) == 24  # 2 layouts x 4 value types x (none, lz4, deflate)
    assert len({e.code for e in ENCODINGS.values()}) == 24
    assert all(e.code & 24 != 24 for e in ENCODINGS.values())  # never lz4 and deflate at once
    for name, enc in ENCODINGS.items():
        assert enc.name == name
        assert get_encoding(name) is enc
        assert get_encoding(enc) is enc
        assert isinstance(enc, TensorEncoding)
        assert name in repr(enc)
    with pytest.raises(EncodeError, match="unknown tensor encoding"):
        get_encoding("sparse-f8")


def test_estimate_compression_ratio() -> None:
    x = activation_like(np.random.default_rng(4), n=1)
    assert get_encoding("dense-f32").estimate_compression_ratio(x) > 1.0
    assert get_encoding("sparse-f16-lz4").estimate_compression_ratio(x) < 0.1


# -- NaN / infinity policy: never encoded, never decoded ---------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_on_encode(name: str, bad: float) -> None:
    x = activation_like(np.random.default_rng(5), n=1)
    x[0, 3, 2, 2] = bad  # also in a channel that may otherwise be all zero
    with pytest.raises(EncodeError, match=r"NaN|infinity"):
        encode_tensor(x, name)


@pytest.mark.parametrize("name", F16)
def test_float16_overflow_is_refused_not_clipped(name: str) -> None:
    x = np.zeros((1, 2, 2), np.float32)
    x[0, 0, 0] = 65504.0
    np.testing.assert_array_equal(decode_tensor(encode_tensor(x, name)), x)
    x[0, 0, 0] = 65520.0
    with pytest.raises(EncodeError, match="65504"):
        encode_tensor(x, name)


edge_floats = st.sampled_from([65504.0, 65505.0, 65519.0, 65520.0, 1.5, 3.0, 0.0, -0.0, 1e-45]) | st.floats(
    width=32
)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(edge_floats, min_size=1, max_size=12), signs=st.booleans(), channels=st.integers(1, 3))
def test_value_checks_match_their_definition(values: list[float], signs: bool, channels: int) -> None:
    """The encoders' fast range / finiteness tests (bit-pattern ORs) agree with the plain definition."""
    x = np.array(values * channels, np.float32).reshape(1, channels, len(values))
    if signs:
        x[:, ::2] *= -1
    finite = bool(np.all(np.isfinite(x)))
    for name in NAMES:
        fits = finite and ("-f16" not in name or float(np.abs(x).max()) <= 65504.0)
        if fits:
            check_bound(name, x, decode_tensor(encode_tensor(x, name)))
        else:
            with pytest.raises(EncodeError):
                encode_tensor(x, name)


def test_negative_zero_channels_decode_to_zero() -> None:
    x = np.zeros((1, 3, 4), np.float32)
    x[0, 1] = -0.0
    x[0, 2, 1] = 2.0
    for name in NAMES:
        y = decode_tensor(encode_tensor(x, name))
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("name", NAMES)
def test_float64_beyond_float32_range_is_refused(name: str) -> None:
    x = np.array([[1.0, 1e300]])
    with pytest.raises(EncodeError):
        encode_tensor(x, name)
    np.testing.assert_array_equal(decode_tensor(encode_tensor(np.array([[1.0, -2.5]]), name)), [[1.0, -2.5]])


def test_non_float_and_non_array_inputs_are_refused() -> None:
    with pytest.raises(EncodeError, match="floating-point"):
        encode_tensor(np.arange(4), "dense-f32")  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="numpy array"):
        encode_tensor([1.0, 2.0], "dense-f32")  # type: ignore[arg-type]


def _dense_blob(code_name: str, shape: tuple[int, ...], body: bytes) -> bytes:
    enc = get_encoding(code_name)
    return struct.pack(f"<BB{len(shape)}I", enc.code, len(shape), *shape) + body


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_on_decode(bad: float) -> None:
    with pytest.raises(MalformedError, match="NaN or infinity"):
        decode_tensor(_dense_blob("dense-f32", (2,), np.array([1.0, bad], "<f4").tobytes()))
    with pytest.raises(MalformedError, match="NaN or infinity"):
        decode_tensor(_dense_blob("dense-f16", (2,), np.array([1.0, bad], "<f2").tobytes()))


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf, 3e38])
@pytest.mark.parametrize(("kind", "values"), [("i8", np.array([1, 127], np.int8).tobytes()), ("i4", b"\x71")])
def test_int_scales_must_be_positive_and_keep_values_finite(scale: float, kind: str, values: bytes) -> None:
    if kind == "i4" and scale == 3e38:
        scale = 1e38  # 7 x 1e38 overflows float32; 1e38 is fine for i8, so this is i4's own limit
    body = np.array([scale], "<f4").tobytes() + values
    with pytest.raises(MalformedError, match="scale"):
        decode_tensor(_dense_blob(f"dense-{kind}", (1, 1, 2), body))
    sparse = bytes([0b1000_0000, 0b1100_0000]) + body
    with pytest.raises(MalformedError, match="scale"):
        decode_tensor(_dense_blob(f"sparse-{kind}", (1, 1, 2), sparse))


def test_i4_packs_two_values_a_byte_low_nibble_first() -> None:
    x = np.array([[[7.0, -7.0, 1.0]]], np.float32)  # scale 1: q = 7, -7, 1
    blob = encode_tensor(x, "dense-i4")
    assert blob[-6:-2] == np.array([1.0], "<f4").tobytes()
    assert blob[-2:] == bytes([0x97, 0x01])  # -7 is 0x9 in four-bit two's complement; the pad nibble is 0
    assert decode_tensor(blob).tolist() == x.tolist()


@pytest.mark.parametrize(
    ("name", "values", "match"),
    [
        ("dense-i8", np.array([-128, 1], np.int8).tobytes(), r"i8 values must be in \[-127, 127\]"),
        ("dense-i4", b"\x18", r"i4 values must be in \[-7, 7\]"),  # second value 0x1, first 0x8 = -8
        ("dense-i4", bytes([0x11, 0x10]), "padding bits"),  # three values; the fourth nibble must be 0
    ],
)
def test_int_values_outside_the_symmetric_range_are_refused(name: str, values: bytes, match: str) -> None:
    """-128 (i8) or -8 (i4) with the largest allowed scale would decode to infinity."""
    count = 3 if values == bytes([0x11, 0x10]) else 2
    body = np.array([1.0], "<f4").tobytes() + values
    with pytest.raises(MalformedError, match=match):
        decode_tensor(_dense_blob(name, (1, 1, count), body))


def test_int8_extreme_values_round_trip_finite() -> None:
    x = np.array([[[np.finfo(np.float32).max, -np.finfo(np.float32).max, 1.0]]], np.float32)
    for name in I8 + I4:
        y = decode_tensor(encode_tensor(x, name))
        assert np.all(np.isfinite(y))
        check_bound(name, x, y)


# -- explicit limits ---------------------------------------------------------------------------------------------


def test_too_many_dimensions() -> None:
    with pytest.raises(EncodeLimitError, match="dimensions"):
        encode_tensor(np.zeros((1,) * 9, np.float32), "dense-f32")
    blob = encode_tensor(np.zeros((1,) * 9, np.float32), "dense-f32", Limits(max_ndim=9))
    with pytest.raises(LimitExceededError, match="dimensions"):
        decode_tensor(blob)
    assert decode_tensor(blob, Limits(max_ndim=9)).shape == (1,) * 9


def test_oversized_dimension() -> None:
    blob = _dense_blob("sparse-f32", (1, 1 << 21), bytes(1 << 18))
    with pytest.raises(LimitExceededError, match="dimension"):
        decode_tensor(blob)


def test_too_many_elements() -> None:
    x = np.zeros((4, 8, 8), np.float32)
    blob = encode_tensor(x, "sparse-f32")
    assert decode_tensor(blob, Limits(max_elements=256)).shape == x.shape
    with pytest.raises(LimitExceededError, match="elements"):
        decode_tensor(blob, Limits(max_elements=255))


def _peak_while_raising(exc: type[Exception], match: str | None, call: Callable[[], object]) -> int:
    """The peak of traced allocations while ``call`` raises ``exc`` (matching ``match``)."""
    tracemalloc.start()
    try:
        with pytest.raises(exc, match=match):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_declared_shape_is_refused_before_allocating() -> None:
    blob = _dense_blob("sparse-f32-lz4", (65535, 65535, 65535), struct.pack("<I", 1 << 31) + b"\x00")
    assert _peak_while_raising(LimitExceededError, None, lambda: decode_tensor(blob)) < 1 << 20


def test_decompression_bomb_declaring_more_than_the_limit() -> None:
    # A 60 KB lz4 block of zeros really inflates to 16 MB; the shape allows it, the limit does not.
    body = bytes(1 << 24)
    block = lz4.block.compress(body, store_size=False)
    assert len(block) < 70_000
    blob = _dense_blob("dense-f32-lz4", (1 << 11, 1 << 11), struct.pack("<I", len(body)) + block)
    roomy = Limits(max_decompressed_bytes=1 << 25)
    assert decode_tensor(blob, roomy).shape == (1 << 11, 1 << 11)
    tight = Limits(max_decompressed_bytes=1 << 20)
    assert _peak_while_raising(LimitExceededError, "declares", lambda: decode_tensor(blob, tight)) < 1 << 20


def test_small_block_declaring_a_huge_size_is_refused_without_inflating() -> None:
    tiny = lz4.block.compress(bytes(100), store_size=False)
    blob = _dense_blob("dense-f32-lz4", (1 << 20,), struct.pack("<I", 1 << 22) + tiny)
    assert _peak_while_raising(DecompressionError, "cannot inflate", lambda: decode_tensor(blob)) < 1 << 20


def test_block_inflating_to_less_than_declared() -> None:
    block = lz4.block.compress(bytes(400), store_size=False)
    blob = _dense_blob("dense-f32-lz4", (200,), struct.pack("<I", 800) + block)
    with pytest.raises(DecompressionError, match="inflated to 400"):
        decode_tensor(blob)


def test_declared_size_larger_than_the_shape_needs() -> None:
    block = lz4.block.compress(bytes(400), store_size=False)
    blob = _dense_blob("dense-f32-lz4", (10,), struct.pack("<I", 400) + block)
    with pytest.raises(LimitExceededError, match="can need"):
        decode_tensor(blob)


def test_corrupt_lz4_block() -> None:
    blob = _dense_blob("dense-f32-lz4", (4,), struct.pack("<I", 16) + b"\xff\xff\xff")
    with pytest.raises(DecompressionError):
        decode_tensor(blob)


def test_empty_lz4_body_must_be_canonical() -> None:
    x = np.zeros((0, 3), np.float32)
    blob = encode_tensor(x, "dense-f32-lz4")
    assert decode_tensor(blob).shape == (0, 3)
    with pytest.raises(DecompressionError):
        decode_tensor(blob + b"\x00")


def _deflated(body: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(body) + packer.flush()


def test_deflate_entropy_codes_four_bit_values_that_lz4_cannot_shrink() -> None:
    """Rounded to 4 bits, a peaked (Laplace) activation has few common nibble pairs: Huffman coding shrinks them,
    lz4 (repeats only) does not (Lite0's split: 8.2 KB in dense-i4, 6.6 KB in dense-i4-deflate)."""
    x = np.random.default_rng(11).laplace(size=(1, 80, 14, 14)).astype(np.float32)
    raw, lz4_, deflated = (len(encode_tensor(x, f"dense-i4{c}")) for c in ("", "-lz4", "-deflate"))
    assert lz4_ >= raw - 100
    assert deflated < 0.85 * raw
    back = decode_tensor(encode_tensor(x, "dense-i4-deflate"))
    assert np.array_equal(back, decode_tensor(encode_tensor(x, "dense-i4")))


def test_deflate_bomb_is_refused_before_and_while_inflating() -> None:
    # 16 KB of deflate inflate to 16 MB: the shape allows it, the limit does not.
    body = bytes(1 << 24)
    packed = _deflated(body)
    assert len(packed) < 20_000
    blob = _dense_blob("dense-f32-deflate", (1 << 11, 1 << 11), struct.pack("<I", len(body)) + packed)
    assert decode_tensor(blob, Limits(max_decompressed_bytes=1 << 25)).shape == (1 << 11, 1 << 11)
    tight = Limits(max_decompressed_bytes=1 << 20)
    assert _peak_while_raising(LimitExceededError, "declares", lambda: decode_tensor(blob, tight)) < 3 << 20
    # Declaring less than it holds: inflating stops at the declared size.
    short = _dense_blob("dense-f32-deflate", (1 << 11, 1 << 7), struct.pack("<I", 1 << 20) + packed)
    assert (
        _peak_while_raising(DecompressionError, "exactly the declared", lambda: decode_tensor(short))
        < 3 << 20
    )
    tiny = _deflated(bytes(100))
    with pytest.raises(DecompressionError, match="cannot inflate"):
        decode_tensor(_dense_blob("dense-f32-deflate", (1 << 20,), struct.pack("<I", 1 << 22) + tiny))


@pytest.mark.parametrize(
    ("tail", "match"),
    [(b"", "exactly the declared"), (b"\x00", "exactly the declared"), (None, "does not decompress")],
)
def test_a_deflate_body_must_inflate_to_exactly_its_size(tail: bytes | None, match: str) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body = x.tobytes()
    if tail is None:  # corrupt: a reserved block type
        blob = _dense_blob("dense-f32-deflate", (3, 4), struct.pack("<I", len(body)) + b"\xff\xff\xff")
    elif tail:  # trailing bytes after the stream
        blob = _dense_blob("dense-f32-deflate", (3, 4), struct.pack("<I", len(body)) + _deflated(body) + tail)
    else:  # the stream ends early
        blob = _dense_blob("dense-f32-deflate", (3, 4), struct.pack("<I", len(body)) + _deflated(body[:40]))
    with pytest.raises(DecompressionError, match=match):
        decode_tensor(blob)
    good = _dense_blob("dense-f32-deflate", (3, 4), struct.pack("<I", len(body)) + _deflated(body))
    assert np.array_equal(decode_tensor(good), x)


def test_empty_deflate_body_must_be_canonical() -> None:
    blob = encode_tensor(np.zeros((0, 3), np.float32), "dense-f32-deflate")
    assert decode_tensor(blob).shape == (0, 3)
    with pytest.raises(DecompressionError, match="empty deflate"):
        decode_tensor(blob + b"\x00")


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_is_a_codec_error(name: str) -> None:
    blob = encode_tensor(activation_like(np.random.default_rng(6), n=1, c=8, s=3), name)
    for cut in range(len(blob)):
        with pytest.raises(CodecError):
            decode_tensor(blob[:cut])


def test_truncated_header_is_a_truncated_error() -> None:
    blob = encode_tensor(np.ones((2, 3), np.float32), "dense-f32")
    for cut in range(2 + 4 * 2):
        with pytest.raises(TruncatedError):
            decode_tensor(blob[:cut])


@pytest.mark.parametrize("name", NAMES)
def test_trailing_bytes_are_malformed(name: str) -> None:
    blob = encode_tensor(activation_like(np.random.default_rng(7), n=1, c=8, s=3), name)
    with pytest.raises(CodecError):
        decode_tensor(blob + b"\x00")


def test_unknown_encoding_id() -> None:
    for code in (24, 27, 32, 64, 255):  # 24: lz4 and deflate at once
        with pytest.raises(UnsupportedError, match="encoding id"):
            decode_tensor(bytes([code, 0]))


def test_strategy_refuses_another_encodings_blob() -> None:
    blob = encode_tensor(np.ones(3, np.float32), "dense-f32")
    with pytest.raises(MalformedError, match="expected"):
        get_encoding("dense-f16").decode(blob)


def test_padding_bits_must_be_zero() -> None:
    x = np.zeros((1, 3, 1), np.float32)
    x[0, 0, 0] = 1.0
    blob = bytearray(encode_tensor(x, "sparse-f32"))
    mask_at = 2 + 12
    assert blob[mask_at] == 0b1000_0000
    blob[mask_at] |= 0b0000_0001  # a 4th channel of a 3-channel tensor
    with pytest.raises(MalformedError, match="padding"):
        decode_tensor(bytes(blob))


def test_many_different_channel_masks_decode_correctly() -> None:
    rng = np.random.default_rng(9)
    for _ in range(200):  # more masks than the decoder's mask cache holds
        x = activation_like(rng, n=1, c=16, s=7)
        y = decode_tensor(encode_tensor(x, "sparse-f32"))
        np.testing.assert_array_equal(y, x)
    blob = bytearray(encode_tensor(x, "sparse-f32"))
    blob[2 + 16 + 1] ^= 1  # one channel more or less: the 49-bit rows of the bitmap no longer fit
    with pytest.raises(MalformedError):
        decode_tensor(bytes(blob))


def test_bitmap_and_values_must_agree() -> None:
    x = np.zeros((1, 1, 8), np.float32)
    x[0, 0, :3] = 1.0
    blob = encode_tensor(x, "sparse-f32")
    with pytest.raises(MalformedError, match="bitmap needs"):
        decode_tensor(blob[:-4])
    with pytest.raises(MalformedError, match="bitmap needs"):
        decode_tensor(blob + bytes(4))


def test_peek_shape_checks_limits() -> None:
    blob = encode_tensor(np.zeros((3, 4), np.float32), "sparse-f16-lz4")
    assert peek_shape(blob) == (3, 4)
    with pytest.raises(LimitExceededError):
        peek_shape(blob, Limits(max_elements=11))


def test_default_limits_are_generous_for_a_batch_of_activations() -> None:
    x = activation_like(np.random.default_rng(8), n=256)
    assert decode_tensor(encode_tensor(x), DEFAULT_LIMITS).shape == x.shape


# -- fuzzing: any bytes decode or raise a CodecError, nothing else -------------------------------------------------


def _decode_or_codec_error(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    try:
        return decode_tensor(data, limits)
    except CodecError:
        return None


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    _decode_or_codec_error(data)


@settings(max_examples=300, deadline=None)
@given(
    code=st.sampled_from(sorted(e.code for e in ENCODINGS.values())),
    shape=st.lists(st.integers(0, 9), max_size=4),
    body=st.binary(max_size=200),
)
def test_random_bodies_behind_valid_headers_only_raise_codec_error(
    code: int, shape: list[int], body: bytes
) -> None:
    header = struct.pack(f"<BB{len(shape)}I", code, len(shape), *shape)
    _decode_or_codec_error(header + body, Limits(max_elements=10_000))


@st.composite
def mutated_blobs(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(NAMES))
    seed = draw(st.integers(0, 1000))
    blob = bytearray(encode_tensor(activation_like(np.random.default_rng(seed), n=1, c=8, s=4), name))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        at = draw(st.integers(0, len(blob) - 1)) if blob else 0
        if op == "flip" and blob:
            blob[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and blob:
            blob[at] = draw(st.integers(0, 255))
        elif op == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif blob:
            del blob[at : at + draw(st.integers(1, 8))]
    return bytes(blob)


@settings(max_examples=500, deadline=None)
@given(blob=mutated_blobs())
def test_mutated_blobs_only_raise_codec_error(blob: bytes) -> None:
    result = _decode_or_codec_error(blob)
    if result is not None:
        assert result.dtype == np.float32
        assert np.all(np.isfinite(result))


@settings(max_examples=50, deadline=None)
@given(x=sparse_arrays())
def test_decoding_accepts_memoryview_and_bytearray(x: npt.NDArray[np.float32]) -> None:
    assume(x.size > 0)
    blob = encode_tensor(x, "sparse-f32-lz4")
    np.testing.assert_array_equal(decode_tensor(memoryview(blob)), x)
    np.testing.assert_array_equal(decode_tensor(bytearray(blob)), x)
