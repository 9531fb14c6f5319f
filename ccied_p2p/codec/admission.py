"""What a serving node takes from one peer, decided from a frame's headers before any tensor is decoded.

The codec's :class:`~ccied_p2p.codec.tensor.Limits` bound what any frame may claim (16 MiB of float32 from a
21-byte sparse blob is within them); a node that serves one split can refuse far more, and must, or a peer
with the secret turns kilobytes on the wire into gigabytes of RAM and seconds of tail compute. Per peer link:

- an ``InferRequest`` activation is ``(N, *activation_shape)`` with ``1 <= N <= max_rows`` (the node's
  ``max_batch``): anything else is refused as ``shape`` or ``rows``;
- feature tensors (``CacheEntries``, ``CacheLookup``) are 1-D and at most ``max_feature`` elements each
  (``feature``);
- the tail rows and decoded bytes a peer has waiting or computing stay within ``queue_rows`` and
  ``queue_bytes``; beyond that a request is refused as ``busy`` (the link stays up: the peer may retry, or
  run the tail elsewhere). A peer with nothing queued always gets one request in, so the byte budget never
  starves a lawful request of a large split.

Pure: no I/O, no clock. The runtime reserves with :meth:`PeerBudget.admit` and gives back with
:meth:`PeerBudget.release` once the answer is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ccied_p2p.codec.messages import CacheEntries, CacheLookup, InferRequest
from ccied_p2p.codec.wire import Frame

__all__ = ["AdmissionPolicy", "PeerBudget", "Refusal", "Refused"]


class Refusal(StrEnum):
    """Why a frame was refused; the value is the ``ErrorMessage.code`` the peer receives."""

    SHAPE = "shape"
    ROWS = "rows"
    FEATURE = "feature"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Refused:
    """A refusal: its code, a sentence for the peer and the log, and the request to answer (if any)."""

    code: Refusal
    reason: str
    request_id: int | None


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """What this node accepts from each peer."""

    activation_shape: tuple[int, ...]
    max_rows: int
    max_feature: int
    queue_rows: int
    queue_bytes: int

    def check(self, frame: Frame) -> Refused | None:
        """The stateless rules: shapes and row counts (no budget)."""
        if frame.kind is InferRequest:
            shape = frame.tensors[0].shape
            if len(shape) < 1 or shape[1:] != self.activation_shape:
                return Refused(
                    Refusal.SHAPE,
                    f"activation {shape}, expected (N, *{self.activation_shape})",
                    frame.request_id,
                )
            if not 1 <= shape[0] <= self.max_rows:
                return Refused(
                    Refusal.ROWS, f"{shape[0]} rows, this node takes 1..{self.max_rows}", frame.request_id
                )
        elif frame.kind is CacheEntries or frame.kind is CacheLookup:
            for t in frame.tensors:
                if len(t.shape) != 1 or t.elements > self.max_feature:
                    return Refused(
                        Refusal.FEATURE,
                        f"feature of shape {t.shape}, expected 1-D of at most {self.max_feature}",
                        frame.request_id,
                    )
        return None


@dataclass(slots=True)
class PeerBudget:
    """Tail rows and decoded bytes one peer holds on this node right now."""

    rows: int = 0
    nbytes: int = 0

    def admit(self, frame: Frame, policy: AdmissionPolicy) -> Refused | None:
        """None if ``frame`` may be decoded (an InferRequest's rows and bytes are then reserved)."""
        refused = policy.check(frame)
        if refused is not None:
            return refused
        nbytes = frame.decoded_bytes
        if frame.kind is InferRequest:
            rows = frame.tensors[0].shape[0]
            idle = self.rows == 0 and self.nbytes == 0
            if not idle and (
                self.rows + rows > policy.queue_rows or self.nbytes + nbytes > policy.queue_bytes
            ):
                return Refused(
                    Refusal.BUSY,
                    f"{self.rows} rows ({self.nbytes} bytes) of yours already queued here; "
                    f"budget {policy.queue_rows} rows, {policy.queue_bytes} bytes",
                    frame.request_id,
                )
            self.rows += rows
            self.nbytes += nbytes
        elif nbytes > policy.queue_bytes:
            # Handled inline while the link waits, so only its own size counts.
            return Refused(
                Refusal.FEATURE, f"{nbytes} decoded bytes, budget {policy.queue_bytes}", frame.request_id
            )
        return None

    def release(self, rows: int, nbytes: int) -> None:
        """Give back what an admitted request reserved."""
        self.rows = max(0, self.rows - rows)
        self.nbytes = max(0, self.nbytes - nbytes)
