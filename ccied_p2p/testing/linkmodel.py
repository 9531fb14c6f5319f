"""The pure half of the link emulator: what a link does to bytes, as plain objects fed with ``now``.

Nothing here reads a clock, sleeps or touches a socket, so it is tested with a fake clock; the asyncio relay
(:mod:`ccied_p2p.testing.relay`) asks it *when* each segment may be delivered and waits until then.

A direction of a link is a :class:`TokenBucket` (rate, burst) followed by a :class:`DelaySchedule` (one-way
delay, jitter, loss)::

    depart  = bucket.reserve(segment bytes, now)      # serialisation at ``rate``
    release = schedule.release(depart)                # + delay +- jitter (+ stalls for lost segments)

**Loss on a byte stream.** The relay carries TCP, which never shows the application a gap: a lost segment is
retransmitted, and everything behind it waits (head-of-line blocking). So a "lost" segment here is one whose
delivery stalls by one retransmission timeout (``rto``, 200 ms like Linux's minimum), doubling if the
retransmission is lost too, and every later byte of that direction waits behind it. This is the pessimistic
case of real TCP (a fast retransmit after three duplicate acks recovers in about one round trip); it is honest
about what an application sees, which is latency, not missing bytes. Separately, ``reset`` is the probability
per segment that the connection is reset (both ends get a TCP RST), which is what a flapping Wi-Fi link does
to long-lived connections. Jitter never reorders: bytes of one direction are released in order, so a
segment whose draw would overtake its predecessor is released right after it instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from ccied_p2p.errors import ConfigError

__all__ = ["DelaySchedule", "Direction", "LinkSpec", "Plan", "TokenBucket", "Topology"]

MBIT = 1_000_000 / 8  # bytes per second in one Mbit/s


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction's behaviour (a spec given for a pair applies to each direction separately).

    ``rate`` bytes/s (None: unlimited), ``delay`` one-way seconds, ``jitter`` seconds (uniform in
    ``[-jitter, +jitter]``, no reordering), ``loss`` probability per ``mss`` segment of an ``rto`` stall,
    ``reset`` probability per segment of a connection reset, ``burst`` token-bucket depth in bytes,
    ``queue_bytes`` how much the relay buffers per direction before it stops reading (back-pressure).
    """

    rate: float | None = None
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    reset: float = 0.0
    rto: float = 0.2
    burst: int | None = None
    mss: int = 1448
    queue_bytes: int = 256 << 10

    def __post_init__(self) -> None:
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError(
                f"LinkSpec.rate must be a positive number of bytes/s or None, got {self.rate!r}"
            )
        for name in ("delay", "jitter", "rto"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"LinkSpec.{name} must be >= 0 seconds, got {value!r}")
        for name in ("loss", "reset"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"LinkSpec.{name} must be a probability in [0, 1), got {value!r}")
        if self.loss > 0 and self.rto <= 0:
            raise ConfigError("LinkSpec.rto must be > 0 when loss > 0")
        if self.burst is not None and self.burst < 1:
            raise ConfigError(f"LinkSpec.burst must be >= 1 byte, got {self.burst!r}")
        if self.mss < 1 or self.queue_bytes < self.mss:
            raise ConfigError("LinkSpec.mss must be >= 1 and queue_bytes >= mss")

    @classmethod
    def mbit(cls, mbit_per_s: float, delay: float = 0.0, **kw: float | int | None) -> LinkSpec:
        """A link of ``mbit_per_s`` Mbit/s (each direction) and ``delay`` one-way seconds."""
        return cls(rate=mbit_per_s * MBIT, delay=delay, **kw)  # type: ignore[arg-type]

    @classmethod
    def wifi(cls) -> LinkSpec:
        """The issue's reference Wi-Fi link: 10 Mbit/s, 20 ms one way, 2 ms jitter."""
        return cls(rate=10 * MBIT, delay=0.020, jitter=0.002)

    @property
    def shaped(self) -> bool:
        """True if this spec changes anything about the bytes' timing or fate."""
        return bool(self.rate or self.delay or self.jitter or self.loss or self.reset)

    @property
    def bucket_depth(self) -> float:
        """The token-bucket depth in bytes: ``burst``, else 2 ms of traffic but at least one segment."""
        if self.burst is not None:
            return float(self.burst)
        return max(float(self.mss), (self.rate or 0.0) * 0.002)


