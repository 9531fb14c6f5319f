"""Per request, the fastest way to answer: from the cache, locally, by offloading the input, or split (pure).

Which strategy wins depends on the device, the link and the input (Neurosurgeon, Kang et al. ASPLOS 2017):
measured here with EfficientNet-Lite0 at 224 px and a device at 25% of a core, offloading a 13 KB JPEG beat
every split at 10 Mbit/s, while at full speed the device's own forward beat everything. :func:`choose` costs
every option from measurements and returns them best first; the first is the choice, the rest the failover
order. The cost model, in seconds (``dev(x)`` this device's measured time for x under its own quota, ``peer_p(x)``
peer p's, ``prefix c`` the model up to cut c, ``rest c`` the model after it)::

    wait(p)       = (queue depth + requests in flight there) / service rate   (unknown rate: a model each)
                    + a penalty the caller adds, e.g. for a stale load report
    send(p, B)    = wait(p) + (B + response bytes) / bandwidth(p) + rtt(p) + overhead
    local         = device queue + dev(model)
    offload(p)    = encode + send(p, input bytes) + peer_p(model)
    split(c, p)   = device queue + dev(prefix c) + send(p, activation bytes at c) + peer_p(rest c)
    cache(l, m)   = device queue + dev(prefix l) + lookup + (1 - hit rate) * miss(m),
                    miss(local) = dev(rest l),  miss(p) = send(p, activation bytes at l) + peer_p(rest l)

``input bytes`` is what offload sends (the JPEG at the model's input size, or a raw tensor); ``activation
bytes`` the measured wire size at each cut this device may split at (after pruning and the codec). The cache
is looked up at one point ``l`` (``lookup_at``); a hit answers after the head and the lookup, a miss continues
from there, locally or split at ``l``. With ``frames_stay`` (deployments where raw frames must not leave the
device) offload is never an option. Every option's estimate is the sum of its parts (:class:`Option`); ties
go to the option that keeps work on the device (local, cache, split, offload), then to the peer's name, so
the choice is a deterministic function of its arguments. Nothing here reads a clock or does I/O: the runtime
measures, this module only decides, and ``ccied-p2p plan`` calls the same function.
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ccied_p2p.errors import ConfigError

__all__ = [
    "EXPLORE_BACKOFF",
    "Costs",
    "Exploration",
    "LinkFit",
    "Live",
    "LivePeer",
    "Option",
    "Peer",
    "Situation",
    "Strategy",
    "StrategyPolicy",
    "choose",
    "explore",
    "live_situation",
    "size_input",
]


class Strategy(enum.StrEnum):
    """The four ways to answer a request."""

    CACHE = "cache"
    LOCAL = "local"
    OFFLOAD = "offload"
    SPLIT = "split"


# Ties go to the option that keeps the work (and the frame) closest to the device.
_RANK = {Strategy.LOCAL: 0, Strategy.CACHE: 1, Strategy.SPLIT: 2, Strategy.OFFLOAD: 3}


def _finite(value: float) -> bool:
    return math.isfinite(value) and value >= 0


@dataclass(frozen=True, slots=True)
class Costs:
    """Seconds one device takes for the whole model and for its prefix up to each cut (measured there)."""

    model_s: float
    prefix_s: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _finite(self.model_s) or not all(_finite(v) for v in self.prefix_s.values()):
            raise ConfigError(f"costs must be finite seconds >= 0: {self}")

    def head(self, cut: str) -> float:
        """The model up to and including ``cut``."""
        try:
            return min(self.prefix_s[cut], self.model_s)
        except KeyError:
            raise ConfigError(f"no measured prefix cost at cut {cut!r}") from None

    def rest(self, cut: str) -> float:
        """The model after ``cut``."""
        return max(self.model_s - self.head(cut), 0.0)

    def scaled(self, factor: float) -> Costs:
        """The same model on a device ``factor`` times slower (e.g. 1 / its CPU quota)."""
        if not factor > 0:
            raise ConfigError(f"slowdown factor must be > 0, got {factor}")
        return Costs(self.model_s * factor, {k: v * factor for k, v in self.prefix_s.items()})

    @classmethod
    def from_shares(cls, model_s: float, shares: Mapping[str, float]) -> Costs:
        """Costs from the whole model's time and each cut's share of it (cumulative head share, 0..1)."""
        return cls(model_s, {k: model_s * s for k, s in shares.items()})


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer that runs the same model: its measured costs, this node's measurements of the link, its load.

    ``service_rate``: requests per second it reported (0: unknown; then every waiting request is taken to cost
    a whole model). ``penalty_s`` is added to its wait (a stale load report, recent failures). ``offload``:
    whether it accepts whole inputs.
    """

    name: str
    costs: Costs
    bandwidth: float  # bytes per second
    rtt_s: float
    queue_depth: int = 0
    inflight: int = 0
    service_rate: float = 0.0
    penalty_s: float = 0.0
    offload: bool = True
    node_id: bytes = b""

    def __post_init__(self) -> None:
        if not self.bandwidth > 0 or not _finite(self.rtt_s) or not _finite(self.penalty_s):
            raise ConfigError(f"invalid peer measurements: {self}")

    def wait_s(self) -> float:
        waiting = max(self.queue_depth, 0) + max(self.inflight, 0)
        if waiting == 0:
            return self.penalty_s  # 0 x (1 / a vanishing rate) would be NaN, which no ordering survives
        per = 1.0 / self.service_rate if self.service_rate > 0 else self.costs.model_s
        return waiting * per + self.penalty_s


