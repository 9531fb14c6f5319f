"""Where a tail request runs: a pure policy over estimates, and the small estimators that feed it.

The runtime answers cache hits itself; on a miss it builds one :class:`Candidate` for the local tail and one
per peer (from the peer's gossiped :class:`~ccied_p2p.codec.messages.LoadReport` and this node's own
measurements of the link), then calls :func:`choose`. The answer is the failover order: the peers expected
to finish before the local tail, fastest first, then the local tail, always last, so a request never fails
while this node can compute. Estimated completion time of a candidate::

    queue wait  = (reported queue depth + requests this node has in flight there) / service rate
    compute     = tail seconds per item * batch
    transfer    = (request bytes + response bytes) / measured bandwidth
    total       = queue wait + compute + transfer + round-trip time   (+ a penalty for a stale load report)

Peers with another model fingerprint, not alive, in back-off after a failure, or already tried for this
request are never chosen. Nothing here reads a clock: ``now`` is an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ccied_p2p.codec.messages import MemberState, MemberUpdate
from ccied_p2p.errors import ConfigError, LocalError

__all__ = [
    "BandwidthEstimator",
    "Candidate",
    "Estimate",
    "Ewma",
    "LinkEstimator",
    "RateEstimator",
    "Request",
    "RttEstimator",
    "SchedulerPolicy",
    "candidate_from_member",
    "choose",
    "eligible",
    "estimate",
]


@dataclass(frozen=True, slots=True)
class Request:
    """A tail request to place: its model fingerprint, size on the wire, and the peers that already failed."""

    fingerprint: str
    payload_bytes: int
    batch: int = 1
    response_bytes: int = 64
    exclude: frozenset[bytes] = frozenset()


@dataclass(frozen=True, slots=True)
class Candidate:
    """A place the tail could run, with what is known about it. ``local`` marks this node's own tail."""

    node_id: bytes
    fingerprint: str
    tail_s: float
    local: bool = False
    name: str = ""
    state: MemberState = MemberState.ALIVE
    queue_depth: int = 0
    inflight: int = 0
    service_rate: float = 0.0
    bandwidth: float = math.inf
    rtt_s: float = 0.0
    load_at: float = math.inf
    backoff_until: float = -math.inf


@dataclass(frozen=True, slots=True)
class Estimate:
    """A candidate with its estimated completion time in seconds, and the parts of it."""

    candidate: Candidate
    seconds: float
    queue_s: float
    compute_s: float
    transfer_s: float
    rtt_s: float


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    """Knobs of :func:`choose`.

    ``max_peers``: how many peers to try before the local tail. ``margin_s``: a peer must beat the local
    estimate by this much (estimates are noisy; local work is certain). ``stale_after``: a load report older
    than this many seconds is treated as unknown and costs ``stale_penalty_s``.
    """

    max_peers: int = 3
    margin_s: float = 0.0
    stale_after: float = 2.0
    stale_penalty_s: float = 0.05

    def __post_init__(self) -> None:
        if self.max_peers < 0 or self.margin_s < 0 or self.stale_after <= 0 or self.stale_penalty_s < 0:
            raise ConfigError(f"invalid SchedulerPolicy: {self}")


def estimate(
    request: Request, candidate: Candidate, now: float, policy: SchedulerPolicy | None = None
) -> Estimate:
    """The estimated completion time of ``request`` on ``candidate`` at ``now``."""
    policy = policy if policy is not None else SchedulerPolicy()
    tail = max(candidate.tail_s, 0.0)
    waiting = max(candidate.queue_depth, 0) + max(candidate.inflight, 0)
    rate = candidate.service_rate
    queue_s = waiting / rate if rate > 0 else waiting * tail
    if not candidate.local and now - candidate.load_at > policy.stale_after:
        queue_s += policy.stale_penalty_s
    compute_s = tail * max(request.batch, 1)
    if candidate.local:
        transfer_s = rtt_s = 0.0
    else:
        bandwidth = candidate.bandwidth
        size = max(request.payload_bytes, 0) + max(request.response_bytes, 0)
        transfer_s = size / bandwidth if bandwidth > 0 else math.inf
        rtt_s = max(candidate.rtt_s, 0.0)
    total = queue_s + compute_s + transfer_s + rtt_s
    return Estimate(candidate, total, queue_s, compute_s, transfer_s, rtt_s)


def eligible(request: Request, candidate: Candidate, now: float) -> bool:
    """Whether a peer may be sent this request at all (the local tail is always eligible)."""
    return candidate.local or (
        candidate.fingerprint == request.fingerprint
        and candidate.state is MemberState.ALIVE
        and candidate.node_id not in request.exclude
        and now >= candidate.backoff_until
    )


def choose(
    request: Request,
    candidates: list[Candidate],
    now: float,
    policy: SchedulerPolicy | None = None,
) -> list[Estimate]:
    """The failover order for ``request``: peers that beat the local tail, fastest first, then local.

    Exactly one candidate must be local. Ties between peers go to the lower node id, so the choice is a
    deterministic function of its arguments.
    """
    policy = policy if policy is not None else SchedulerPolicy()
    local = [c for c in candidates if c.local]
    if len(local) != 1:
        raise LocalError(f"choose() needs exactly one local candidate, got {len(local)}")
    mine = estimate(request, local[0], now, policy)
    peers = [
        estimate(request, c, now, policy) for c in candidates if not c.local and eligible(request, c, now)
    ]
    faster = [e for e in peers if e.seconds + policy.margin_s < mine.seconds]
    faster.sort(key=lambda e: (e.seconds, e.candidate.node_id))
    return [*faster[: policy.max_peers], mine]


