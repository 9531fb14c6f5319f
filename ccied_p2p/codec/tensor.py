"""Tensor encodings for activations and features: strategy objects turning float arrays into bytes and back.

An encoding is a layout (``dense`` or ``sparse``), a value type (``f32``, ``f16``, ``i8``, ``i4``) and optionally
a compression on top, ``lz4`` (fast; shrinks the zero runs of sparse layouts) or ``deflate`` (run-length and
Huffman coding: entropy-codes quantised values, which lz4 cannot shrink); its name joins them, e.g.
``sparse-f16-lz4`` or ``dense-i4-deflate``. A tensor blob starts with its encoding id and shape, so the
receiver learns the encoding from the bytes. The blob layout, field by field, is in ``docs/wire-format.md``; in
short (little-endian)::

    u8 encoding id | u8 ndim | ndim x u32 shape | [u32 body size, if compressed] | body (compressed, if so)

    dense body:  [C x f32 scale, i8/i4 only] values (N*C*S)
    sparse body: channel mask ceil(C/8) | nonzero bitmap ceil(N*K*S/8) | [K x f32 scale, i8/i4 only] | nnz values

where the array is viewed as ``(N, C, S)``: N = shape[0], C = shape[1], S = the product of the rest (missing
axes count as 1), K the number of kept channels and nnz the number of set bitmap bits.

Precision: ``f32`` round-trips exactly (sparse layouts turn -0.0 into +0.0); ``f16`` within
``max(|x| * 2**-11, 2**-25)`` per value and rejects ``|x| > 65504``; ``i8`` (per-channel scale
``max|x_c| / 127``) within ``max|x_c| / 254 * (1 + 2**-10) + 2**-126`` per value (the last term only matters
for subnormal channels); ``i4`` (two values a byte, the first in the low nibble, per-channel scale
``max|x_c| / 7``) within ``max|x_c| / 14 * (1 + 2**-10) + 2**-126``. ``i4`` is for activations whose
consumer tolerates coarse rounding (measured on EfficientNet-Lite0 at 224 px: top-1 agreement 96.8% after
``_blocks.5`` and 99.3% after ``_blocks.11``, ``ccied-p2p prune --model efficientnet-lite0``).
NaN and infinities are never encoded (:class:`EncodeError`) and never decoded (:class:`MalformedError`).

Decoding checks every field against :class:`Limits` before allocating anything, and raises only
:class:`~ccied_p2p.errors.CodecError` subclasses on bad bytes. Encoding checks the same :class:`Limits`
(:class:`~ccied_p2p.errors.EncodeLimitError`), so whatever encodes also decodes.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Final

import lz4.block
import numpy as np
import numpy.typing as npt

from ccied_p2p.errors import (
    ConfigError,
    DecompressionError,
    EncodeError,
    EncodeLimitError,
    LimitExceededError,
    MalformedError,
    TruncatedError,
    UnsupportedError,
)

__all__ = [
    "DEFAULT_LIMITS",
    "ENCODINGS",
    "Compression",
    "DenseEncoding",
    "Limits",
    "SparseEncoding",
    "TensorEncoding",
    "ValueType",
    "decode_tensor",
    "encode_tensor",
    "encoding_of",
    "get_encoding",
    "peek_shape",
]

FloatArray = npt.NDArray[np.float32]
Buffer = bytes | bytearray | memoryview

_HEAD: Final = struct.Struct("<BB")
_U32: Final = struct.Struct("<I")
_SHAPES: Final = [struct.Struct(f"<{n}I") for n in range(256)]
_F16_MAX: Final = 65504.0
_F16_MAX_BITS: Final = 0x477FE000  # float32 bit pattern of 65504.0
_F32_ABS: Final = 0x7FFFFFFF
_F32_EXP: Final = 0x7F800000
# The largest float32 scale whose product with 127 is still finite in float32.
# The largest scale per quantised type: levels * scale stays finite, so every decoded value does.
_SCALE_MAX: Final = {
    levels: np.nextafter(np.float32(np.finfo(np.float32).max / levels), np.float32(0)) for levels in (127, 7)
}
_U32_MAX: Final = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Limits:
    """The one table of bounds: decoders enforce it before they allocate, encoders before they send.

    Shared by the tensor and the frame layer, and by both ends of a link (``docs/wire-format.md``, section 4).
    """

    max_frame_bytes: int = 8 << 20
    max_metadata_bytes: int = 1 << 20
    max_tensors: int = 1024
    max_ndim: int = 8
    max_dim: int = 1 << 20
    max_elements: int = 1 << 22
    max_decompressed_bytes: int = 1 << 25
    max_items: int = 1024
    max_string_bytes: int = 4096
    max_bytes_len: int = 256
    max_input_bytes: int = 512 << 10  # an offloaded JPEG (InferInput.data), the one long bytes field

    def __post_init__(self) -> None:
        # Below these floors no message could pass (a member update is a 9-field array, a node id 16 bytes),
        # and an encoder could no longer promise that what it sends decodes.
        floors = {"max_items": 9, "max_bytes_len": 16, "max_ndim": 1, "max_dim": 1, "max_elements": 1}
        for name, value in dataclasses.asdict(self).items():
            if type(value) is not int or value < floors.get(name, 0):
                raise ConfigError(f"Limits.{name} must be an int >= {floors.get(name, 0)}, got {value!r}")


DEFAULT_LIMITS: Final = Limits()


class Compression(IntEnum):
    """What compresses the body; the number is bits 3-4 of the encoding id (at most one set)."""

    NONE = 0
    LZ4 = 8  # one lz4 block: fast, finds repeats (zero runs of a sparse layout)
    DEFLATE = 16  # raw deflate, run-length and Huffman coding only (zlib Z_RLE): entropy-codes 4-bit values

    @property
    def suffix(self) -> str:
        return "" if self is Compression.NONE else "-" + self.name.lower()


# LZ4 cannot inflate one input byte to more than 255 output bytes, deflate not to more than 1032: a body
# declaring more is a bomb.
_MAX_RATIO: Final = {Compression.LZ4: 256, Compression.DEFLATE: 1032}
_INFLATE_SLACK: Final = 64
_EMPTY: Final = {Compression.LZ4: b"\x00", Compression.DEFLATE: b"\x03\x00"}  # an empty body, compressed


def _deflate(body: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    return packer.compress(body) + packer.flush()


def _inflate(packed: Buffer, declared: int) -> bytes:
    """Exactly ``declared`` (> 0) bytes from one raw deflate stream, never more; DecompressionError else."""
    unpacker = zlib.decompressobj(-15)
    try:
        body = unpacker.decompress(packed, declared)
    except zlib.error as exc:
        raise DecompressionError(f"deflate body does not decompress: {exc}") from None
    if len(body) != declared or not unpacker.eof or unpacker.unconsumed_tail or unpacker.unused_data:
        raise DecompressionError(f"deflate body does not inflate to exactly the declared {declared} bytes")
    return body


class ValueType(IntEnum):
    """How the nonzero (or all) values are stored; the number is the low two bits of the encoding id."""

    F32 = 0
    F16 = 1
    I8 = 2
    I4 = 3

    @property
    def label(self) -> str:
        return ("f32", "f16", "i8", "i4")[self.value]

    @property
    def levels(self) -> int:
        """The largest magnitude of a quantised value (0 for the float types)."""
        return (0, 0, 127, 7)[self.value]

    def nbytes(self, count: int) -> int:
        """Bytes that ``count`` values take (``i4`` packs two a byte)."""
        if self is ValueType.I4:
            return (count + 1) // 2
        return count * (4, 2, 1)[self.value]


def _ncs(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The (N, C, S) view of a shape: batch, channels, everything else (missing axes count as 1)."""
    n = shape[0] if len(shape) >= 1 else 1
    c = shape[1] if len(shape) >= 2 else 1
    s = math.prod(shape[2:])
    return n, c, s