@dataclass(frozen=True, slots=True)
class Situation:
    """What is known when a request arrives: this device, its peers, the input and the cache."""

    device: Costs
    peers: Sequence[Peer] = ()
    input_bytes: int = 0  # what offload sends: the encoded input (e.g. JPEG) or the raw tensor
    activation_bytes: Mapping[str, int] = field(default_factory=dict)  # split points -> wire bytes
    hit_rate: float = 0.0  # the recent hit rate at ``lookup_at``
    lookup_at: str | None = None  # where the cache is looked up (None: no cache)
    lookup_s: float = 0.0003
    device_queue_s: float = 0.0  # work ahead of this request on this device
    encode_s: float = 0.0  # preparing the input for offload on this device (JPEG encoding)
    response_bytes: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.hit_rate <= 1.0:
            raise ConfigError(f"hit_rate must be in [0, 1], got {self.hit_rate}")
        if not all(_finite(v) for v in (self.lookup_s, self.device_queue_s, self.encode_s)):
            raise ConfigError(f"times must be finite seconds >= 0: {self}")
        if (
            self.input_bytes < 0
            or self.response_bytes < 0
            or any(b < 0 for b in self.activation_bytes.values())
        ):
            raise ConfigError("byte counts must be >= 0")
        for cut in [*self.activation_bytes, *([self.lookup_at] if self.lookup_at is not None else [])]:
            self.device.head(cut)  # raises on an unmeasured cut


@dataclass(frozen=True, slots=True)
class StrategyPolicy:
    """Knobs of :func:`choose`: ``frames_stay`` (never offload raw input), per-request ``overhead_s`` of a
    remote call (framing, codec, event loop), and which strategies are allowed at all (local always is)."""

    frames_stay: bool = False
    overhead_s: float = 0.0005
    allow: frozenset[Strategy] = frozenset(Strategy)

    def __post_init__(self) -> None:
        if not _finite(self.overhead_s):
            raise ConfigError(f"overhead_s must be finite and >= 0, got {self.overhead_s}")

    def allows(self, strategy: Strategy) -> bool:
        if strategy is Strategy.LOCAL:
            return True
        if strategy is Strategy.OFFLOAD and self.frames_stay:
            return False
        return strategy in self.allow


@dataclass(frozen=True, slots=True)
class Option:
    """One way to answer and its expected seconds, the sum of its parts (cache: expected over hit and miss).

    ``peer``: where the work after this device runs (cache: on a miss), None for this device. ``cut``: the split
    point, or the cache's lookup point.
    """

    strategy: Strategy
    seconds: float
    peer: str | None = None
    cut: str | None = None
    device_s: float = 0.0  # queue, compute and lookup on this device
    wait_s: float = 0.0
    transfer_s: float = 0.0
    rtt_s: float = 0.0
    remote_s: float = 0.0
    overhead_s: float = 0.0
    hit_rate: float = 0.0
    node_id: bytes = b""
    hit_s: float = 0.0  # cache: what a hit costs on this device (head to the lookup point and the lookup)

    @property
    def label(self) -> str:
        where = f" -> {self.peer}" if self.peer is not None else ""
        if self.strategy is Strategy.CACHE:
            return f"cache@{self.cut} (miss: {self.peer or 'local'})"
        if self.strategy is Strategy.SPLIT:
            return f"split@{self.cut}{where}"
        return f"{self.strategy.value}{where}"

    def sort_key(self) -> tuple[float, int, int, str, bytes, str]:
        """Estimate first; on a tie, work kept on the device, then names (cache misses served here first)."""
        return (
            self.seconds,
            _RANK[self.strategy],
            0 if self.peer is None else 1,
            self.peer or "",
            self.node_id,
            self.cut or "",
        )