# ------------------------------------------------------------------ estimators


@dataclass(slots=True)
class Ewma:
    """Exponentially weighted moving average; the first sample is taken as is."""

    alpha: float = 0.2
    value: float | None = None
    count: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"Ewma alpha must be in (0, 1], got {self.alpha}")

    def update(self, sample: float) -> float:
        """Fold in one sample; returns the new average."""
        self.count += 1
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)
        return self.value

    def get(self, default: float) -> float:
        """The average, or ``default`` before the first sample."""
        return default if self.value is None else self.value


@dataclass(slots=True)
class RttEstimator:
    """Smoothed round-trip time and its deviation (Jacobson/Karels, RFC 6298), for estimates and timeouts."""

    initial: float = 0.001
    srtt: float | None = None
    rttvar: float = 0.0

    def update(self, sample: float) -> float:
        """Fold in one measured round trip (seconds); returns the smoothed RTT."""
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar += 0.25 * (abs(self.srtt - sample) - self.rttvar)
            self.srtt += 0.125 * (sample - self.srtt)
        return self.srtt

    @property
    def value(self) -> float:
        """The smoothed RTT (``initial`` before any sample)."""
        return self.initial if self.srtt is None else self.srtt

    def timeout(self, floor: float = 0.05, ceiling: float = 5.0) -> float:
        """A retransmission-style timeout, srtt + 4 rttvar, clamped to [floor, ceiling]."""
        if self.srtt is None:
            return ceiling
        return min(max(self.srtt + 4 * self.rttvar, floor), ceiling)


@dataclass(slots=True)
class BandwidthEstimator:
    """Bytes per second over a link, from (bytes, seconds) transfer samples.

    Transfers smaller than ``min_bytes`` are ignored: their time is round trip, not bandwidth.
    """

    initial: float = 10e6
    min_bytes: int = 4096
    average: Ewma = field(default_factory=lambda: Ewma(0.2))

    def observe(self, nbytes: int, seconds: float) -> None:
        """Fold in one transfer of ``nbytes`` that took ``seconds`` (round trip already subtracted)."""
        if nbytes >= self.min_bytes and seconds > 0:
            self.average.update(nbytes / seconds)

    @property
    def value(self) -> float:
        """The estimate in bytes per second."""
        return self.average.get(self.initial)


@dataclass(slots=True)
class RateEstimator:
    """Events per second over the last ``tau`` seconds or so (an exponentially decayed counter)."""

    tau: float = 2.0
    _count: float = field(default=0.0, init=False)
    _at: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ConfigError(f"RateEstimator tau must be > 0, got {self.tau}")

    def _decay(self, now: float) -> float:
        if self._at == -math.inf:
            return 0.0
        return self._count * math.exp(-max(now - self._at, 0.0) / self.tau)

    def observe(self, now: float, count: float = 1.0) -> None:
        """``count`` events happened at ``now``."""
        self._count = self._decay(now) + count
        self._at = max(now, self._at)

    def rate(self, now: float) -> float:
        """The estimated rate at ``now``, in events per second."""
        return self._decay(now) / self.tau


@dataclass(slots=True)
class LinkEstimator:
    """What this node measured about one peer: round trip, bandwidth, failures (with back-off)."""

    rtt: RttEstimator = field(default_factory=RttEstimator)
    bandwidth: BandwidthEstimator = field(default_factory=BandwidthEstimator)
    failures: int = 0
    backoff_until: float = -math.inf
    base_backoff: float = 0.5
    max_backoff: float = 10.0

    def success(self, rtt_s: float, nbytes: int = 0, transfer_s: float = 0.0) -> None:
        """A request to the peer succeeded; ``transfer_s`` is the part of the time spent moving bytes."""
        self.rtt.update(rtt_s)
        self.bandwidth.observe(nbytes, transfer_s)
        self.failures = 0
        self.backoff_until = -math.inf

    def failure(self, now: float) -> None:
        """A request to the peer failed or timed out: back off, doubling up to ``max_backoff``."""
        self.failures += 1
        delay = min(self.base_backoff * 2 ** (self.failures - 1), self.max_backoff)
        self.backoff_until = now + delay


def candidate_from_member(
    member: MemberUpdate,
    link: LinkEstimator,
    *,
    inflight: int = 0,
    load_at: float = math.inf,
    default_tail_s: float = 0.005,
) -> Candidate:
    """A :class:`Candidate` for a peer from its gossiped record and this node's measurements of the link.

    ``load_at``: when this node received the member's current load report (inf: treat it as fresh).
    """
    load = member.load
    return Candidate(
        node_id=member.node_id,
        fingerprint=member.fingerprint,
        name=member.name,
        state=member.state,
        tail_s=load.tail_ms / 1000.0 if load is not None and load.tail_ms > 0 else default_tail_s,
        queue_depth=load.queue_depth if load is not None else 0,
        service_rate=load.service_rate if load is not None else 0.0,
        inflight=inflight,
        bandwidth=link.bandwidth.value,
        rtt_s=link.rtt.value,
        load_at=-math.inf if load is None else load_at,
        backoff_until=link.backoff_until,
    )
