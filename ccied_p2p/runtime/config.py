"""What a node is configured with (:class:`NodeConfig`): every field has a default but the cluster secret."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from ccied_p2p.codec.tensor import DEFAULT_LIMITS, Limits
from ccied_p2p.errors import ConfigError
from ccied_p2p.gossip.membership import MembershipConfig
from ccied_p2p.inputs import InputSpec
from ccied_p2p.runtime.transport import HANDSHAKE_TIMEOUT
from ccied_p2p.scheduler import SchedulerPolicy

__all__ = ["NodeConfig"]


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class NodeConfig:
    """Everything a node needs besides the model. A fresh random node id is drawn at every start."""

    name: str = field(default_factory=_default_name)
    secret: str | None = None
    insecure: bool = False  # explicit opt-in to run without a cluster secret (local experiments only)
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    advertise_host: str | None = None  # the address peers should dial (default: host, or this machine's)
    advertise_port: int | None = None  # the port peers should dial (default: the bound port), e.g. a relay's
    seeds: Sequence[str] = ()  # "host:port" of nodes to join through (networks without multicast)
    mdns: bool = True
    mdns_interfaces: Sequence[str] = ("127.0.0.1",)  # ("all",) on a real LAN
    encoding: str = "sparse-f16-lz4"
    request_timeout: float = 2.0
    max_in_flight: int = 64  # per peer link
    heartbeat: float = 5.0  # WebSocket ping interval, seconds
    cache: bool = True
    cache_capacity: int = 100_000
    cache_threshold: float | None = None  # None: the cache's default (calibrate for your model)
    share_cache: bool = True
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    policy: SchedulerPolicy = field(default_factory=SchedulerPolicy)
    offload: bool = True  # False: never send tails to peers (still serves them)
    # What the scheduler assumes this device's own tail costs, in ms (None: measured). A large value makes a
    # weak or battery-powered device offload whenever a peer answers; its own tail stays the fallback.
    local_tail_ms: float | None = None
    serve: bool = True  # False: refuse peers' tail requests
    limits: Limits = DEFAULT_LIMITS
    load_interval: float = 0.5  # how often this node republishes its load and cache summary
    max_batch: int = 32  # most rows the tail worker runs at once (1: no batching), and per peer request
    # What one peer may have waiting or computing here at once; more is refused "busy" (docs/wire-format.md).
    peer_queue_rows: int = 256
    peer_queue_bytes: int = 8 << 20
    inline_tail_ms: float = 0.5  # tails shorter than this run on the event loop, not the worker thread
    observe: bool = True  # serve /status, /metrics and the dashboard (read-only, loopback or read token)
    # Every inbound connection: its request head complete within header_timeout, the next request within
    # idle_timeout, a peer's handshake within handshake_timeout (seconds). At most max_connections open
    # (and at most half the open-file limit), max_connections_per_address from one IPv4 address or IPv6 /64.
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_connections: int = 512
    max_connections_per_address: int = 64
    # The CPU quota this node's process runs under, as a fraction of one core (None: unlimited). Reported in
    # /status; applied by whoever starts the process (``serve --cpu-quota``, LocalCluster), see runtime.quota.
    cpu_quota: float | None = None
    # Frames (infer_frame): how a uint8 frame becomes the model's input (None: the example input's shape,
    # pixels / 255); how offload sends it ("jpeg", "raw" or "auto": JPEG from 64x64 pixels up) and at what
    # quality; frames_stay: raw frames never leave this device (offload is never chosen).
    input_spec: InputSpec | None = None
    offload_format: str = "auto"
    jpeg_quality: int = 90
    frames_stay: bool = False
    accept_inputs: bool = True  # run whole inputs peers offload here
    profile_runs: int = 3  # forwards measured at start, seeding this device's costs
    explore_every: int = 10  # look the cache up at least every N frames, so its hit rate stays measured

    def validate(self) -> None:
        if not self.secret and not self.insecure:
            raise ConfigError(
                "a cluster secret is required (NodeConfig.secret, --secret/--secret-file/$CCIED_SECRET); "
                "pass insecure=True (--insecure) only for local experiments"
            )
        if self.secret is not None and len(self.secret) < 8:
            raise ConfigError("the cluster secret must be at least 8 characters")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port {self.port} out of range")
        if self.request_timeout <= 0:
            raise ConfigError("request_timeout must be > 0")
        for key in ("header_timeout", "idle_timeout", "handshake_timeout"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{key} must be a finite number > 0, got {value}")
        if self.max_connections < 1 or self.max_connections_per_address < 1:
            raise ConfigError("max_connections and max_connections_per_address must be at least 1")
        if not 1 <= self.max_batch <= self.limits.max_items:
            # An answer carries one label per row, and a frame at most max_items of them.
            raise ConfigError(f"max_batch must be in 1..{self.limits.max_items}, got {self.max_batch}")
        if self.peer_queue_rows < self.max_batch or self.peer_queue_bytes < 0:
            raise ConfigError("peer_queue_rows must be >= max_batch and peer_queue_bytes >= 0")
        if self.local_tail_ms is not None and not (
            self.local_tail_ms >= 0 and math.isfinite(self.local_tail_ms)
        ):
            raise ConfigError(f"local_tail_ms must be a finite number >= 0, got {self.local_tail_ms}")
        if self.cpu_quota is not None and not (self.cpu_quota > 0 and math.isfinite(self.cpu_quota)):
            raise ConfigError(f"cpu_quota must be a fraction of one core > 0, got {self.cpu_quota}")
        if self.offload_format not in ("auto", "jpeg", "raw"):
            raise ConfigError(f"offload_format must be auto, jpeg or raw, got {self.offload_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.profile_runs < 0 or self.explore_every < 0:
            raise ConfigError("profile_runs and explore_every must be >= 0")