def _option(
    strategy: Strategy,
    peer: Peer | None,
    cut: str | None,
    device_s: float,
    wait_s: float = 0.0,
    transfer_s: float = 0.0,
    rtt_s: float = 0.0,
    remote_s: float = 0.0,
    overhead_s: float = 0.0,
    hit_rate: float = 0.0,
    hit_s: float = 0.0,
) -> Option:
    seconds = device_s + wait_s + transfer_s + rtt_s + remote_s + overhead_s
    return Option(
        strategy,
        seconds,
        None if peer is None else peer.name,
        cut,
        device_s,
        wait_s,
        transfer_s,
        rtt_s,
        remote_s,
        overhead_s,
        hit_rate,
        b"" if peer is None else peer.node_id,
        hit_s,
    )


def explore(options: list[Option], since_lookup: int, every: int) -> list[Option]:
    """``options`` with the best cache option moved first when the cache was last looked up ``every`` or
    more requests ago (0: never) and a hit would beat the best option: the hit rate that decides whether the
    cache is used is only measured by looking it up, so one measured low would otherwise keep it unused."""
    if not every or since_lookup < every or not options or options[0].strategy is Strategy.CACHE:
        return options
    cached = [o for o in options if o.strategy is Strategy.CACHE]
    if not cached or cached[0].hit_s >= options[0].seconds:
        return options
    return [cached[0], *(o for o in options if o is not cached[0])]


def size_input(options: list[Option], since_sized: int, every: int) -> bool:
    """Whether to encode this request's input only to measure what an offload would send: offload is an
    option but not the first (first, the input is encoded anyway) and the input was last encoded ``every`` or
    more requests ago (0: never). Without it the size is learnt only from offloads, so a size first guessed or
    measured high (a busier scene, another camera) keeps offload unchosen and the guess unrevised."""
    if not every or since_sized < every or not options or options[0].strategy is Strategy.OFFLOAD:
        return False
    return any(o.strategy is Strategy.OFFLOAD for o in options)


EXPLORE_BACKOFF = 8
"""An exploring lookup that misses doubles the gap to the next one, up to this many times ``every``."""


@dataclass(slots=True)
class Exploration:
    """When a node measures what it did not choose: it looks the cache up (:func:`explore`) and encodes the input
    only to size it (:func:`size_input`) every so many of the requests its policy decides.

    Only those requests count: ones forced to a strategy (``infer_frame(only=...)``, a benchmark's fixed runs)
    neither advance nor trigger a measurement (the regimes run of 2026-12-02 on the node that also ran the fixed
    strategies explored every 2.5 frames instead of 10). The gap between exploring lookups starts at ``every``,
    doubles after each one that misses, up to ``EXPLORE_BACKOFF`` times ``every``, and falls back to ``every``
    at any hit: on a stream the cache never answers (the real clips) exploring costs a head and a slower
    continuation every 80 requests, not every 10, and a cache that starts answering is found within 80.
    """

    every: int = 10
    since_lookup: int = 0
    since_sized: int = sys.maxsize  # never sized: the first decided request sizes the input
    gap: int = 0  # requests between exploring lookups now (0: ``every``)

    def plan(self, options: list[Option], cache: bool) -> tuple[list[Option], bool, bool]:
        """For one decided request: the order to try, whether the cache was moved first to measure it, and
        whether to encode the input only to size it."""
        out = explore(options, self.since_lookup, self.gap or self.every) if cache else options
        moved = bool(options) and out[0] is not options[0]
        size = size_input(out, self.since_sized, self.every)
        self.since_lookup += 1
        self.since_sized += 1
        return out, moved, size

    def looked(self, hit: bool, explored: bool = False) -> None:
        """The cache was looked up (``explored``: only because :meth:`plan` moved it first)."""
        self.since_lookup = 0
        if hit:
            self.gap = self.every
        elif explored:
            self.gap = min(2 * (self.gap or self.every), EXPLORE_BACKOFF * self.every)

    def sized(self) -> None:
        self.since_sized = 0

    def reset(self) -> None:
        """A new stream (the cache emptied): explore at the base rate again."""
        self.since_lookup = 0
        self.gap = self.every


