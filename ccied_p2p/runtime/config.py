"""What a node is configured with: :class:`NodeConfig` and its groups. Every field has a default but the secret.

``NodeConfig(name=..., secret=..., network=NetworkConfig(...), connections=ConnectionLimits(...),
cache=CacheConfig(...), serving=ServingConfig(...), strategy=StrategyConfig(...))``; each group validates
itself and :meth:`NodeConfig.validate` validates them all. The groups are plain dataclasses: the fields a
running node reads per request (``cache.enabled``, ``cache.share``, ``strategy.offload``,
``strategy.local_tail_ms``, ``strategy.frames_stay``, ``serving.serve``) may be changed on a running node; the
others are read when the node is built or started.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ccied_p2p.codec.tensor import DEFAULT_LIMITS, Limits
from ccied_p2p.errors import ConfigError
from ccied_p2p.gossip.membership import MembershipConfig
from ccied_p2p.inputs import InputSpec
from ccied_p2p.runtime.transport import HANDSHAKE_TIMEOUT
from ccied_p2p.scheduler import SchedulerPolicy

if TYPE_CHECKING:
    from ccied_p2p.cache import SemanticCache

__all__ = [
    "CacheConfig",
    "ConnectionLimits",
    "NetworkConfig",
    "NodeConfig",
    "ServingConfig",
    "StrategyConfig",
]


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _finite(value: float | None, low: float, key: str, *, strict: bool = True) -> None:
    """``value`` (if not None) is finite and > ``low`` (``strict``) or >= ``low``, else a ConfigError naming ``key``."""
    if value is None:
        return
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ConfigError(f"{key} must be a finite number {'>' if strict else '>='} {low}, got {value}")


@dataclass
class NetworkConfig:
    """Where the node listens, how peers reach it, how it finds them, and how its links behave."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    advertise_host: str | None = None  # the address peers should dial (default: host, or this machine's)
    advertise_port: int | None = None  # the port peers should dial (default: the bound port), e.g. a relay's
    seeds: Sequence[str] = ()  # "host:port" of nodes to join through (networks without multicast)
    mdns: bool = True
    mdns_interfaces: Sequence[str] = ("127.0.0.1",)  # ("all",) on a real LAN
    heartbeat: float = 5.0  # WebSocket ping interval, seconds
    request_timeout: float = 2.0  # seconds a peer has to answer one request
    max_in_flight: int = 64  # requests outstanding per peer link

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"network.port {self.port} out of range")
        if self.advertise_port is not None and not 0 < self.advertise_port < 65536:
            raise ConfigError(f"network.advertise_port {self.advertise_port} out of range")
        if isinstance(self.seeds, str) or isinstance(self.mdns_interfaces, str):
            raise ConfigError("network.seeds and network.mdns_interfaces are sequences of strings, not one")
        _finite(self.heartbeat, 0, "network.heartbeat")
        _finite(self.request_timeout, 0, "network.request_timeout")
        if self.max_in_flight < 1:
            raise ConfigError(f"network.max_in_flight must be at least 1, got {self.max_in_flight}")


@dataclass
class ConnectionLimits:
    """What every inbound connection is held to (slow or many clients cannot exhaust the node).

    Its request head complete within ``header_timeout``, the next request within ``idle_timeout``, a peer's
    handshake within ``handshake_timeout`` (seconds). At most ``max_connections`` open (and at most half the
    open-file limit), ``max_connections_per_address`` from one IPv4 address or IPv6 /64.
    """

    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_connections: int = 512
    max_connections_per_address: int = 64

    def validate(self) -> None:
        for key in ("header_timeout", "idle_timeout", "handshake_timeout"):
            _finite(getattr(self, key), 0, f"connections.{key}")
        for key in ("max_connections", "max_connections_per_address"):
            if getattr(self, key) < 1:
                raise ConfigError(f"connections.{key} must be at least 1, got {getattr(self, key)}")


@dataclass
class CacheConfig:
    """The node's semantic cache: the one way to configure it.

    ``threshold``, ``k``, ``votes``, ``min_confidence`` and ``radius`` (the per-entry share of the threshold,
    :func:`ccied_p2p.cache.entry_radius`) are the cache's answer rule (None: the cache's own
    default, or the setting of a cache handed to ``Node(..., cache=)``); calibration produces them
    (``presets.calibrate(split, data)[0].config()``). ``share``: replicate entries to and from peers.
    """

    enabled: bool = True
    capacity: int = 100_000  # entries, of the cache the node builds
    threshold: float | None = None  # None: the cache's default (calibrate for your model)
    k: int | None = None
    votes: int | None = None
    min_confidence: float | None = None
    radius: tuple[float, float] | None = None
    share: bool = True

    def validate(self) -> None:
        if self.capacity < 1:
            raise ConfigError(f"cache.capacity must be at least 1, got {self.capacity}")
        if self.threshold is not None and math.isnan(self.threshold):
            raise ConfigError("cache.threshold must be a number, got nan")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"cache.k must be at least 1, got {self.k}")
        if self.votes is not None and not 1 <= self.votes <= (self.k or self.votes):
            raise ConfigError(f"cache.votes must be in 1..k ({self.k}), got {self.votes}")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"cache.min_confidence must be in 0..1, got {self.min_confidence}")
        self._radius()

    def _radius(self) -> tuple[float, float] | None:
        """``radius`` checked by the cache's own rule (imported here: the cache package loads usearch)."""
        if self.radius is None:
            return None
        from ccied_p2p.cache import check_radius

        try:
            return check_radius(self.radius)
        except ConfigError as exc:
            raise ConfigError(f"cache.{exc}") from None

    def tune(self, cache: SemanticCache) -> None:
        """Set the answer rule on ``cache``: every field that is not None (a ConfigError leaves it unchanged)."""
        k = cache.k if self.k is None else self.k
        votes = cache.votes if self.votes is None else self.votes
        if not 1 <= votes <= k:
            raise ConfigError(f"cache.votes must be in 1..k ({k}), got {votes}")
        radius = self._radius()
        cache.k, cache.votes = k, votes
        if self.threshold is not None:
            cache.threshold = self.threshold
        if self.min_confidence is not None:
            cache.min_confidence = self.min_confidence
        if radius is not None:
            cache.radius = radius