def _as_float32(array: Any) -> FloatArray:
    if not isinstance(array, np.ndarray):
        raise EncodeError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype.kind != "f":
        raise EncodeError(f"expected a floating-point array, got dtype {array.dtype}")
    if array.ndim > 255 or (array.ndim and max(array.shape) > _U32_MAX):
        raise EncodeError(f"shape {array.shape} does not fit the format")
    if array.dtype == np.float32:
        return np.asarray(array, order="C")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused by the encoders
        return np.asarray(array, dtype=np.float32, order="C")


def _padding_ok(body: Buffer, end: int, count: int) -> bool:
    """True if the unused low bits of a ``count``-bit packbits() bitmap ending at ``body[end]`` are zero."""
    spare = -count % 8
    return spare == 0 or (body[end - 1] & ((1 << spare) - 1)) == 0


# A pruned model sends the same channel mask every time; unpacking it once saves a microsecond per tensor.
_MASK_CACHE: dict[tuple[bytes, int], tuple[npt.NDArray[np.intp], int]] = {}
_MASK_CACHE_SIZE: Final = 64


def _channel_mask(packed: bytes, c: int) -> tuple[npt.NDArray[np.intp], int]:
    """The kept channels' indices (read-only) and their count; MalformedError if padding bits are set."""
    hit = _MASK_CACHE.get((packed, c))
    if hit is not None:
        return hit
    if not _padding_ok(packed, len(packed), c):
        raise MalformedError("channel mask has padding bits set")
    kept = np.flatnonzero(np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=c))
    kept.flags.writeable = False
    entry = (kept, len(kept))
    if len(_MASK_CACHE) >= _MASK_CACHE_SIZE:
        _MASK_CACHE.clear()
    _MASK_CACHE[(packed, c)] = entry
    return entry