class TokenBucket:
    """Rate limiting by virtual scheduling: :meth:`reserve` says when ``n`` bytes have finished leaving.

    Tokens (bytes) refill at ``rate`` up to ``depth``; a reservation may drive the balance negative, and the
    debt is the wait. So back-to-back reservations leave at exactly ``rate`` after the first ``depth`` bytes.
    """

    __slots__ = ("_last", "_tokens", "depth", "rate")

    def __init__(self, rate: float, depth: float, now: float = 0.0) -> None:
        if not rate > 0 or not depth > 0:
            raise ConfigError("TokenBucket rate and depth must be > 0")
        self.rate = float(rate)
        self.depth = float(depth)
        self._tokens = float(depth)
        self._last = now

    @property
    def tokens(self) -> float:
        """The balance after the last reservation (negative: bytes still to serialise)."""
        return self._tokens

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` bytes; returns the time (>= ``now``) at which the last of them has left the link."""
        if n < 0:
            raise ConfigError("cannot reserve a negative number of bytes")
        now = max(now, self._last)  # a clock that steps back must not mint tokens
        self._tokens = min(self.depth, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        return now if self._tokens >= 0 else now - self._tokens / self.rate


class DelaySchedule:
    """Release times of one direction's segments: delay, jitter and loss stalls, never out of order."""

    __slots__ = ("_last", "_rng", "delay", "jitter", "loss", "rto")

    MAX_STALL = 60.0

    def __init__(
        self, delay: float, jitter: float = 0.0, loss: float = 0.0, rto: float = 0.2, *, rng: random.Random
    ) -> None:
        self.delay = delay
        self.jitter = jitter
        self.loss = loss
        self.rto = rto
        self._rng = rng
        self._last = -math.inf

    def stall(self) -> float:
        """Extra wait of one segment: 0 if it got through, else ``rto`` doubling per lost retransmission."""
        total, wait = 0.0, self.rto
        while self.loss and self._rng.random() < self.loss and total < self.MAX_STALL:
            total += wait
            wait *= 2
        return total

    def release(self, depart: float) -> float:
        """When a segment that left the sender's side at ``depart`` reaches the other end."""
        one_way = self.delay
        if self.jitter:
            one_way = max(0.0, one_way + self._rng.uniform(-self.jitter, self.jitter))
        at = max(self._last, depart + one_way + self.stall())
        self._last = at
        return at


@dataclass(frozen=True, slots=True)
class Plan:
    """What happens to one chunk read from a socket: ``(release time, bytes)`` per segment, in order.

    ``reset``: after the last listed segment is delivered the connection is reset, and the rest of the chunk
    (and anything after it) is never delivered.
    """

    segments: tuple[tuple[float, int], ...]
    reset: bool = False


@dataclass(slots=True)
class Direction:
    """One direction of one connection: a (possibly shared) bucket, its own delay schedule, reset draws."""

    spec: LinkSpec
    rng: random.Random
    bucket: TokenBucket | None = None
    schedule: DelaySchedule = field(init=False)

    def __post_init__(self) -> None:
        s = self.spec
        self.schedule = DelaySchedule(s.delay, s.jitter, s.loss, s.rto, rng=self.rng)
        if self.bucket is None and s.rate is not None:
            self.bucket = TokenBucket(s.rate, s.bucket_depth)

    def plan(self, nbytes: int, now: float) -> Plan:
        """Cut ``nbytes`` read at ``now`` into segments and say when each is delivered."""
        s = self.spec
        if not s.shaped:
            return Plan(((now, nbytes),))
        # Unshaped rate with no per-segment randomness: one segment is enough.
        step = s.mss if (s.rate or s.loss or s.reset or s.jitter) else nbytes
        segments: list[tuple[float, int]] = []
        for offset in range(0, nbytes, step):
            size = min(step, nbytes - offset)
            if s.reset and self.rng.random() < s.reset:
                if not segments:
                    segments.append((self.schedule.release(now), 0))  # the reset is felt one delay later
                return Plan(tuple(segments), reset=True)
            depart = self.bucket.reserve(size, now) if self.bucket is not None else now
            segments.append((self.schedule.release(depart), size))
        return Plan(tuple(segments))


Label = Hashable


class Topology:
    """Which endpoints exist, the spec of every directed pair, and partitions (pure bookkeeping).

    Unknown endpoints (a process outside the cluster) get ``default`` and are never cut off.
    """

    def __init__(self, default: LinkSpec | None = None) -> None:
        self.default = default if default is not None else LinkSpec()
        self._specs: dict[tuple[Label, Label], LinkSpec] = {}
        self._group: dict[Label, int] = {}

    def set_link(self, a: Label, b: Label, spec: LinkSpec, *, both: bool = True) -> None:
        """Bytes from ``a`` to ``b`` follow ``spec`` (and from ``b`` to ``a`` too, unless ``both=False``)."""
        self._specs[(a, b)] = spec
        if both:
            self._specs[(b, a)] = spec

    def spec(self, a: Label | None, b: Label | None) -> LinkSpec:
        """The spec for bytes from ``a`` to ``b``."""
        return self._specs.get((a, b), self.default)

    def partition(self, groups: Iterable[Iterable[Label]]) -> None:
        """Cut the listed groups off from each other; an endpoint in no group keeps talking to everyone."""
        mapping: dict[Label, int] = {}
        for index, group in enumerate(groups):
            for label in group:
                if label in mapping:
                    raise ConfigError(f"{label!r} is in two partition groups")
                mapping[label] = index
        self._group = mapping

    def heal(self) -> None:
        """Remove every partition."""
        self._group = {}

    @property
    def partitioned(self) -> bool:
        return bool(self._group)

    def blocked(self, a: Label | None, b: Label | None) -> bool:
        """True if bytes from ``a`` to ``b`` cross a partition."""
        ga, gb = self._group.get(a), self._group.get(b)
        return ga is not None and gb is not None and ga != gb