@dataclass
class ServingConfig:
    """What this node does for its peers, and how much of it at once."""

    serve: bool = True  # False: refuse peers' tail requests
    accept_inputs: bool = True  # run whole inputs peers offload here
    limits: Limits = DEFAULT_LIMITS  # the wire's bounds (docs/wire-format.md)
    # What one peer may have waiting or computing here at once; more is refused "busy" (docs/wire-format.md).
    peer_queue_rows: int = 256
    peer_queue_bytes: int = 8 << 20
    max_batch: int = 32  # most rows the tail worker runs at once (1: no batching), and per peer request
    inline_tail_ms: float = 0.5  # tails shorter than this run on the event loop, not the worker thread

    def validate(self) -> None:
        if not 1 <= self.max_batch <= self.limits.max_items:
            # An answer carries one label per row, and a frame at most max_items of them.
            raise ConfigError(
                f"serving.max_batch must be in 1..{self.limits.max_items}, got {self.max_batch}"
            )
        if self.peer_queue_rows < self.max_batch:
            raise ConfigError(
                f"serving.peer_queue_rows must be >= max_batch ({self.max_batch}), got {self.peer_queue_rows}"
            )
        if self.peer_queue_bytes < 0:
            raise ConfigError(f"serving.peer_queue_bytes must be >= 0, got {self.peer_queue_bytes}")
        _finite(self.inline_tail_ms, 0, "serving.inline_tail_ms", strict=False)


@dataclass
class StrategyConfig:
    """How this node answers its own requests: offload or not, and how its frames travel."""

    offload: bool = True  # False: never send tails to peers (still serves them)
    # What the scheduler assumes this device's own tail costs, in ms (None: measured). A large value makes a
    # weak or battery-powered device offload whenever a peer answers; its own tail stays the fallback.
    local_tail_ms: float | None = None
    policy: SchedulerPolicy = field(default_factory=SchedulerPolicy)
    # Frames (infer_frame): frames_stay: raw frames never leave this device (offload is never chosen); how a
    # uint8 frame becomes the model's input (None: the example input's shape, pixels / 255); how offload sends
    # it ("jpeg", "raw" or "auto": JPEG from 64x64 pixels up) and at what quality.
    frames_stay: bool = False
    input_spec: InputSpec | None = None
    offload_format: str = "auto"
    jpeg_quality: int = 90
    encoding: str = "sparse-f16-lz4"  # how activations travel to peers (codec.tensor)
    profile_runs: int = 3  # forwards measured at start, seeding this device's costs
    # At least every N frames, look the cache up and encode the input (while offload is an option but not
    # chosen), so the hit rate and what offload would send stay measured; 0: never.
    explore_every: int = 10

    def validate(self) -> None:
        _finite(self.local_tail_ms, 0, "strategy.local_tail_ms", strict=False)
        if self.offload_format not in ("auto", "jpeg", "raw"):
            raise ConfigError(
                f"strategy.offload_format must be auto, jpeg or raw, got {self.offload_format!r}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"strategy.jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        for key in ("profile_runs", "explore_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"strategy.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class NodeConfig:
    """Everything a node needs besides the model, in groups. A fresh random node id is drawn at every start."""

    name: str = field(default_factory=_default_name)
    secret: str | None = None
    insecure: bool = False  # explicit opt-in to run without a cluster secret (local experiments only)
    observe: bool = True  # serve /status, /metrics and the dashboard (read-only, loopback or read token)
    # The CPU quota this node's process runs under, as a fraction of one core (None: unlimited). Reported in
    # /status; applied by whoever starts the process (``serve --cpu-quota``, LocalCluster), see runtime.quota.
    cpu_quota: float | None = None
    load_interval: float = 0.5  # how often this node republishes its load and cache summary
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    cache: CacheConfig = field(default_factory=CacheConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)

    def validate(self) -> None:
        """Raise :class:`~ccied_p2p.errors.ConfigError` naming the first bad field (``group.field``)."""
        if not self.secret and not self.insecure:
            raise ConfigError(
                "a cluster secret is required (NodeConfig.secret, --secret/--secret-file/$CCIED_SECRET); "
                "pass insecure=True (--insecure) only for local experiments"
            )
        if self.secret is not None and len(self.secret) < 8:
            raise ConfigError("the cluster secret must be at least 8 characters")
        if self.cpu_quota is not None and not (self.cpu_quota > 0 and math.isfinite(self.cpu_quota)):
            raise ConfigError(f"cpu_quota must be a fraction of one core > 0, got {self.cpu_quota}")
        _finite(self.load_interval, 0, "load_interval")
        for group in (self.network, self.connections, self.cache, self.serving, self.strategy):
            group.validate()