def _finite(values: FloatArray) -> bool:
    """True if no value is NaN or infinite (count_nonzero is the cheapest reduction numpy has)."""
    return int(np.count_nonzero(np.isfinite(values))) == values.size


def _scales_ok(scale: FloatArray, levels: int) -> bool:
    """True if every scale is positive and small enough that ``levels * scale`` stays finite (NaN fails)."""
    return int(np.count_nonzero((scale > 0) & (scale <= _SCALE_MAX[levels]))) == scale.size


def _channel_scales(amax: FloatArray, levels: int) -> FloatArray:
    scale: FloatArray = np.minimum(amax / np.float32(levels), _SCALE_MAX[levels]).astype(np.float32)
    # An all-zero channel (or one whose max underflows) still needs a positive, finite scale.
    scale[scale == 0] = np.float32(1.0)
    return scale


class TensorEncoding(ABC):
    """One way to turn a float array into bytes and back (hivemind ``CompressionBase`` style)."""

    layout: ClassVar[str]
    _layout_bit: ClassVar[int]

    __slots__ = ("_f16", "_i4", "_levels", "_q", "code", "compression", "name", "value_type")

    def __init__(self, value_type: ValueType, compression: Compression = Compression.NONE) -> None:
        self.value_type = value_type
        self.compression = compression
        # Plain attributes: enum property lookups cost a visible share of a 20 us batch-1 encode.
        self._f16 = value_type is ValueType.F16
        self._q = value_type.levels > 0  # i8 or i4: a float32 scale per channel
        self._i4 = value_type is ValueType.I4
        self._levels = value_type.levels
        self.code = value_type.value | self._layout_bit | compression.value
        self.name = f"{self.layout}-{value_type.label}{compression.suffix}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} id={self.code}>"

    # -- encoding -----------------------------------------------------------------------------------------

    def encode(
        self,
        array: npt.NDArray[np.floating[Any]],
        limits: Limits = DEFAULT_LIMITS,
        *,
        max_elements: int | None = None,
    ) -> bytes:
        """The tensor blob for ``array`` (any float dtype; values must be finite, shape within ``limits``)."""
        x = _as_float32(array)
        shape = x.shape
        _check_shape(shape, limits, limits.max_elements if max_elements is None else max_elements)
        n, c, s = _ncs(shape)
        parts = self._encode_body(x.reshape(n, c, s))
        head = _HEAD.pack(self.code, len(shape)) + _SHAPES[len(shape)].pack(*shape)
        if self.compression is Compression.NONE:
            return b"".join((head, *parts))
        body = b"".join(parts)
        if len(body) > limits.max_decompressed_bytes:
            raise EncodeLimitError(
                f"tensor body of {len(body)} bytes, limit max_decompressed_bytes={limits.max_decompressed_bytes}"
            )
        if self.compression is Compression.LZ4:
            packed = lz4.block.compress(body, store_size=False)
        else:
            packed = _deflate(body)
        return b"".join((head, _U32.pack(len(body)), packed))

    def estimate_compression_ratio(self, array: npt.NDArray[np.floating[Any]]) -> float:
        """Encoded bytes over raw float32 bytes for this array (lower is better)."""
        raw = max(1, int(np.prod(array.shape)) * 4)
        return len(self.encode(array)) / raw

    @abstractmethod
    def _encode_body(self, x: FloatArray) -> tuple[Any, ...]:
        """Body parts (bytes-like) for a contiguous (N, C, S) float32 array."""

    # -- decoding -----------------------------------------------------------------------------------------

    def decode(
        self, data: Buffer, limits: Limits = DEFAULT_LIMITS, *, max_elements: int | None = None
    ) -> FloatArray:
        """A fresh, writable float32 array from a blob of this encoding; CodecError on anything wrong."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        if len(view) < 1:
            raise TruncatedError("empty tensor blob")
        if view[0] != self.code:
            raise MalformedError(f"blob has encoding id {view[0]}, expected {self.code} ({self.name})")
        shape, offset = _parse_shape(
            view, limits, limits.max_elements if max_elements is None else max_elements
        )
        n, c, s = _ncs(shape)
        max_body = self._max_body_size(n, c, s)
        if self.compression is not Compression.NONE:
            body: Buffer = self._decompress(view, offset, shape, max_body, limits)
        else:
            body = view[offset:]
        flat = self._decode_body(body, n, c, s)
        return flat.reshape(shape)

    def _decompress(
        self, view: Buffer, offset: int, shape: tuple[int, ...], max_body: int, limits: Limits
    ) -> Buffer:
        """The body behind the u32 size field at ``offset``, its declared size checked before inflating."""
        kind = self.compression.name.lower()
        if len(view) < offset + 4:
            raise TruncatedError(f"tensor blob ends inside the {kind} size field")
        (declared,) = _U32.unpack_from(view, offset)
        compressed = view[offset + 4 :]
        if declared > max_body:
            raise LimitExceededError(
                f"{kind} body declares {declared} bytes, more than shape {shape} can need ({max_body})"
            )
        if declared > limits.max_decompressed_bytes:
            raise LimitExceededError(
                f"{kind} body declares {declared} bytes, limit {limits.max_decompressed_bytes}"
            )
        if declared > _MAX_RATIO[self.compression] * len(compressed) + _INFLATE_SLACK:
            raise DecompressionError(f"{len(compressed)} {kind} bytes cannot inflate to {declared}")
        if declared == 0:
            empty = _EMPTY[self.compression]
            if len(compressed) != len(empty) or bytes(compressed) != empty:
                raise DecompressionError(f"an empty {kind} body is the bytes {empty.hex()}")
            return b""
        if self.compression is Compression.DEFLATE:
            return _inflate(compressed, declared)
        try:
            body: bytes = lz4.block.decompress(compressed, uncompressed_size=declared)
        except lz4.block.LZ4BlockError as exc:
            raise DecompressionError(f"lz4 block does not decompress: {exc}") from None
        if len(body) != declared:
            raise DecompressionError(f"lz4 block inflated to {len(body)} bytes, declared {declared}")
        return body

    @abstractmethod
    def _max_body_size(self, n: int, c: int, s: int) -> int:
        """The largest body a valid (N, C, S) tensor can have in this encoding."""

    @abstractmethod
    def _decode_body(self, body: Buffer, n: int, c: int, s: int) -> FloatArray:
        """The flat float32 values from an uncompressed body; checks sizes exactly."""

    # -- values -------------------------------------------------------------------------------------------

    def _pack_values(self, values: FloatArray, bits: int = _F32_EXP) -> Any:
        """f32 / f16 values as a little-endian bytes-like; EncodeError on NaN, inf or f16 overflow.

        ``bits`` is the OR of all the values' bit patterns, or anything with the exponent bits set if unknown.
        An OR is at least each pattern, so a small one proves every value in range without looking at them.
        """
        if self._f16:
            # One reduction checks both: NaN fails the comparison, and nothing above 65504 reaches the cast.
            if (bits & _F32_ABS) > _F16_MAX_BITS and values.size and not np.abs(values).max() <= _F16_MAX:
                raise EncodeError("tensor has NaN, infinity or a value beyond the float16 range (65504)")
            return values.astype("<f2")
        if (bits & _F32_EXP) == _F32_EXP and not _finite(values):
            raise EncodeError("tensor has NaN or infinity")
        return values

    def _unpack_values(self, raw: Buffer, count: int, offset: int = 0) -> FloatArray:
        """``count`` f32 / f16 values from ``raw`` as float32 (fresh array); MalformedError if not finite."""
        dtype = "<f2" if self._f16 else "<f4"
        values = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).astype(np.float32)
        if not _finite(values):
            raise MalformedError("tensor holds NaN or infinity")
        return values

    def _quantize(self, x: FloatArray, axes: tuple[int, ...]) -> tuple[FloatArray, npt.NDArray[np.int8]]:
        """Per-channel scales (channel = axis 1 of ``x``, max over ``axes``) and the rounded values."""
        amax = np.abs(x).max(axis=axes) if x.size else np.zeros(x.shape[1], np.float32)
        scale = _channel_scales(amax, self._levels)
        lv = self._levels
        q = np.rint(x / scale[None, :, None]).clip(-lv, lv).astype(np.int8)
        return scale, q

    def _pack_ints(self, q: npt.NDArray[np.int8]) -> Any:
        """int8 values as stored: as they are for ``i8``, two a byte for ``i4`` (first in the low nibble)."""
        if not self._i4:
            return q
        u = q.reshape(-1).view(np.uint8) & np.uint8(0x0F)
        if len(u) % 2:
            u = np.append(u, np.uint8(0))
        packed: npt.NDArray[np.uint8] = u[0::2] | (u[1::2] << np.uint8(4))
        return packed

    def _unpack_ints(self, body: Buffer, count: int, offset: int) -> npt.NDArray[np.int8]:
        """``count`` stored integers as int8; MalformedError for a value below ``-levels`` (-128 or -8: with
        the largest scale it would decode to infinity) or padding bits set after an odd ``i4`` count."""
        if not self._i4:
            q = np.frombuffer(body, dtype=np.int8, count=count, offset=offset)
            if count and q.min() < -127:
                raise MalformedError("i8 values must be in [-127, 127]")
            return q
        raw = np.frombuffer(body, dtype=np.uint8, count=(count + 1) // 2, offset=offset)
        if count % 2 and raw[-1] >> 4:
            raise MalformedError("i4 values have padding bits set")
        nibbles = np.empty(2 * len(raw), dtype=np.uint8)
        nibbles[0::2] = raw & 0x0F
        nibbles[1::2] = raw >> 4
        # Sign-extend: shift the nibble to the top of an int8 and back.
        out: npt.NDArray[np.int8] = (nibbles[:count] << np.uint8(4)).view(np.int8) >> np.int8(4)
        if count and out.min() < -7:
            raise MalformedError("i4 values must be in [-7, 7]")
        return out


def _check_shape(shape: tuple[int, ...], limits: Limits, max_elements: int) -> None:
    """The decoder's shape rules (:func:`_parse_shape`), on the encoding side."""
    if len(shape) > limits.max_ndim:
        raise EncodeLimitError(f"tensor has {len(shape)} dimensions, limit max_ndim={limits.max_ndim}")
    if shape and max(shape) > limits.max_dim:
        raise EncodeLimitError(f"tensor dimension {max(shape)} above limit max_dim={limits.max_dim}")
    count = math.prod(shape)
    if count > max_elements:
        raise EncodeLimitError(f"tensor has {count} elements, limit {max_elements}")


