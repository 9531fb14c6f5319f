"""What a node hands back and tells: :class:`InferenceResult`, the :class:`NodeObserver` hooks, its counters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ccied_p2p.gossip.membership import MemberEvent
    from ccied_p2p.runtime.node import Node
    from ccied_p2p.runtime.transport import Link

__all__ = ["InferenceResult", "NodeObserver", "NodeStats", "ResultKind"]

ResultKind = Literal["cache", "local", "peer"]


@dataclass(frozen=True)
class InferenceResult:
    """One answer: where it came from, how long each stage took (seconds) and what crossed the network.

    ``kind`` says who answered: this node's cache, its own tail (``"local"``), or a peer, named by ``peer``.
    """

    label: int
    confidence: float
    kind: ResultKind
    timings: dict[str, float]
    bytes_sent: int = 0
    bytes_raw: int = 0  # the fp32 activation this request would have sent uncompressed
    distance: float = math.nan
    attempts: int = 1
    strategy: str = ""  # which way answered: "cache" | "local" | "split" | "offload"
    chosen: str = ""  # the option the per-request policy ranked first (infer_frame), e.g. "offload -> b"
    peer: str | None = None  # the answering peer's name when kind == "peer"

    def __post_init__(self) -> None:
        if (self.kind == "peer") != (self.peer is not None):
            raise ValueError(f"a {self.kind!r} result with peer={self.peer!r}")

    @property
    def source(self) -> str:
        """``"cache"``, ``"local"`` or ``"peer:<name>"``: ``kind`` and ``peer`` in one string (a counter key)."""
        return f"peer:{self.peer}" if self.kind == "peer" else self.kind

    @property
    def latency(self) -> float:
        return self.timings.get("total", math.nan)


class NodeObserver:
    """Told about what a node does (metrics, dashboards); every method must return quickly and not raise.

    Every hook does nothing here: subclass and override the ones you need, then ``node.observers.append(...)``.
    """

    def on_result(self, node: Node, result: InferenceResult) -> None:
        """A request of this node was answered."""

    def on_failure(self, node: Node, error: BaseException) -> None:
        """A request of this node failed."""

    def on_served(self, node: Node, count: int, tail_s: float) -> None:
        """This node answered ``count`` rows for a peer, its tail computing ``tail_s`` seconds."""

    def on_auth_failure(self, node: Node, peer: str, reason: str) -> None:
        """A connection failed the handshake."""

    def on_member(self, node: Node, event: MemberEvent) -> None:
        """Membership changed (joined, suspect, dead, left, ...)."""

    def on_gossip_round(self, node: Node) -> None:
        """One gossip round ran."""

    def on_link_opened(self, node: Node, link: Link) -> None:
        """An authenticated link to a peer opened."""

    def on_link_closed(self, node: Node, link: Link) -> None:
        """A link closed."""


@dataclass
class NodeStats:
    requests: int = 0
    by_source: dict[str, int] = field(default_factory=dict)  # by InferenceResult.source ("peer:<name>", ...)
    by_kind: dict[str, int] = field(default_factory=dict)  # by InferenceResult.kind
    failed: int = 0
    retries: int = 0
    bytes_sent: int = 0
    bytes_raw: int = 0
    served: int = 0
    serve_errors: int = 0
    auth_failures: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # peer frames refused, by ErrorMessage code
    gossip_rounds: int = 0
    connections_refused: dict[str, int] = field(default_factory=dict)  # by reason, see runtime.guard

    def record(self, result: InferenceResult) -> None:
        self.requests += 1
        self.by_source[result.source] = self.by_source.get(result.source, 0) + 1
        self.by_kind[result.kind] = self.by_kind.get(result.kind, 0) + 1
        self.bytes_sent += result.bytes_sent
        self.bytes_raw += result.bytes_raw
