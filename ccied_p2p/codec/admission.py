"""What a serving node takes from one peer, decided from a frame's headers before any tensor is decoded.

The codec's :class:`~ccied_p2p.codec.tensor.Limits` bound what any frame may claim (16 MiB of float32 from a
21-byte sparse blob is within them); a node that serves one split can refuse far more, and must, or a peer
with the secret turns kilobytes on the wire into gigabytes of RAM and seconds of tail compute. Per peer link:

- an ``InferRequest`` activation is ``(N, *activation_shape)`` with ``1 <= N <= max_rows`` (the node's
  ``max_batch``): anything else is refused as ``shape`` or ``rows``;
- an ``InferInput`` (offload) claims the model's input shape ``input_shape`` (None: this node takes no
  offloads, ``input``); a JPEG is at most ``max_input_bytes`` and carries no tensor, a raw input is one
  ``(1, *input_shape)`` tensor (``shape``). Its pixels are checked against the same size when the JPEG
  header is parsed, before a pixel is decoded (:func:`ccied_p2p.inputs.decode_jpeg`). It counts as one row
  and :meth:`AdmissionPolicy.input_cost` bytes against the budget below;
- feature tensors (``CacheEntries``) are 1-D and at most ``max_feature`` elements each
  (``feature``);
- the tail rows and decoded bytes a peer has waiting or computing stay within ``queue_rows`` and
  ``queue_bytes``; beyond that a request is refused as ``busy`` (the link stays up: the peer may retry, or
  run the tail elsewhere). A peer with nothing queued always gets one request in, so the byte budget never
  starves a lawful request of a large split.

Pure: no I/O, no clock. The runtime reserves with :meth:`PeerBudget.admit` and gives back with
:meth:`PeerBudget.release` once the answer is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from ccied_p2p.codec.messages import CacheEntries, InferInput, InferRequest
from ccied_p2p.codec.wire import Frame

__all__ = ["AdmissionPolicy", "PeerBudget", "Refusal", "Refused"]


class Refusal(StrEnum):
    """Why a frame was refused; the value is the ``ErrorMessage.code`` the peer receives."""

    SHAPE = "shape"
    ROWS = "rows"
    FEATURE = "feature"
    BUSY = "busy"
    INPUT = "input"


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
    input_shape: tuple[int, ...] | None = None
    max_input_bytes: int = 0

    def input_cost(self, jpeg_bytes: int) -> int:
        """Bytes an admitted input holds here: the JPEG, its pixels and the float32 tensor."""
        return jpeg_bytes + 5 * math.prod(self.input_shape or ())

    def _check_input(self, frame: Frame) -> Refused | None:
        rid = frame.request_id
        if self.input_shape is None:
            return Refused(Refusal.INPUT, "this node does not run whole inputs", rid)
        fields = frame.fields
        shape = fields[4] if len(fields) > 5 else None
        want = list(self.input_shape)
        if not isinstance(shape, list) or shape != want or not all(type(d) is int for d in shape):
            return Refused(Refusal.SHAPE, f"input shape {shape!r}, this model takes {want}", rid)
        fmt, data = fields[3], fields[5]
        if fmt == "jpeg":
            if frame.tensors or type(data) is not bytes or len(data) > self.max_input_bytes:
                size = len(data) if isinstance(data, bytes) else "?"
                return Refused(
                    Refusal.INPUT,
                    f"JPEG of {size} bytes, this node takes at most {self.max_input_bytes}",
                    rid,
                )
        elif fmt == "raw":
            if len(frame.tensors) != 1 or frame.tensors[0].shape != (1, *self.input_shape):
                got = [t.shape for t in frame.tensors]
                return Refused(Refusal.SHAPE, f"raw input {got}, expected (1, *{self.input_shape})", rid)
        else:
            return Refused(Refusal.INPUT, f"input format {fmt!r}, expected 'jpeg' or 'raw'", rid)
        return None

    def check(self, frame: Frame) -> Refused | None:
        """The stateless rules: shapes and row counts (no budget)."""
        if frame.kind is InferInput:
            return self._check_input(frame)
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
        elif frame.kind is CacheEntries:
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
        if frame.kind is InferRequest or frame.kind is InferInput:
            if frame.kind is InferInput:
                data = frame.fields[5]
                rows, nbytes = 1, policy.input_cost(len(data) if isinstance(data, bytes) else 0)
            else:
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