def _parse_shape(view: Buffer, limits: Limits, max_elements: int) -> tuple[tuple[int, ...], int]:
    if len(view) < 2:
        raise TruncatedError("tensor blob ends inside its header")
    ndim = view[1]
    if ndim > limits.max_ndim:
        raise LimitExceededError(f"tensor has {ndim} dimensions, limit {limits.max_ndim}")
    end = 2 + 4 * ndim
    if len(view) < end:
        raise TruncatedError("tensor blob ends inside its shape")
    shape: tuple[int, ...] = _SHAPES[ndim].unpack_from(view, 2)
    for d in shape:
        if d > limits.max_dim:
            raise LimitExceededError(f"tensor dimension {d} above limit {limits.max_dim}")
    count = math.prod(shape)
    if count > max_elements:
        raise LimitExceededError(f"tensor has {count} elements, limit {max_elements}")
    return shape, end


class DenseEncoding(TensorEncoding):
    """Every value, in order; ``i8`` and ``i4`` add one float32 scale per channel (axis 1)."""

    layout = "dense"
    _layout_bit = 0
    __slots__ = ()

    def _encode_body(self, x: FloatArray) -> tuple[Any, ...]:
        if not self._q:
            return (self._pack_values(x.reshape(-1)),)
        if not _finite(x):
            raise EncodeError("tensor has NaN or infinity")
        scale, q = self._quantize(x, (0, 2))
        return (scale.astype("<f4"), self._pack_ints(q))

    def _max_body_size(self, n: int, c: int, s: int) -> int:
        return (4 * c if self._q else 0) + self.value_type.nbytes(n * c * s)

    def _decode_body(self, body: Buffer, n: int, c: int, s: int) -> FloatArray:
        count = n * c * s
        if len(body) != self._max_body_size(n, c, s):
            raise MalformedError(f"dense body has {len(body)} bytes, expected {self._max_body_size(n, c, s)}")
        if not self._q:
            return self._unpack_values(body, count)
        scale = np.frombuffer(body, dtype="<f4", count=c)
        if not _scales_ok(scale, self._levels):
            raise MalformedError(
                f"{self.value_type.label} scales must be in (0, {_SCALE_MAX[self._levels]:.3g}]"
            )
        q = self._unpack_ints(body, count, 4 * c)
        out = q.astype(np.float32).reshape(n, c, s)
        out *= scale.astype(np.float32)[None, :, None]
        return out.reshape(-1)


