"""How a camera frame becomes the model's input, and the JPEG a node offloads it as (pure: numpy and Pillow).

Offload sends the input itself, so both ends must turn the same bytes into the same tensor: an
:class:`InputSpec` (size, channels, mean, std) says how, and its :attr:`InputSpec.key` travels in every
``InferInput`` and must match the serving node's. A frame (uint8 ``(H, W, 3)`` or ``(H, W)``) is resized to
the model's input size with Pillow's antialiasing filter, then ``x = (u8 / 255 - mean) / std`` per channel.

:func:`decode_jpeg` is the receiving side of untrusted bytes: Pillow reads the size from the header lazily,
so a JPEG of any other size than the model's input (a decompression bomb among them), any other format,
or garbage is refused before a pixel is decoded.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from ccied_p2p.errors import ConfigError, MalformedError

__all__ = ["LITE_SPEC", "InputSpec", "decode_jpeg", "encode_jpeg"]

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class InputSpec:
    """The model's input: ``size`` (H, W), ``channels`` (1 or 3) and the per-channel ``mean`` and ``std``
    applied to pixels scaled to [0, 1] (one value applies to every channel)."""

    size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1 or max(self.size) > 8192:
            raise ConfigError(f"input size must be (H, W) in 1..8192, got {self.size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels) or not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{name} must hold 1 or {self.channels} finite values, got {values}")
        if any(v == 0 for v in self.std):
            raise ConfigError("std must not be 0")

    @classmethod
    def for_shape(cls, shape: Sequence[int], mean: float = 0.0, std: float = 1.0) -> InputSpec:
        """A spec for an input tensor shaped ``(C, H, W)`` (with or without a batch axis)."""
        dims = tuple(int(d) for d in shape)[-3:]
        if len(dims) != 3:
            raise ConfigError(f"expected an input shaped (C, H, W), got {tuple(shape)}")
        return cls((dims[1], dims[2]), dims[0], (mean,), (std,))

    @property
    def shape(self) -> tuple[int, int, int]:
        """The model's input per row, ``(C, H, W)``."""
        return (self.channels, self.size[0], self.size[1])

    @property
    def key(self) -> str:
        """What peers compare: every field, in a fixed text form."""
        h, w = self.size
        mean = ",".join(f"{v:.6g}" for v in self.mean)
        std = ",".join(f"{v:.6g}" for v in self.std)
        return f"{h}x{w}x{self.channels}/mean={mean}/std={std}"

    @property
    def pixels(self) -> int:
        """Decoded uint8 bytes of one input-sized frame."""
        return self.size[0] * self.size[1] * self.channels

    def prepare(self, frame: Any) -> U8:
        """``frame`` (uint8 (H, W, 3) or (H, W), any size) as uint8 at the model's size and channel count."""
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
            raise ConfigError(f"expected a uint8 frame (H, W, 3) or (H, W), got {arr.dtype} {arr.shape}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        h, w = self.size
        want_rgb = self.channels == 3
        if arr.shape[:2] != (h, w) or (arr.ndim == 3) != want_rgb:
            img = Image.fromarray(np.ascontiguousarray(arr))
            img = img.convert("RGB" if want_rgb else "L")
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
            arr = np.asarray(img)
        out: U8 = np.ascontiguousarray(arr)
        return out

    def to_tensor(self, pixels: U8) -> F32:
        """Input-sized pixels (from :meth:`prepare` or :func:`decode_jpeg`) as float32 ``(1, C, H, W)``."""
        x = pixels.astype(np.float32) / np.float32(255.0)
        x = x[:, :, None] if x.ndim == 2 else x
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        x = (x - mean) / std
        out: F32 = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
        return out

    def preprocess(self, frame: Any) -> F32:
        """A frame of any size as the model's input tensor ``(1, C, H, W)``."""
        return self.to_tensor(self.prepare(frame))

    def max_jpeg_bytes(self) -> int:
        """The largest JPEG a node accepts for this input: a q100 JPEG stays well below 2 bytes a pixel."""
        return max(16 << 10, 2 * self.pixels)


LITE_SPEC = InputSpec((224, 224), 3, (0.5,), (0.5,))
"""EfficientNet-Lite's input: 224 px RGB scaled to [-1, 1] (as :func:`ccied_p2p.camera.normalize`)."""


def encode_jpeg(pixels: U8, quality: int = 90) -> bytes:
    """Input-sized pixels as a baseline JPEG (Pillow's libjpeg, 4:2:0 for RGB)."""
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes, spec: InputSpec) -> U8:
    """The pixels of a JPEG of exactly ``spec``'s size; MalformedError for anything else, before decoding.

    The header is parsed first (Pillow opens lazily): another format, another size or channel count is
    refused without decoding a pixel, so a small file cannot claim a huge image.
    """
    if len(data) > spec.max_jpeg_bytes():
        raise MalformedError(f"JPEG of {len(data)} bytes, at most {spec.max_jpeg_bytes()} for {spec.key}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["JPEG"])
        with img:
            h, w = spec.size
            if img.size != (w, h):
                raise MalformedError(f"JPEG of {img.size[0]}x{img.size[1]} px, this model takes {w}x{h}")
            mode = "RGB" if spec.channels == 3 else "L"
            if img.mode != mode:
                raise MalformedError(f"JPEG in mode {img.mode}, this model takes {mode}")
            img.load()
            out: U8 = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    except MalformedError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        raise MalformedError(f"not a decodable JPEG: {exc}") from None
    if out.shape[:2] != spec.size:
        raise MalformedError(f"JPEG decoded to {out.shape}, expected {spec.size}")
    return out