def _remote(
    peer: Peer, nbytes: int, compute_s: float, s: Situation, policy: StrategyPolicy
) -> tuple[float, float, float, float, float]:
    """(wait, transfer, rtt, remote compute, overhead) of sending ``nbytes`` to ``peer``."""
    transfer = (nbytes + s.response_bytes) / peer.bandwidth
    return (peer.wait_s(), transfer, peer.rtt_s, compute_s, policy.overhead_s)


def choose(situation: Situation, policy: StrategyPolicy | None = None) -> list[Option]:
    """Every admissible option, best (lowest expected seconds) first; local is always among them."""
    policy = policy if policy is not None else StrategyPolicy()
    s = situation
    queue = s.device_queue_s
    out = [_option(Strategy.LOCAL, None, None, queue + s.device.model_s)]
    for peer in s.peers:
        if policy.allows(Strategy.OFFLOAD) and peer.offload:
            wait, transfer, rtt, compute, overhead = _remote(
                peer, s.input_bytes, peer.costs.model_s, s, policy
            )
            out.append(
                _option(Strategy.OFFLOAD, peer, None, s.encode_s, wait, transfer, rtt, compute, overhead)
            )
        if policy.allows(Strategy.SPLIT):
            for cut, nbytes in s.activation_bytes.items():
                if cut not in peer.costs.prefix_s:
                    continue
                parts = _remote(peer, nbytes, peer.costs.rest(cut), s, policy)
                out.append(_option(Strategy.SPLIT, peer, cut, queue + s.device.head(cut), *parts))
    lookup = s.lookup_at
    if lookup is not None and policy.allows(Strategy.CACHE):
        hit_cost = queue + s.device.head(lookup) + s.lookup_s
        miss = 1.0 - s.hit_rate
        out.append(
            _option(
                Strategy.CACHE,
                None,
                lookup,
                hit_cost + miss * s.device.rest(lookup),
                hit_rate=s.hit_rate,
                hit_s=hit_cost,
            )
        )
        at_lookup = s.activation_bytes.get(lookup)
        if at_lookup is not None and policy.allows(Strategy.SPLIT):
            for peer in s.peers:
                if lookup not in peer.costs.prefix_s:
                    continue
                parts = _remote(peer, at_lookup, peer.costs.rest(lookup), s, policy)
                # Expected over hit and miss; a certain hit pays nothing of the miss, even a peer that would
                # never answer (an infinite wait times 0 is NaN, which no ordering survives).
                wait, transfer, rtt, compute, overhead = (miss * x if miss else 0.0 for x in parts)
                out.append(
                    _option(
                        Strategy.CACHE,
                        peer,
                        lookup,
                        hit_cost,
                        wait,
                        transfer,
                        rtt,
                        compute,
                        overhead,
                        hit_rate=s.hit_rate,
                        hit_s=hit_cost,
                    )
                )
    out.sort(key=Option.sort_key)
    return out