class SparseEncoding(TensorEncoding):
    """Channel mask, then a bitmap of nonzeros in the kept channels, then only the nonzero values."""

    layout = "sparse"
    _layout_bit = 4
    __slots__ = ()

    def _encode_body(self, x: FloatArray) -> tuple[Any, ...]:
        # OR of the bit patterns per channel: nonzero iff the channel holds a nonzero (or NaN, or -0.0) value,
        # and the OR over all channels bounds every value's magnitude (see _pack_values).
        u = x.view(np.uint32)
        if x.shape[0] == 1:
            ors = np.bitwise_or.reduce(u[0], axis=1)
            keep = ors.astype(np.bool_)
            kept = x[0].compress(keep, axis=0)
        else:
            ors = np.bitwise_or.reduce(np.bitwise_or.reduce(u, axis=2), axis=0)
            keep = ors.astype(np.bool_)
            kept = x.compress(keep, axis=1)
        bits = int(np.bitwise_or.reduce(ors))
        nz_kept = kept.astype(np.bool_)
        mask = np.packbits(keep)
        bitmap = np.packbits(nz_kept)
        if not self._q:
            return (mask, bitmap, self._pack_values(kept[nz_kept], bits))
        if (bits & _F32_EXP) == _F32_EXP and not _finite(kept):
            raise EncodeError("tensor has NaN or infinity")
        kept3 = kept.reshape(x.shape[0], int(np.count_nonzero(keep)), x.shape[2])
        scale, q = self._quantize(kept3, (0, 2))
        return (mask, bitmap, scale.astype("<f4"), self._pack_ints(q[nz_kept.reshape(kept3.shape)]))

    def _max_body_size(self, n: int, c: int, s: int) -> int:
        count = n * c * s
        return (c + 7) // 8 + (count + 7) // 8 + (4 * c if self._q else 0) + self.value_type.nbytes(count)

    def _decode_body(self, body: Buffer, n: int, c: int, s: int) -> FloatArray:
        mask_len = (c + 7) // 8
        if len(body) < mask_len:
            raise MalformedError("sparse body ends inside the channel mask")
        channels, k = _channel_mask(bytes(body[:mask_len]), c)
        raw = np.frombuffer(body, dtype=np.uint8)
        bits = n * k * s
        bitmap_end = mask_len + (bits + 7) // 8
        if len(body) < bitmap_end:
            raise MalformedError("sparse body ends inside the nonzero bitmap")
        if not _padding_ok(body, bitmap_end, bits):
            raise MalformedError("nonzero bitmap has padding bits set")
        nz_kept = np.unpackbits(raw[mask_len:bitmap_end], count=bits).view(np.bool_)
        nnz = int(np.count_nonzero(nz_kept))
        quantized = self._q
        values_at = bitmap_end + 4 * k if quantized else bitmap_end
        need = values_at + self.value_type.nbytes(nnz)
        if len(body) != need:
            raise MalformedError(f"sparse body has {len(body)} bytes, its bitmap needs {need}")
        kept = np.zeros(bits, dtype=np.float32)
        if quantized:
            scale = np.frombuffer(body, dtype="<f4", count=k, offset=bitmap_end)
            if not _scales_ok(scale, self._levels):
                raise MalformedError(
                    f"{self.value_type.label} scales must be in (0, {_SCALE_MAX[self._levels]:.3g}]"
                )
            kept[nz_kept] = self._unpack_ints(body, nnz, values_at)
            kept3 = kept.reshape(n, k, s)  # a view: scaling it scales `kept`
            kept3 *= scale.astype(np.float32)[None, :, None]
        else:
            # Boolean assignment fills the True slots in order; nnz equals the number of values.
            kept[nz_kept] = self._unpack_values(body, nnz, values_at)
        if k == c:
            return kept
        if n == 1:
            out = np.zeros((c, s), dtype=np.float32)
            out[channels] = kept.reshape(k, s)
        else:
            out = np.zeros((n, c, s), dtype=np.float32)
            out[:, channels] = kept.reshape(n, k, s)
        return out.reshape(-1)


