"""The messages peers exchange, as plain frozen dataclasses (no I/O, no encoding here).

The byte layout of each one is in :mod:`ccied_p2p.codec.wire`. Node ids are 16 random bytes; times are
seconds (float); fingerprints are lowercase hex strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

__all__ = [
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
    "LoadReport",
    "MemberState",
    "MemberUpdate",
    "Message",
    "Ping",
    "PingReq",
]

FloatArray = npt.NDArray[np.float32]


class MemberState(StrEnum):
    """A member's state as seen by some node (SWIM with suspicion, plus a graceful leave)."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame from each side of a connection: who I am and a fresh nonce to prove the secret against."""

    node_id: bytes
    name: str
    fingerprint: str
    protocol: int
    nonce: bytes
    port: int


@dataclass(frozen=True, slots=True)
class Auth:
    """Second frame from each side: HMAC proof over both hellos (see :mod:`ccied_p2p.codec.auth`)."""

    proof: bytes


@dataclass(frozen=True, slots=True)
class InferRequest:
    """Run the tail on ``activation`` (batch first, float32 after decoding) and answer with labels."""

    request_id: int
    fingerprint: str
    split: str
    activation: FloatArray
    encoding: str = "sparse-f16-lz4"


@dataclass(frozen=True, slots=True)
class InferInput:
    """Run the whole model on this input (offload) and answer with an :class:`InferResponse`.

    ``format`` "jpeg": ``data`` is a JPEG of the model's input size, turned into the input as ``preprocess``
    (an :attr:`~ccied_p2p.inputs.InputSpec.key`) says; "raw": ``tensor`` is the input itself, ``(1, *shape)``.
    ``shape`` is the model's input per row ``(C, H, W)``, checked before anything is decoded.
    """

    request_id: int
    fingerprint: str
    preprocess: str
    format: str
    shape: tuple[int, ...]
    data: bytes = b""
    tensor: FloatArray | None = None
    encoding: str = "dense-f32"


@dataclass(frozen=True, slots=True)
class InferResponse:
    """The tail's answer: one label and confidence per batch row, and server-side timings in seconds."""

    request_id: int
    labels: tuple[int, ...]
    confidences: tuple[float, ...]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """A request (or the connection, request_id 0) failed on the peer; ``code`` is machine-readable."""

    request_id: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class LoadReport:
    """A member's load, versioned by its owner so newer wins."""

    version: int
    queue_depth: int
    tail_ms: float
    service_rate: float
    model_ms: float = 0.0  # the whole model on this member, measured there (0: unknown)
    head_ms: float = 0.0  # the model up to its split point (0: unknown)


@dataclass(frozen=True, slots=True)
class CacheSummary:
    """A small description of a member's semantic cache, for gossip."""

    version: int
    entries: int
    digest: bytes
    hit_rate: float
    label_counts: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """One member as the sender sees it. Higher incarnation wins; at equal incarnation the worse state wins."""

    node_id: bytes
    name: str
    host: str
    port: int
    fingerprint: str
    state: MemberState
    incarnation: int
    load: LoadReport | None = None
    cache: CacheSummary | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """SWIM direct probe, with piggybacked membership updates."""

    seq: int
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """SWIM indirect probe: please ping ``target`` for me and relay its ack under ``seq``."""

    seq: int
    target: bytes
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a Ping or a relayed PingReq; ``target`` is the node that was probed."""

    seq: int
    target: bytes
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Gossip:
    """A periodic push of membership, load and cache summaries."""

    updates: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True)
class Leave:
    """The sender is leaving the cluster on purpose."""

    node_id: bytes
    incarnation: int


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached answer: feature vector (float32, 1-D), label, the tail's confidence and provenance."""

    feature: FloatArray
    label: int
    confidence: float
    fingerprint: str
    origin: bytes
    version: int
    created: float


@dataclass(frozen=True, slots=True)
class CacheSync:
    """Anti-entropy request: the highest entry version the sender holds from each origin."""

    known: tuple[tuple[bytes, int], ...]
    max_bytes: int


@dataclass(frozen=True, slots=True)
class CacheEntries:
    """Entries newer than what the asker knows (answer to CacheSync), or pushed unasked."""

    entries: tuple[CacheEntry, ...]


Message = (
    Hello
    | Auth
    | InferRequest
    | InferResponse
    | InferInput
    | ErrorMessage
    | Ping
    | PingReq
    | Ack
    | Gossip
    | Leave
    | CacheSync
    | CacheEntries
)
