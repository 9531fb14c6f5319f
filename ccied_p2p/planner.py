"""Where to cut and how much to prune: a Neurosurgeon-style planner over a measured profile and link (pure).

Given the per-layer latencies and activation sizes of a model (:class:`~ccied_p2p.profile.SplitProfile`), a link
(bandwidth, round trip), the cache hit rate and, per candidate cut, the measured wire size of the activation for
each pruning amount (:class:`PruneOption`), :func:`plan` ranks every way to run one request by its expected
latency (milliseconds)::

    local    = slowdown * (head + tail of the whole model)
    offload  = input bytes / bandwidth + rtt + tail of the whole model on the peer + overhead
    split    = slowdown * head(cut) + lookup + (1 - hit rate) * (rtt + wire bytes / bandwidth + tail(cut)
               + overhead),   wire bytes = raw float32 bytes at the cut * ratio(amount) + frame bytes

``slowdown`` is how much slower the asking device computes than the peer (1 on one machine). Options whose
accuracy drop exceeds ``max_drop_pp`` are never recommended. Neurosurgeon (Kang et al., ASPLOS 2017) picks
the cut from per-layer regression models; here the layer times are measured directly and the cache's hit rate
discounts everything after the lookup, which is what moves CCIED's best cut earlier than Neurosurgeon's.

:func:`situation` turns the same profile, link and options into the input of the per-request policy
(:func:`ccied_p2p.strategy.choose`), so ``ccied-p2p plan`` prints the choice a node makes in that situation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ccied_p2p.errors import ConfigError
from ccied_p2p.profile import SplitProfile
from ccied_p2p.strategy import Costs, Peer, Situation

__all__ = ["Cut", "Link", "Plan", "PruneOption", "cuts_from_profile", "expected", "plan", "situation"]

MBIT = 1_000_000 / 8  # bytes per second in one Mbit/s


@dataclass(frozen=True, slots=True)
class Link:
    """A network path: ``bandwidth`` in bytes per second, ``rtt_s`` round trip in seconds."""

    bandwidth: float
    rtt_s: float

    def __post_init__(self) -> None:
        if not self.bandwidth > 0 or not math.isfinite(self.rtt_s) or self.rtt_s < 0:
            raise ConfigError(f"invalid link: bandwidth {self.bandwidth} B/s, rtt {self.rtt_s} s")

    @classmethod
    def mbit(cls, mbit_per_s: float, rtt_ms: float) -> Link:
        return cls(mbit_per_s * MBIT, rtt_ms / 1000.0)


@dataclass(frozen=True, slots=True)
class Cut:
    """One candidate cut: milliseconds of model before and after it, and the raw float32 activation size."""

    name: str
    head_ms: float
    tail_ms: float
    raw_bytes: int


@dataclass(frozen=True, slots=True)
class PruneOption:
    """A pruning amount at a cut: wire bytes / raw float32 bytes (as measured with the chosen encoding), the
    accuracy it costs in percentage points, and whether those figures were measured or extrapolated."""

    amount: float
    ratio: float
    accuracy_drop_pp: float = 0.0
    measured: bool = True
    encoding: str = "sparse-f16-lz4"

    def __post_init__(self) -> None:
        if not 0.0 <= self.amount < 1.0 or not self.ratio > 0:
            raise ConfigError(f"invalid prune option: amount {self.amount}, ratio {self.ratio}")


@dataclass(frozen=True, slots=True)
class Plan:
    """One way to run a request and its expected latency, with the parts (all milliseconds)."""

    kind: str  # "local" | "offload" | "split"
    split_at: str | None
    amount: float
    expected_ms: float
    head_ms: float
    lookup_ms: float
    transfer_ms: float
    rtt_ms: float
    tail_ms: float
    wire_bytes: float
    hit_rate: float
    accuracy_drop_pp: float
    measured: bool = True
    encoding: str = ""

    @property
    def label(self) -> str:
        if self.kind != "split":
            return self.kind
        cache = " + cache" if self.hit_rate > 0 else ""
        return f"split@{self.split_at} pruned {self.amount:.0%} {self.encoding}{cache}"


def cuts_from_profile(profile: SplitProfile, names: Iterable[str] | None = None) -> list[Cut]:
    """A :class:`Cut` after each profiled layer (or only those in ``names``), in execution order.

    Head time is the sum of layer times up to and including the layer; tail time the rest.
    """
    wanted = None if names is None else set(names)
    total = sum(layer.latency_ms for layer in profile.layers)
    out: list[Cut] = []
    acc = 0.0
    for layer in profile.layers[:-1]:
        acc += layer.latency_ms
        if wanted is not None and layer.name not in wanted:
            continue
        out.append(Cut(layer.name, acc, max(total - acc, 0.0), layer.bytes))
    return out


def expected(
    cut: Cut,
    option: PruneOption,
    link: Link,
    hit_rate: float,
    *,
    lookup_ms: float = 0.3,
    overhead_ms: float = 0.5,
    frame_bytes: int = 120,
    slowdown: float = 1.0,
) -> Plan:
    """The expected latency of splitting at ``cut`` with ``option`` (a cache lookup only if ``hit_rate > 0``)."""
    if not 0.0 <= hit_rate <= 1.0:
        raise ConfigError(f"hit_rate must be in [0, 1], got {hit_rate}")
    if slowdown <= 0:
        raise ConfigError(f"slowdown must be > 0, got {slowdown}")
    wire = cut.raw_bytes * option.ratio + frame_bytes
    transfer = wire / link.bandwidth * 1000.0
    rtt = link.rtt_s * 1000.0
    head = cut.head_ms * slowdown
    lookup = lookup_ms if hit_rate > 0 else 0.0
    miss = rtt + transfer + cut.tail_ms + overhead_ms
    return Plan(
        "split",
        cut.name,
        option.amount,
        head + lookup + (1.0 - hit_rate) * miss,
        head,
        lookup,
        transfer,
        rtt,
        cut.tail_ms,
        wire,
        hit_rate,
        option.accuracy_drop_pp,
        option.measured,
        option.encoding,
    )


def plan(
    profile: SplitProfile,
    link: Link,
    hit_rate: float,
    options: Mapping[str, Sequence[PruneOption]],
    *,
    max_drop_pp: float = 1.0,
    lookup_ms: float = 0.3,
    overhead_ms: float = 0.5,
    frame_bytes: int = 120,
    input_wire_bytes: float | None = None,
    slowdown: float = 1.0,
    baselines: bool = True,
) -> list[Plan]:
    """Every admissible plan, best (lowest expected latency) first.

    ``options`` maps a cut name (a layer of ``profile``) to its pruning options; cuts not named are not
    considered. ``input_wire_bytes``: what full offload sends (default: the profile's float32 input size).
    Each split option is planned with the cache (``hit_rate``) when ``hit_rate > 0`` and without it.
    """
    cuts = {c.name: c for c in cuts_from_profile(profile, options.keys())}
    missing = set(options) - set(cuts)
    if missing:
        raise ConfigError(f"no profiled layer named {', '.join(sorted(missing))}")
    plans: list[Plan] = []
    rates = sorted({0.0, hit_rate})
    for name, opts in options.items():
        for opt in opts:
            if opt.accuracy_drop_pp > max_drop_pp:
                continue
            for h in rates:
                plans.append(
                    expected(
                        cuts[name],
                        opt,
                        link,
                        h,
                        lookup_ms=lookup_ms,
                        overhead_ms=overhead_ms,
                        frame_bytes=frame_bytes,
                        slowdown=slowdown,
                    )
                )
    if baselines:
        total = profile.head_ms + profile.tail_ms
        plans.append(Plan("local", None, 0.0, total * slowdown, total * slowdown, 0, 0, 0, 0, 0, 0.0, 0.0))
        wire = (profile.input_bytes if input_wire_bytes is None else input_wire_bytes) + frame_bytes
        transfer = wire / link.bandwidth * 1000.0
        rtt = link.rtt_s * 1000.0
        plans.append(
            Plan(
                "offload",
                None,
                0.0,
                transfer + rtt + total + overhead_ms,
                0.0,
                0.0,
                transfer,
                rtt,
                total,
                wire,
                0.0,
                0.0,
            )
        )
    plans.sort(key=lambda p: (p.expected_ms, p.kind, p.split_at or "", p.amount))
    return plans


def situation(
    profile: SplitProfile,
    link: Link,
    hit_rate: float,
    options: Mapping[str, Sequence[PruneOption]],
    *,
    max_drop_pp: float = 1.0,
    lookup_at: str | None = None,
    lookup_ms: float = 0.3,
    frame_bytes: int = 120,
    input_wire_bytes: float | None = None,
    slowdown: float = 1.0,
    peers: int = 1,
) -> Situation:
    """The per-request policy's view of this plan: a device ``slowdown`` times slower than the profile (e.g.
    1 / its CPU quota), ``peers`` idle peers at the profile's speed behind ``link``, each cut's activation at
    its smallest admissible wire size, the cache looked up at ``lookup_at`` (default: the profile's split)."""
    if slowdown <= 0:
        raise ConfigError(f"slowdown must be > 0, got {slowdown}")
    cuts = {c.name: c for c in cuts_from_profile(profile, options.keys())}
    total_s = (profile.head_ms + profile.tail_ms) / 1000.0
    full = Costs(total_s, {name: c.head_ms / 1000.0 for name, c in cuts.items()})
    wire: dict[str, int] = {}
    for name, opts in options.items():
        sizes = [cuts[name].raw_bytes * o.ratio for o in opts if o.accuracy_drop_pp <= max_drop_pp]
        if name in cuts and sizes:
            wire[name] = math.ceil(min(sizes)) + frame_bytes
    lookup = lookup_at if lookup_at is not None else profile.split_at
    inputs = profile.input_bytes if input_wire_bytes is None else input_wire_bytes
    return Situation(
        device=full.scaled(slowdown),
        peers=tuple(Peer(f"peer{i}", full, link.bandwidth, link.rtt_s) for i in range(peers)),
        input_bytes=math.ceil(inputs) + frame_bytes,
        activation_bytes=wire,
        hit_rate=hit_rate,
        lookup_at=lookup if hit_rate > 0 and lookup in cuts else None,
        lookup_s=lookup_ms / 1000.0,
    )