def _build() -> dict[str, TensorEncoding]:
    table: dict[str, TensorEncoding] = {}
    for cls in (DenseEncoding, SparseEncoding):
        for vt in ValueType:
            for compression in Compression:
                enc = cls(vt, compression)
                table[enc.name] = enc
    return table


ENCODINGS: Final[dict[str, TensorEncoding]] = _build()
"""Every encoding by name: ``dense-f32``, ``dense-f32-lz4``, ``dense-f32-deflate``, ..., ``sparse-i4-deflate``.
"""

_BY_CODE: Final[dict[int, TensorEncoding]] = {enc.code: enc for enc in ENCODINGS.values()}


def get_encoding(name: str | TensorEncoding) -> TensorEncoding:
    """The encoding called ``name`` (EncodeError if there is none); an encoding object passes through."""
    if isinstance(name, TensorEncoding):
        return name
    try:
        return ENCODINGS[name]
    except KeyError:
        raise EncodeError(f"unknown tensor encoding {name!r}; known: {', '.join(ENCODINGS)}") from None


def encoding_of(data: Buffer) -> TensorEncoding:
    """The encoding a blob declares in its first byte; UnsupportedError for an unknown id."""
    if len(data) < 1:
        raise TruncatedError("empty tensor blob")
    code = data[0]
    try:
        return _BY_CODE[code]
    except KeyError:
        raise UnsupportedError(f"unknown tensor encoding id {code}") from None


def peek_shape(
    data: Buffer, limits: Limits = DEFAULT_LIMITS, *, max_elements: int | None = None
) -> tuple[int, ...]:
    """The shape a blob declares, checked against ``limits``, without decoding the body."""
    encoding_of(data)
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    return _parse_shape(view, limits, limits.max_elements if max_elements is None else max_elements)[0]


def encode_tensor(
    array: npt.NDArray[np.floating[Any]],
    encoding: str | TensorEncoding = "sparse-f16-lz4",
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Encode ``array`` with the named encoding; EncodeError for unknown names, non-finite values or a shape
    above ``limits`` (:class:`~ccied_p2p.errors.EncodeLimitError`)."""
    return get_encoding(encoding).encode(array, limits)


def decode_tensor(data: Buffer, limits: Limits = DEFAULT_LIMITS) -> FloatArray:
    """Decode any tensor blob (the encoding comes from its header); only CodecError subclasses escape."""
    return encoding_of(data).decode(data, limits)