@dataclass(slots=True)
class LinkFit:
    """A link's round trip and bandwidth from (bytes sent, seconds until the answer minus server time).

    Each sample is ``rtt + bytes / bandwidth``. A least-squares line over the last ``window`` samples
    separates the two when the bytes explain something measurable: sizes that differ (JPEGs and activations
    do) and a slope above twice its standard error. When sizes differ and the slope is not significant, the
    bytes cost no more than the slope's upper bound (slope + 2 standard errors) allows, and the round trip is
    the rest: a fast link whose bytes cost less than its noise is not given half its round trip as transfer
    time. With one size only, the bandwidth last identified is kept and only the round trip fitted; with
    nothing identified yet, half the fastest sample is taken as the round trip. Before any sample, ``rtt_s``
    and ``bandwidth`` are the guesses given.
    """

    rtt_s: float = 0.001
    bandwidth: float = 10e6
    window: int = 32
    samples: list[tuple[float, float]] = field(default_factory=list)
    identified: bool = False  # the bandwidth came from the samples' slope, not from a guess

    def observe(self, nbytes: int, seconds: float) -> None:
        if not (nbytes > 0 and _finite(seconds) and seconds > 0):
            return
        self.samples.append((float(nbytes), seconds))
        del self.samples[: -self.window]
        xs = [b for b, _ in self.samples]
        ys = [t for _, t in self.samples]
        n = len(xs)
        fastest = min(ys)
        mean_x = sum(xs) / n
        mean_y = sum(ys) / n
        var = sum((x - mean_x) ** 2 for x in xs)
        if n >= 4 and var > 0 and max(xs) > 1.3 * min(xs):
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
            intercept = mean_y - slope * mean_x
            residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
            stderr = math.sqrt(residual / (n - 2) / var)
            if slope > 2 * stderr:
                if self._fit_bandwidth(min(max(intercept, 0.0), fastest)):
                    self.identified = True
                return
            # The bytes cost nothing measurable: no more per byte than the slope's upper bound allows.
            ceiling = max(slope, 0.0) + 2 * stderr
            if ceiling > 0:
                self.bandwidth = max(self.bandwidth, 1.0 / ceiling)
        elif not self.identified:
            self._fit_bandwidth(fastest / 2)
            return
        self._fit_rtt()

    def _fit_bandwidth(self, rtt: float) -> bool:
        """Take ``rtt`` as the round trip and the mean per-byte cost of the rest as the bandwidth; False if no
        sample is slower than ``rtt`` (the bandwidth is then kept)."""
        self.rtt_s = rtt
        per_byte = [(t - rtt) / b for b, t in self.samples if t > rtt]
        if not per_byte:
            return False
        self.bandwidth = 1.0 / max(sum(per_byte) / len(per_byte), 1e-12)
        return True

    def _fit_rtt(self) -> None:
        """The round trip at the bandwidth kept: the mean of what the bytes do not explain."""
        n = len(self.samples)
        self.rtt_s = max(sum(t - b / self.bandwidth for b, t in self.samples) / n, 0.0)


@dataclass(frozen=True, slots=True)
class LivePeer:
    """What a node knows of one peer: its gossiped costs (``model_ms`` / ``head_ms``, 0 unknown, negative:
    it serves nobody), queue and service rate, and this node's fit of the link and requests in flight."""

    name: str
    bandwidth: float
    rtt_s: float
    model_ms: float = 0.0
    head_ms: float = 0.0
    queue_depth: int = 0
    service_rate: float = 0.0
    inflight: int = 0
    penalty_s: float = 0.0
    node_id: bytes = b""


@dataclass(frozen=True, slots=True)
class Live:
    """A node's live measurements, as :meth:`ccied_p2p.runtime.node.Node.situation` gathers them."""

    cut: str
    head_s: float
    tail_s: float
    peers: Sequence[LivePeer] = ()
    input_bytes: int = 0
    activation_bytes: int = 0
    lookups: Sequence[bool] = ()  # the recent lookups, hit or not
    cache: bool = False  # a cache that can answer (on, and calibrated to a threshold >= 0)
    lookup_s: float = 0.0003
    queue_s: float = 0.0
    encode_s: float = 0.0
    slowdown: float = (
        1.0  # this device's CPU quota's slowdown: a peer that did not report is that much faster
    )


def live_situation(live: Live) -> Situation:
    """The :class:`Situation` a node's live measurements describe (pure; ``plan`` builds its own from a
    profile with :func:`ccied_p2p.planner.situation`, and both go through :func:`choose`).

    The hit rate is hits over the recent lookups with one hit and one miss assumed before them (Laplace), so
    an unmeasured cache keeps a chance to be tried.
    """
    device = Costs(live.head_s + live.tail_s, {live.cut: live.head_s})
    peers = []
    for p in live.peers:
        if p.model_ms < 0:
            continue  # it serves nobody
        if p.model_ms > 0:
            model_s = p.model_ms / 1000
            costs = Costs(model_s, {live.cut: min(p.head_ms / 1000, model_s)})
        else:  # not reported yet: as fast as this device at full speed
            costs = device.scaled(1.0 / live.slowdown)
        peers.append(
            Peer(
                p.name,
                costs,
                p.bandwidth,
                p.rtt_s,
                queue_depth=p.queue_depth,
                inflight=p.inflight,
                service_rate=p.service_rate,
                penalty_s=p.penalty_s,
                node_id=p.node_id,
            )
        )
    return Situation(
        device=device,
        peers=tuple(peers),
        input_bytes=live.input_bytes,
        activation_bytes={live.cut: live.activation_bytes},
        hit_rate=(sum(live.lookups) + 1) / (len(live.lookups) + 2),
        lookup_at=live.cut if live.cache else None,
        lookup_s=live.lookup_s,
        device_queue_s=live.queue_s,
        encode_s=live.encode_s,
    )
