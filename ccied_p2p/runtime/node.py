"""The Node: one aiohttp server, peer links, mDNS, SWIM gossip, the cache and the scheduler, in one event loop.

The node is a thin adapter: bytes and events go into the pure layers (codec, cache, membership, scheduler
policy) and what they return is sent. Torch work (head and tail) runs on one worker thread owned by the node,
so the event loop keeps answering probes while a tail computes and the local queue depth is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import aiohttp
import numpy as np
import torch
from aiohttp import web

from ccied_p2p.cache import Hit, SemanticCache
from ccied_p2p.codec.admission import AdmissionPolicy, PeerBudget
from ccied_p2p.codec.auth import Role, new_nonce
from ccied_p2p.codec.messages import (
    Ack,
    CacheEntries,
    CacheSync,
    ErrorMessage,
    Gossip,
    Hello,
    InferInput,
    InferRequest,
    InferResponse,
    Leave,
    LoadReport,
    MemberState,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
)
from ccied_p2p.codec.tensor import DEFAULT_LIMITS, Limits
from ccied_p2p.codec.wire import Frame, encode_message
from ccied_p2p.errors import (
    AuthenticationError,
    CCIEDError,
    CodecError,
    ConfigError,
    EncodeError,
    RemoteError,
)
from ccied_p2p.gossip.membership import MemberEvent, MemberEventKind, Membership, MembershipConfig
from ccied_p2p.inputs import InputSpec, decode_jpeg, encode_jpeg
from ccied_p2p.logs import RateLimitedLog, bind_node
from ccied_p2p.presets import reducer_for
from ccied_p2p.runtime.guard import (
    ConnectionGuard,
    GuardedSite,
    GuardLimits,
    descriptor_budget,
    hold_accept_storm_filter,
    release_accept_storm_filter,
)
from ccied_p2p.runtime.transport import (
    HANDSHAKE_TIMEOUT,
    PROTOCOL_VERSION,
    WS_PATH,
    Link,
    LinkClosedError,
    handshake,
)
from ccied_p2p.scheduler import (
    Candidate,
    Ewma,
    LinkEstimator,
    RateEstimator,
    Request,
    SchedulerPolicy,
    candidate_from_member,
    choose,
)
from ccied_p2p.split import SplitModel
from ccied_p2p.strategy import (
    LinkFit,
    Live,
    LivePeer,
    Option,
    Situation,
    Strategy,
    StrategyPolicy,
    live_situation,
)
from ccied_p2p.strategy import choose as choose_strategy

__all__ = ["InferenceResult", "Node", "NodeConfig", "NodeObserver", "NodeStats"]

log = logging.getLogger(__name__)

_MEMBERSHIP_TYPES = (Ping, PingReq, Ack, Gossip, Leave)


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


@dataclass(frozen=True)
class InferenceResult:
    """One answer: where it came from, how long each stage took (seconds) and what crossed the network."""

    label: int
    confidence: float
    source: str  # "cache" | "local" | "peer:<name>"
    timings: dict[str, float]
    bytes_sent: int = 0
    bytes_raw: int = 0  # the fp32 activation this request would have sent uncompressed
    distance: float = math.nan
    attempts: int = 1
    strategy: str = ""  # which way answered: "cache" | "local" | "split" | "offload"
    chosen: str = ""  # the option the per-request policy ranked first (infer_frame), e.g. "offload -> b"

    @property
    def latency(self) -> float:
        return self.timings.get("total", math.nan)


@dataclass
class _TailJob:
    act: np.ndarray[Any, Any]
    future: asyncio.Future[tuple[list[int], list[float], float, float]]
    queued: float


class _TailQueue:
    """Tail jobs, FIFO per owner (a peer's link, or None for this node), served round-robin across owners.

    A peer with its whole budget queued (``peer_queue_rows``) then delays another's request by about one batch,
    not by everything it queued.
    """

    __slots__ = ("_by_owner",)

    def __init__(self) -> None:
        self._by_owner: dict[object, deque[_TailJob]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_owner)

    def __iter__(self) -> Iterator[_TailJob]:
        for jobs in self._by_owner.values():
            yield from jobs

    def append(self, owner: object, job: _TailJob) -> None:
        self._by_owner.setdefault(owner, deque()).append(job)

    def peek(self) -> _TailJob:
        return next(iter(self._by_owner.values()))[0]

    def popleft(self) -> _TailJob:
        owner, jobs = next(iter(self._by_owner.items()))
        job = jobs.popleft()
        del self._by_owner[owner]
        if jobs:
            self._by_owner[owner] = jobs  # to the back of the rotation
        return job


class NodeObserver(Protocol):
    """Told about what a node does (metrics, dashboards); every method must return quickly and not raise."""

    def on_result(self, node: Node, result: InferenceResult) -> None: ...
    def on_failure(self, node: Node, error: BaseException) -> None: ...
    def on_served(self, node: Node, count: int, tail_s: float) -> None: ...
    def on_auth_failure(self, node: Node, peer: str, reason: str) -> None: ...
    def on_member(self, node: Node, event: MemberEvent) -> None: ...
    def on_gossip_round(self, node: Node) -> None: ...
    def on_link_opened(self, node: Node, link: Link) -> None: ...
    def on_link_closed(self, node: Node, link: Link) -> None: ...


@dataclass
class NodeStats:
    requests: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
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
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def record(self, result: InferenceResult, keep: int = 10_000) -> None:
        self.requests += 1
        kind = "peer" if result.source.startswith("peer:") else result.source
        self.by_source[result.source] = self.by_source.get(result.source, 0) + 1
        lat = self.latencies.setdefault(kind, [])
        lat.append(result.latency)
        if len(lat) > keep:
            del lat[: len(lat) - keep]
        self.bytes_sent += result.bytes_sent
        self.bytes_raw += result.bytes_raw


class Node:
    """A CCIED peer: asks (``infer``) and serves (tails for peers), in one event loop.

    ``async with Node(split, config) as node: await node.infer(x)``.
    """

    def __init__(self, split: SplitModel, config: NodeConfig, cache: SemanticCache | None = None) -> None:
        config.validate()
        self.split = split
        self.config = config
        self._given_cache = cache
        self.node_id = b""
        self.port = 0
        self.host = ""
        self.counters = NodeStats()
        self.links: dict[bytes, Link] = {}
        self._budgets: dict[Link, PeerBudget] = {}
        self.input_spec = config.input_spec or InputSpec.for_shape(split.example_input.shape)
        if self.input_spec.shape != tuple(split.example_input.shape[1:]):
            raise ConfigError(
                f"input_spec {self.input_spec.shape} does not match the model's input "
                f"{tuple(split.example_input.shape[1:])}"
            )
        self._policy = AdmissionPolicy(
            activation_shape=tuple(split.activation_shape),
            max_rows=config.max_batch,
            max_feature=max(1, math.prod(split.activation_shape)),
            queue_rows=config.peer_queue_rows,
            queue_bytes=config.peer_queue_bytes,
            input_shape=self.input_spec.shape if config.accept_inputs and config.serve else None,
            max_input_bytes=min(self.input_spec.max_jpeg_bytes(), config.limits.max_input_bytes),
        )
        # Measurements the per-request choice reads (seconds, bytes): this device's head and per-row tail,
        # what a split and an offload put on the wire, JPEG encoding, the cache's recent hit rate, each link.
        self._head_cost = Ewma(alpha=0.2)
        self._tail_row = Ewma(alpha=0.2)
        self._act_bytes = Ewma(alpha=0.2)
        self._input_bytes = Ewma(alpha=0.2)
        self._encode_cost = Ewma(alpha=0.2)
        self._lookup_cost = Ewma(alpha=0.2)
        self._lookups: deque[bool] = deque(maxlen=32)  # the last lookups: hit or not
        self._links_fit: dict[bytes, LinkFit] = {}
        self._since_lookup = 0
        self._refusal_window = -math.inf
        self._refusals_logged = 0
        self._refusals_quiet = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dialing: dict[bytes, asyncio.Task[Any]] = {}
        self._outbox: dict[bytes, list[Message]] = {}
        self._estimators: dict[bytes, LinkEstimator] = {}
        self._load_at: dict[bytes, float] = {}
        self._local_tail = Ewma(alpha=0.2)
        self._served_rate = RateEstimator()
        self._local_queue = 0
        self._tail_jobs = _TailQueue()
        self._tail_wake = asyncio.Event()
        self._tail_compute = Ewma(alpha=0.2)  # seconds of pure compute per batch
        self._executor: ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self.guard: ConnectionGuard | None = None
        self._storm_held = False
        # What hostile traffic makes this node log (refused connections, handshakes, requests, frames).
        self.refusal_log = RateLimitedLog(log)
        self._session: aiohttp.ClientSession | None = None
        self._discovery: Any = None
        self._links_changed = asyncio.Event()
        self._closing = False
        self._started_at = 0.0
        self.observers: list[NodeObserver] = []
        self.membership: Membership
        self.cache: SemanticCache

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Node:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"ccied:{self.config.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._closing:
            log.error("[%s] task %s failed", self.config.name, task.get_name(), exc_info=task.exception())

    async def start(self) -> None:
        """Bind the server, register with mDNS, dial the seeds and start gossiping."""
        # Every task spawned from here inherits the node's name for its log records.
        with bind_node(self.config.name):
            await self._start()

    async def _start(self) -> None:
        cfg = self.config
        self.node_id = secrets.token_bytes(16)
        self._started_at = time.monotonic()
        self.cache = self._given_cache or SemanticCache(
            self.node_id,
            capacity=cfg.cache_capacity,
            reducer=reducer_for(self.split.activation_shape, self.split.channel_mask),
        )
        if cfg.cache_threshold is not None:
            self.cache.threshold = cfg.cache_threshold
        self.cache.node_id = self.node_id
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ccied-{cfg.name}")
        await self._run_compute(torch.set_num_threads, 1)
        await self._run_compute(self._profile_sync, cfg.profile_runs)

        budget = descriptor_budget()
        max_connections = min(cfg.max_connections, budget) if budget is not None else cfg.max_connections
        if max_connections < cfg.max_connections:
            log.info(
                "[%s] at most %d connections (half the open-file limit), not %d",
                cfg.name,
                max_connections,
                cfg.max_connections,
            )
        self.guard = ConnectionGuard(
            GuardLimits(
                cfg.header_timeout, cfg.idle_timeout, max_connections, cfg.max_connections_per_address
            ),
            refused=self.counters.connections_refused,
            logger=self.refusal_log,
            name=cfg.name,
        )
        hold_accept_storm_filter()
        self._storm_held = True
        app = web.Application(middlewares=[self.guard.middleware()])
        app.router.add_get(WS_PATH, self._handle_ws)
        if cfg.observe:
            from ccied_p2p.runtime.observe import install

            install(app, self)
        self.app = app
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = GuardedSite(self._runner, cfg.host, cfg.port, self.guard)
        await site.start()
        self.port = int(site.sockets[0].getsockname()[1])
        self.host = cfg.advertise_host or (cfg.host if cfg.host not in ("0.0.0.0", "") else _local_ip())
        # Outbound connections leave from the bound address, so a relay or firewall can tell nodes apart.
        local_addr = (cfg.host, 0) if cfg.host not in ("0.0.0.0", "") else None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=local_addr),
            timeout=aiohttp.ClientTimeout(total=None, connect=2.0),
        )
        self.advertised_port = cfg.advertise_port or self.port
        self.membership = Membership(
            self.node_id,
            name=cfg.name,
            host=self.host,
            port=self.advertised_port,
            fingerprint=self.split.fingerprint,
            config=cfg.membership,
            rng=int.from_bytes(self.node_id[:8], "little"),
        )
        log.info(
            "[%s] serving on %s:%d (fingerprint %s)",
            cfg.name,
            self.host,
            self.port,
            self.split.fingerprint[:12],
        )
        self._spawn(self._ticker(), "gossip")
        self._spawn(self._tail_worker(), "tail")
        for seed in cfg.seeds:
            self._spawn(self._dial_address(seed), f"seed:{seed}")
        if cfg.mdns:
            from ccied_p2p.runtime.discovery import Discovery, DiscoveryConfig, ServiceAnnouncement

            self._discovery = Discovery(
                DiscoveryConfig(
                    interfaces="all" if "all" in cfg.mdns_interfaces else list(cfg.mdns_interfaces)
                ),
                announce=ServiceAnnouncement(
                    node_id=self.node_id,
                    name=cfg.name,
                    fingerprint=self.split.fingerprint,
                    port=self.advertised_port,
                    protocol=PROTOCOL_VERSION,
                    host=self.host,
                ),
            )
            await self._discovery.__aenter__()
            self._spawn(self._watch_discovery(), "mdns")

    async def abort(self) -> None:
        """Stop as a crash would (for fault tests): no Leave, sockets dropped, every task still awaited."""
        if self._closing:
            return
        self._closing = True
        for link in list(self.links.values()):
            # aiohttp keeps the socket on both ends' WebSocketWriter; no public API drops it without a close.
            transport = getattr(getattr(link.ws, "_writer", None), "transport", None)
            if transport is not None:
                transport.abort()
        await self._shutdown(leave=False)

    async def close(self) -> None:
        """Tell peers we leave, unregister mDNS, close links, stop every task; idempotent."""
        if self._closing:
            return
        self._closing = True
        await self._shutdown(leave=True)

    async def _shutdown(self, leave: bool) -> None:
        if leave and hasattr(self, "membership"):
            with contextlib.suppress(Exception):
                await self._send_all(self.membership.leave(self._now()))
        if self._discovery is not None:
            with contextlib.suppress(Exception):
                await self._discovery.__aexit__(None, None, None)
            self._discovery = None
        for link in list(self.links.values()):
            await link.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for job in self._tail_jobs:
            job.future.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.guard is not None:
            self.guard.close()
        if self._storm_held:
            self._storm_held = False
            release_accept_storm_filter()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.links.clear()

    def _notify(self, method: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, method)(self, *args)
            except Exception:  # an observer must never break the node
                log.exception("[%s] observer %r failed in %s", self.config.name, observer, method)

    async def wait_for_peers(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until this node holds authenticated links to at least ``count`` peers (TimeoutError after)."""
        async with asyncio.timeout(timeout):
            while len(self.links) < count:
                self._links_changed.clear()
                await self._links_changed.wait()

    # ------------------------------------------------------------------ views

    def _now(self) -> float:
        return time.monotonic()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def peers(self) -> dict[str, MemberUpdate]:
        """Every other member this node knows, by name, with its state, load and cache summary."""
        if not hasattr(self, "membership"):
            return {}
        return {m.name: m for m in self.membership.members() if m.node_id != self.node_id}

    def stats_dict(self) -> dict[str, Any]:
        s = self.counters
        cstats = self.cache.stats() if hasattr(self, "cache") else None
        return {
            "name": self.config.name,
            "node_id": self.node_id.hex(),
            "address": self.address,
            "fingerprint": self.split.fingerprint,
            "requests": s.requests,
            "failed": s.failed,
            "retries": s.retries,
            "sources": dict(s.by_source),
            "served": s.served,
            "serve_errors": s.serve_errors,
            "auth_failures": s.auth_failures,
            "connections": None if self.guard is None else self.guard.stats(),
            "refused": dict(s.refused),
            "bytes_sent": s.bytes_sent,
            "bytes_raw": s.bytes_raw,
            "cache": None if cstats is None else dataclasses.asdict(cstats),
            "peers": {name: m.state.value for name, m in self.peers.items()},
            "links": len(self.links),
        }

    def stats(self) -> dict[str, Any]:
        """Counters: requests by source, failures, bytes, what was served, cache and peers."""
        return self.stats_dict()

    # ------------------------------------------------------------------ compute

    async def _run_compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _tail_sync(self, act: np.ndarray[Any, Any]) -> tuple[list[int], list[float], float]:
        start = time.perf_counter()
        logits = self.split.tail(torch.from_numpy(np.ascontiguousarray(act, dtype=np.float32)))
        probs = torch.softmax(logits.float(), dim=1)
        conf, labels = probs.max(dim=1)
        return labels.tolist(), conf.tolist(), time.perf_counter() - start

    def _head_sync(self, x: torch.Tensor) -> tuple[np.ndarray[Any, Any], float]:
        start = time.perf_counter()
        act = self.split.head(x)
        head_s = time.perf_counter() - start
        if len(x) == 1:
            self._head_cost.update(head_s)
        return act.numpy(), head_s

    def _profile_sync(self, runs: int) -> None:
        """A few forwards of the example input: this device's head and tail costs before any request, and
        the wire size of its activation and of its input."""
        act = self.split.head(self.split.example_input).numpy()
        for _ in range(runs):
            act, _ = self._head_sync(self.split.example_input)
            _, _, tail_s = self._tail_sync(act)
            self._tail_row.update(tail_s)
        fp = self.split.fingerprint
        self._act_bytes.update(
            len(encode_message(InferRequest(0, fp, self.split.split_at, act, self.config.encoding))) + 16
        )
        spec = self.input_spec
        # A q90 JPEG of a camera frame: 6-16 KB at 224x224x3; a raw input: its float32 bytes.
        guess = spec.pixels // 10 if self._offload_format() == "jpeg" else spec.pixels * 4
        self._input_bytes.update(guess + 160)

    def _offload_format(self) -> str:
        fmt = self.config.offload_format
        if fmt == "auto":
            return "jpeg" if self.input_spec.size[0] * self.input_spec.size[1] >= 64 * 64 else "raw"
        return fmt

    async def _local_tail_run(
        self, act: np.ndarray[Any, Any], owner: object = None
    ) -> tuple[list[int], list[float], float, float]:
        """Queue rows for the tail worker (``owner``: the asking peer's link, None for this node); returns
        labels, confidences, compute and queue seconds."""
        job = _TailJob(act, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._tail_jobs.append(owner, job)
        self._local_queue += len(act)
        self._tail_wake.set()
        return await job.future

    async def _tail_worker(self) -> None:
        """Dynamic batching: whatever queued while the last batch computed runs next, as one batch.

        A lone request runs at once (no timer); under load, batches form by themselves up to ``max_batch``
        rows, which is what makes a CPU tail serve more requests per second. Jobs are taken round-robin
        across askers (:class:`_TailQueue`).
        """
        jobs = self._tail_jobs
        limit = max(1, self.config.max_batch)
        while True:
            await self._tail_wake.wait()
            self._tail_wake.clear()
            while jobs:
                batch = [jobs.popleft()]
                rows = len(batch[0].act)
                while jobs and rows + len(jobs.peek().act) <= limit:
                    batch.append(jobs.popleft())
                    rows += len(batch[-1].act)
                batch = [j for j in batch if not j.future.done()]
                if not batch:
                    self._local_queue -= rows
                    continue
                acts = batch[0].act if len(batch) == 1 else np.concatenate([j.act for j in batch])
                start = time.perf_counter()
                try:
                    if (
                        not jobs
                        and len(acts) == 1
                        and self._tail_compute.get(1.0) * 1000 < self.config.inline_tail_ms
                    ):
                        # A lone short tail costs less than the hop to the worker thread and back; under
                        # load the thread wins, since the loop keeps moving bytes while it computes.
                        labels, confs, tail_s = self._tail_sync(acts)
                    else:
                        labels, confs, tail_s = await self._run_compute(self._tail_sync, acts)
                    self._tail_compute.update(tail_s)
                    self._tail_row.update(tail_s / len(acts))
                except Exception as exc:
                    for j in batch:
                        if not j.future.done():
                            j.future.set_exception(exc)
                    continue
                finally:
                    self._local_queue -= rows
                # Service time per row as the loop sees it: compute plus the hop to the worker thread.
                self._local_tail.update((time.perf_counter() - start) / max(1, len(acts)))
                self._served_rate.observe(self._now(), len(acts))
                i = 0
                for j in batch:
                    n = len(j.act)
                    if not j.future.done():
                        j.future.set_result((labels[i : i + n], confs[i : i + n], tail_s, start - j.queued))
                    i += n

    # ------------------------------------------------------------------ inference

    @overload
    async def infer(
        self, x: torch.Tensor, *, concurrency: int = ...
    ) -> InferenceResult | list[InferenceResult]: ...

    @overload
    async def infer(
        self, x: np.ndarray[Any, Any], *, concurrency: int = ...
    ) -> InferenceResult | list[InferenceResult]: ...

    async def infer(self, x: Any, *, concurrency: int = 8) -> InferenceResult | list[InferenceResult]:
        """Infer one input (C, H, W) or a batch (N, C, H, W); a batch returns one result per row."""
        t = torch.as_tensor(x, dtype=torch.float32)
        expected = tuple(self.split.example_input.shape[1:])
        if t.dim() == len(expected) and tuple(t.shape) == expected:
            return await self._infer_one(t.unsqueeze(0))
        if t.dim() == len(expected) + 1 and tuple(t.shape[1:]) == expected:
            sem = asyncio.Semaphore(max(1, concurrency))

            async def one(row: torch.Tensor) -> InferenceResult:
                async with sem:
                    return await self._infer_one(row.unsqueeze(0))

            return list(await asyncio.gather(*(one(row) for row in t)))
        raise ConfigError(f"expected an input shaped {expected} or (N, *{expected}), got {tuple(t.shape)}")

    async def _infer_one(self, x: torch.Tensor) -> InferenceResult:
        return await self._counted(self._infer_steps(x))

    async def _counted(self, steps: Awaitable[InferenceResult]) -> InferenceResult:
        """Run one request's steps, counting and reporting its result or its failure."""
        try:
            with bind_node(self.config.name):
                result = await steps
        except Exception as exc:
            self.counters.failed += 1
            self._notify("on_failure", exc)
            raise
        self.counters.record(result)
        self._notify("on_result", result)
        return result

    async def _infer_steps(self, x: torch.Tensor) -> InferenceResult:
        t0 = time.perf_counter()
        act, head_s = await self._run_compute(self._head_sync, x)
        timings: dict[str, float] = {"head": head_s}
        raw_bytes = int(act.size) * 4
        fp = self.split.fingerprint
        now = self._now()
        if self.config.cache:
            t1 = time.perf_counter()
            try:
                found = self.cache.lookup(act, fp, now)
            except CCIEDError as exc:
                log.warning("[%s] cache lookup failed: %s", self.config.name, exc)
                found = None
            timings["lookup"] = time.perf_counter() - t1
            if isinstance(found, Hit) and not found.audit:
                timings["total"] = time.perf_counter() - t0
                return InferenceResult(
                    found.label,
                    found.confidence,
                    "cache",
                    timings,
                    0,
                    raw_bytes,
                    found.distance,
                    strategy="cache",
                )
        else:
            found = None
        # A miss, or a hit the cache wants audited: run the tail and tell the cache what it said.
        result = await self._run_tail(act, timings, t0, raw_bytes)
        if self.config.cache:
            with contextlib.suppress(CCIEDError):
                if isinstance(found, Hit):
                    self.cache.verify(act, found, result.label, result.confidence, fp, self._now())
                else:
                    self.cache.insert(act, result.label, result.confidence, fp, self._now())
        return result

    def _candidates(self, now: float) -> list[Candidate]:
        local = Candidate(
            node_id=self.node_id,
            fingerprint=self.split.fingerprint,
            tail_s=(
                self._local_tail.get(0.001)
                if self.config.local_tail_ms is None
                else self.config.local_tail_ms / 1000
            ),
            local=True,
            name=self.config.name,
            queue_depth=self._local_queue,
            service_rate=0.0,
        )
        out = [local]
        if not self.config.offload:
            return out
        for node_id, link in self.links.items():
            member = self.membership.get(node_id)
            if member is None or link.closed.is_set():
                continue
            est = self._estimators.setdefault(node_id, LinkEstimator())
            out.append(
                candidate_from_member(
                    member, est, inflight=link.in_flight, load_at=self._load_at.get(node_id, math.inf)
                )
            )
        return out

    async def _run_tail(
        self, act: np.ndarray[Any, Any], timings: dict[str, float], t0: float, raw_bytes: int
    ) -> InferenceResult:
        fp = self.split.fingerprint
        tried: set[bytes] = set()
        attempts = 0
        while True:
            now = self._now()
            request = Request(fp, payload_bytes=max(64, raw_bytes // 8), exclude=frozenset(tried))
            order = choose(request, self._candidates(now), now, self.config.policy)
            target = order[0].candidate
            attempts += 1
            if target.local:
                labels, confs, tail_s, queue_s = await self._local_tail_run(act)
                timings["tail"] = tail_s
                timings["queue"] = queue_s
                timings["total"] = time.perf_counter() - t0
                return InferenceResult(
                    labels[0], confs[0], "local", timings, 0, raw_bytes, attempts=attempts, strategy="local"
                )
            link = self.links.get(target.node_id)
            tried.add(target.node_id)
            if link is None:
                continue
            est = self._estimators.setdefault(target.node_id, LinkEstimator())
            try:
                t_enc = time.perf_counter()
                msg = InferRequest(0, fp, self.split.split_at, act, self.config.encoding)
                resp, sent, encode_s = await link.request(msg, self.config.request_timeout)
                rtt = time.perf_counter() - t_enc
            except (RemoteError, ConnectionError) as exc:
                self.counters.retries += 1
                est.failure(self._now())
                log.info("[%s] tail on %s failed (%s); trying the next", self.config.name, target.name, exc)
                continue
            server = sum(resp.timings.get(k, 0.0) for k in ("decode", "tail", "queue"))
            timings["encode"] = encode_s
            timings["tail"] = resp.timings.get("tail", 0.0)
            timings["decode"] = resp.timings.get("decode", 0.0)
            timings["transfer"] = max(0.0, rtt - encode_s - server)
            timings["rtt"] = rtt
            timings["total"] = time.perf_counter() - t0
            est.success(timings["transfer"], sent, timings["transfer"])
            if not resp.labels:
                continue
            return InferenceResult(
                resp.labels[0],
                resp.confidences[0],
                f"peer:{link.peer.name}",
                timings,
                sent,
                raw_bytes,
                attempts=attempts,
                strategy="split",
            )

    # ------------------------------------------------------------------ frames: the per-request choice

    def situation(self) -> Situation:
        """What :func:`ccied_p2p.strategy.choose` sees now: this device's measured costs, each compatible
        peer's gossiped costs and load, each link's fitted bandwidth and round trip, the cache's hit rate
        (assembled by the pure :func:`ccied_p2p.strategy.live_situation`)."""
        now = self._now()
        peers: list[LivePeer] = []
        if self.config.offload:
            for node_id, link in self.links.items():
                member = self.membership.get(node_id)
                if (
                    member is None
                    or link.closed.is_set()
                    or member.fingerprint != self.split.fingerprint
                    or member.state is not MemberState.ALIVE
                ):
                    continue
                est = self._estimators.setdefault(node_id, LinkEstimator())
                fit = self._links_fit.setdefault(node_id, LinkFit())
                load = member.load
                peers.append(
                    LivePeer(
                        member.name,
                        fit.bandwidth,
                        fit.rtt_s,
                        model_ms=load.model_ms if load is not None else 0.0,
                        head_ms=load.head_ms if load is not None else 0.0,
                        queue_depth=load.queue_depth if load is not None else 0,
                        service_rate=load.service_rate if load is not None else 0.0,
                        inflight=link.in_flight,
                        penalty_s=self.config.request_timeout if est.backoff_until > now else 0.0,
                        node_id=node_id,
                    )
                )
        return live_situation(
            Live(
                self.split.split_at,
                self._head_cost.get(0.0),
                self._tail_row.get(0.0),
                peers,
                input_bytes=round(self._input_bytes.get(0.0)),
                activation_bytes=round(self._act_bytes.get(0.0)),
                lookups=tuple(self._lookups),
                # A cache calibrated to answer nothing (threshold < 0) is no option.
                cache=self.config.cache and self.cache.threshold >= 0,
                lookup_s=self._lookup_cost.get(0.0003),
                queue_s=self._local_queue * self._tail_row.get(0.0),
                encode_s=self._encode_cost.get(0.0) if self._offload_format() == "jpeg" else 0.0,
                slowdown=1.0 / (self.config.cpu_quota or 1.0),
            )
        )

    def recent_hit_rate(self) -> float:
        """Hits over the last 32 lookups, with one hit and one miss assumed before them (Laplace): an
        unmeasured or unlucky cache keeps a chance to be tried."""
        return (sum(self._lookups) + 1) / (len(self._lookups) + 2)

    def reset_cache(self) -> None:
        """Empty this node's cache and forget its measured hit rate (a fresh start, e.g. between runs)."""
        self.cache.clear()
        self._lookups.clear()
        self._since_lookup = 0

    def options(self) -> list[Option]:
        """Every way to answer the next frame, best first (the first is what :meth:`infer_frame` tries)."""
        return choose_strategy(self.situation(), StrategyPolicy(frames_stay=self.config.frames_stay))

    async def infer_frame(self, frame: Any, *, only: Strategy | None = None) -> InferenceResult:
        """Infer one camera frame (uint8 (H, W, 3) or (H, W), any size) the fastest measured way.

        The options of :meth:`options` run in order as the failover; this device's own forward is always
        among them, so only a local failure fails the request. ``only``: try just that strategy first
        (a fixed strategy, for comparisons), then fall back to local.
        """
        return await self._counted(self._frame_steps(frame, only))

    async def _frame_steps(self, frame: Any, only: Strategy | None) -> InferenceResult:
        t0 = time.perf_counter()
        spec = self.input_spec
        pixels = spec.prepare(frame)
        options = self.options()
        chosen = options[0].label
        # A fixed strategy other than the cache leaves the cache alone (no lookup, no insert).
        use_cache = self.config.cache and only in (None, Strategy.CACHE)
        if only is not None:
            picked = [o for o in options if o.strategy is only]
            options = picked + [o for o in options if o.strategy is Strategy.LOCAL]
        elif (
            use_cache
            and self.config.explore_every
            and options[0].strategy is not Strategy.CACHE
            and self._since_lookup >= self.config.explore_every
        ):
            # Measure the hit rate again, once in a while, if a hit would beat the best option at all.
            cached = [o for o in options if o.strategy is Strategy.CACHE]
            if cached and cached[0].device_s < options[0].seconds:
                options = cached[:1] + options
        self._since_lookup += 1
        timings: dict[str, float] = {}
        fp = self.split.fingerprint
        act: np.ndarray[Any, Any] | None = None
        attempts = 0
        jpeg: InferInput | None = None
        for option in options:
            attempts += 1
            done: InferenceResult | None = None
            try:
                if option.strategy is Strategy.OFFLOAD:
                    if jpeg is None:
                        jpeg = await self._input_message(pixels, timings)
                    done = await self._remote(option, jpeg, timings, t0)
                else:
                    if act is None:
                        x = torch.from_numpy(spec.to_tensor(pixels))
                        act, timings["head"] = await self._run_compute(self._head_sync, x)
                    found = None
                    if option.strategy is Strategy.CACHE:
                        found = self._frame_lookup(act, timings)
                        if isinstance(found, Hit) and not found.audit:
                            timings["total"] = time.perf_counter() - t0
                            return InferenceResult(
                                found.label,
                                found.confidence,
                                "cache",
                                timings,
                                0,
                                act.size * 4,
                                found.distance,
                                attempts,
                                "cache",
                                chosen,
                            )
                    if option.peer is None:
                        labels, confs, tail_s, queue_s = await self._local_tail_run(act)
                        timings.update(tail=tail_s, queue=queue_s, total=time.perf_counter() - t0)
                        done = InferenceResult(
                            labels[0], confs[0], "local", timings, 0, act.size * 4, strategy="local"
                        )
                    else:
                        msg = InferRequest(0, fp, self.split.split_at, act, self.config.encoding)
                        done = await self._remote(option, msg, timings, t0)
                    if use_cache and done is not None:
                        with contextlib.suppress(CCIEDError):
                            if isinstance(found, Hit):
                                self.cache.verify(act, found, done.label, done.confidence, fp, self._now())
                            else:
                                self.cache.insert(act, done.label, done.confidence, fp, self._now())
            except (RemoteError, ConnectionError) as exc:
                self.counters.retries += 1
                log.info("[%s] %s failed (%s); trying the next", self.config.name, option.label, exc)
                continue
            if done is not None:
                return dataclasses.replace(done, attempts=attempts, chosen=chosen)
        raise RemoteError("every way to answer failed")  # unreachable: local is always an option

    def _frame_lookup(self, act: np.ndarray[Any, Any], timings: dict[str, float]) -> Any:
        self._since_lookup = 0
        start = time.perf_counter()
        try:
            found = self.cache.lookup(act, self.split.fingerprint, self._now())
        except CCIEDError as exc:
            log.warning("[%s] cache lookup failed: %s", self.config.name, exc)
            return None
        timings["lookup"] = time.perf_counter() - start
        self._lookup_cost.update(timings["lookup"])
        self._lookups.append(isinstance(found, Hit) and not found.audit)
        return found

    async def _input_message(self, pixels: np.ndarray[Any, Any], timings: dict[str, float]) -> InferInput:
        spec, fp = self.input_spec, self.split.fingerprint
        if self._offload_format() == "raw":
            return InferInput(0, fp, spec.key, "raw", spec.shape, tensor=spec.to_tensor(pixels))
        start = time.perf_counter()
        data = await self._run_compute(encode_jpeg, pixels, self.config.jpeg_quality)
        timings["jpeg"] = time.perf_counter() - start
        self._encode_cost.update(timings["jpeg"])
        return InferInput(0, fp, spec.key, "jpeg", spec.shape, data)

    async def _remote(
        self, option: Option, msg: InferRequest | InferInput, timings: dict[str, float], t0: float
    ) -> InferenceResult | None:
        """Send a split or an offload to the option's peer; None if there is no link to it any more."""
        link = self.links.get(option.node_id)
        if link is None or link.closed.is_set():
            return None
        est = self._estimators.setdefault(option.node_id, LinkEstimator())
        fit = self._links_fit.setdefault(option.node_id, LinkFit())
        start = time.perf_counter()
        try:
            resp, sent, encode_s = await link.request(msg, self.config.request_timeout)
        except (RemoteError, ConnectionError):
            est.failure(self._now())
            raise
        rtt = time.perf_counter() - start
        server = sum(resp.timings.get(k, 0.0) for k in ("decode", "head", "tail", "queue", "jpeg"))
        transfer = max(rtt - encode_s - server, 1e-6)
        fit.observe(sent, transfer)
        est.success(transfer, sent, transfer)
        offload = isinstance(msg, InferInput)
        (self._input_bytes if offload else self._act_bytes).update(sent)
        if not resp.labels:
            return None
        timings.update(
            encode=encode_s, remote=server, transfer=transfer, rtt=rtt, total=time.perf_counter() - t0
        )
        raw = 0 if offload or not isinstance(msg, InferRequest) else msg.activation.size * 4
        return InferenceResult(
            resp.labels[0],
            resp.confidences[0],
            f"peer:{link.peer.name}",
            timings,
            sent,
            raw,
            strategy="offload" if offload else "split",
        )

    def _input_tensor(self, msg: InferInput) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        if msg.format == "jpeg":
            x = self.input_spec.to_tensor(decode_jpeg(msg.data, self.input_spec))
        else:
            assert msg.tensor is not None
            x = msg.tensor
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), time.perf_counter() - start

    async def _serve_input(self, link: Link, msg: InferInput, decode_s: float) -> None:
        """Run the whole model on a peer's input (offload): its head here, its tail through the tail queue."""
        try:
            reply: Message
            spec = self.input_spec
            if not (self.config.serve and self.config.accept_inputs):
                reply = ErrorMessage(msg.request_id, "refused", f"{self.config.name} does not run inputs")
            elif msg.fingerprint != self.split.fingerprint:
                reply = ErrorMessage(msg.request_id, "fingerprint", "model fingerprint does not match")
            elif msg.preprocess != spec.key or tuple(msg.shape) != spec.shape:
                reply = ErrorMessage(
                    msg.request_id, "input", f"input {msg.shape} as {msg.preprocess!r}, this node: {spec.key}"
                )
            else:
                try:
                    x, jpeg_s = await self._run_compute(self._input_tensor, msg)
                except CodecError as exc:
                    reply = ErrorMessage(msg.request_id, "input", str(exc))
                else:
                    act, head_s = await self._run_compute(self._head_sync, x)
                    labels, confs, tail_s, queue_s = await self._local_tail_run(act, link)
                    self.counters.served += 1
                    self._notify("on_served", len(labels), tail_s)
                    reply = InferResponse(
                        msg.request_id,
                        tuple(labels),
                        tuple(confs),
                        {
                            "decode": decode_s,
                            "jpeg": jpeg_s,
                            "head": head_s,
                            "tail": tail_s,
                            "queue": queue_s,
                        },
                    )
                    if self.config.cache:
                        with contextlib.suppress(CCIEDError):
                            self.cache.insert(act, labels[0], confs[0], self.split.fingerprint, self._now())
            if isinstance(reply, ErrorMessage):
                self.counters.serve_errors += 1
                self._refuse(link, reply.code, reply.message)
            with contextlib.suppress(LinkClosedError):
                await link.send(reply)
        finally:
            budget = self._budgets.get(link)
            if budget is not None:
                budget.release(1, self._policy.input_cost(len(msg.data)))

    # ------------------------------------------------------------------ serving

    async def _admit(self, link: Link, frame: Frame) -> bool:
        """Refuse, before decoding, what this node would never serve or what the peer has no budget for."""
        budget = self._budgets.get(link)
        if budget is None:
            if link.closed.is_set():
                return False
            budget = self._budgets[link] = PeerBudget()
        refused = budget.admit(frame, self._policy)
        if refused is None:
            return True
        self._refuse(link, refused.code.value, refused.reason)
        if refused.request_id is not None:
            with contextlib.suppress(LinkClosedError):
                # Awaited in the link's read loop: a peer that does not read its refusals stops being read.
                await link.send(ErrorMessage(refused.request_id, refused.code.value, refused.reason))
        return False

    def _refuse(self, link: Link, code: str, reason: str) -> None:
        """Count a refusal and log it, at most 20 lines per 10 s (then one line with the count)."""
        refused = self.counters.refused
        refused[code] = refused.get(code, 0) + 1
        now = time.monotonic()
        if now - self._refusal_window > 10.0:
            if self._refusals_quiet:
                log.warning("[%s] %d more peer requests refused", self.config.name, self._refusals_quiet)
            self._refusal_window, self._refusals_logged, self._refusals_quiet = now, 0, 0
        if self._refusals_logged >= 20:
            self._refusals_quiet += 1
            return
        self._refusals_logged += 1
        log.warning("[%s] refused a request from %s (%s): %s", self.config.name, link.peer.name, code, reason)

    async def _serve(self, link: Link, msg: InferRequest, decode_s: float) -> None:
        try:
            await self._serve_one(link, msg, decode_s)
        finally:
            budget = self._budgets.get(link)
            if budget is not None:
                budget.release(len(msg.activation), msg.activation.nbytes)

    async def _serve_one(self, link: Link, msg: InferRequest, decode_s: float) -> None:
        reply: Message
        if not self.config.serve:
            reply = ErrorMessage(msg.request_id, "refused", f"{self.config.name} does not serve tails")
        elif msg.fingerprint != self.split.fingerprint or msg.split != self.split.split_at:
            reply = ErrorMessage(msg.request_id, "fingerprint", "model fingerprint or split does not match")
        elif tuple(msg.activation.shape[1:]) != self.split.activation_shape or msg.activation.shape[0] < 1:
            reply = ErrorMessage(
                msg.request_id,
                "shape",
                f"activation {msg.activation.shape}, expected (N, *{self.split.activation_shape})",
            )
        else:
            labels, confs, tail_s, queue_s = await self._local_tail_run(msg.activation, link)
            self.counters.served += 1
            self._notify("on_served", len(labels), tail_s)
            reply = InferResponse(
                msg.request_id,
                tuple(labels),
                tuple(confs),
                {"decode": decode_s, "tail": tail_s, "queue": queue_s},
            )
            if self.config.cache and len(labels) == 1:
                with contextlib.suppress(CCIEDError):
                    self.cache.insert(
                        msg.activation, labels[0], confs[0], self.split.fingerprint, self._now()
                    )
        if isinstance(reply, ErrorMessage):
            self.counters.serve_errors += 1
            self._refuse(link, reply.code, reply.message)
        with contextlib.suppress(LinkClosedError):
            await link.send(reply)

    async def _on_message(self, link: Link, msg: Message, decode_s: float = 0.0) -> None:
        if isinstance(msg, InferRequest):
            self._spawn(self._serve(link, msg, decode_s), "serve")
        elif isinstance(msg, InferInput):
            self._spawn(self._serve_input(link, msg, decode_s), "serve-input")
        elif isinstance(msg, _MEMBERSHIP_TYPES):
            if not isinstance(msg, Leave):
                self._note_loads(msg)
            await self._send_all(self.membership.receive(link.node_id, msg, self._now()))
            self._drain_events()
        elif isinstance(msg, CacheSync):
            await self._answer_sync(link, msg)
        elif isinstance(msg, CacheEntries):
            self._merge_entries(link, msg)
        else:
            log.debug("[%s] ignoring %s from %s", self.config.name, type(msg).__name__, link.peer.name)

    def _note_loads(self, msg: Ping | PingReq | Ack | Gossip) -> None:
        now = self._now()
        for upd in msg.updates:
            if upd.load is not None:
                cur = self.membership.get(upd.node_id)
                if cur is None or cur.load is None or upd.load.version > cur.load.version:
                    self._load_at[upd.node_id] = now

    async def _answer_sync(self, link: Link, msg: CacheSync) -> None:
        if not (self.config.cache and self.config.share_cache):
            return
        known = dict(msg.known)
        entries = self.cache.entries_since(known, max_bytes=min(msg.max_bytes, 256 << 10))
        # A prefix keeps the asker's per-origin high-water marks honest; more would not decode there.
        del entries[self.config.limits.max_items :]
        if entries:
            await link.send(CacheEntries(tuple(entries)))

    def _merge_entries(self, link: Link, msg: CacheEntries) -> None:
        if not (self.config.cache and self.config.share_cache):
            return
        if link.peer.fingerprint != self.split.fingerprint:
            return
        self.cache.merge(msg.entries, self.split.fingerprint, self._now())

    # ------------------------------------------------------------------ links

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            max_msg_size=self.config.limits.max_frame_bytes + 64, heartbeat=self.config.heartbeat
        )
        await ws.prepare(request)
        peername = request.transport.get_extra_info("peername") if request.transport else None
        try:
            peer, seal, open_ = await handshake(
                ws,
                Role.RESPONDER,
                self._hello(),
                self.config.secret,
                self.config.limits,
                self.config.handshake_timeout,
            )
        except (AuthenticationError, CodecError, TimeoutError, LinkClosedError) as exc:
            self.counters.auth_failures += 1
            reason = str(exc) or type(exc).__name__
            self._notify("on_auth_failure", str(peername), reason)
            self.refusal_log.warning(
                "auth", "[%s] rejected a connection from %s: %s", self.config.name, peername, reason
            )
            with contextlib.suppress(Exception):
                await ws.send_bytes(encode_message(ErrorMessage(0, "auth", "authentication failed")))
            await ws.close()
            return ws
        link = Link(
            ws,
            peer,
            Role.RESPONDER,
            seal,
            open_,
            self.config.limits,
            self._on_message,
            self.config.max_in_flight,
            refusal_log=self.refusal_log,
            admit=self._admit,
        )
        await self._adopt(link)
        return ws

    def _hello(self) -> Hello:
        return Hello(
            self.node_id, self.config.name, self.split.fingerprint, PROTOCOL_VERSION, new_nonce(), self.port
        )

    async def _adopt(self, link: Link) -> None:
        """Own a new authenticated link; keep one per peer (the one dialled by the lower node id)."""
        pid = link.node_id
        if pid == self.node_id:
            await link.close()
            return
        old = self.links.get(pid)
        if old is not None and not old.closed.is_set():

            def dialer(lk: Link) -> bytes:
                return self.node_id if lk.role is Role.INITIATOR else lk.node_id

            if dialer(old) <= dialer(link):
                await link.close()
                return
            await old.close()
        self.links[pid] = link
        self._links_changed.set()
        self._notify("on_link_opened", link)
        member = MemberUpdate(
            pid,
            link.peer.name,
            link.address[0] if link.address else "",
            link.peer.port,
            link.peer.fingerprint,
            MemberState.ALIVE,
            0,
        )
        if self.membership.get(pid) is None:
            if not member.host:
                member = MemberUpdate(
                    pid,
                    link.peer.name,
                    self._peer_host(link),
                    link.peer.port,
                    link.peer.fingerprint,
                    MemberState.ALIVE,
                    0,
                )
            await self._send_all(self.membership.add_seed(member, self._now()))
            self._drain_events()
        for queued in self._outbox.pop(pid, []):
            with contextlib.suppress(LinkClosedError):
                await link.send(queued)
        if self.config.share_cache and self.config.cache and link.peer.fingerprint == self.split.fingerprint:
            with contextlib.suppress(LinkClosedError):
                await link.send(CacheSync(tuple(self.cache.known().items()), 256 << 10))
        try:
            await link.run()
        finally:
            self._budgets.pop(link, None)
            if self.links.get(pid) is link:
                del self.links[pid]
                self._links_changed.set()
            self._notify("on_link_closed", link)

    def _peer_host(self, link: Link) -> str:
        transport = getattr(link.ws, "_req", None)
        peer = None
        if transport is not None and transport.transport is not None:
            peer = transport.transport.get_extra_info("peername")
        return str(peer[0]) if peer else "127.0.0.1"

    async def _dial(self, host: str, port: int) -> None:
        assert self._session is not None
        url = f"http://{host}:{port}{WS_PATH}"
        ws = await self._session.ws_connect(
            url,
            max_msg_size=self.config.limits.max_frame_bytes + 64,
            heartbeat=self.config.heartbeat,
            autoping=True,
        )
        try:
            peer, seal, open_ = await handshake(
                ws,
                Role.INITIATOR,
                self._hello(),
                self.config.secret,
                self.config.limits,
                self.config.handshake_timeout,
            )
        except BaseException:
            await ws.close()
            raise
        link = Link(
            ws,
            peer,
            Role.INITIATOR,
            seal,
            open_,
            self.config.limits,
            self._on_message,
            self.config.max_in_flight,
            address=(host, port),
            refusal_log=self.refusal_log,
            admit=self._admit,
        )
        self._spawn(self._adopt(link), f"link:{peer.name}")

    async def _dial_address(self, address: str, attempts: int = 20) -> None:
        host, _, port = address.rpartition(":")
        delay = 0.1
        for _ in range(attempts):
            try:
                await self._dial(host or "127.0.0.1", int(port))
                return
            except AuthenticationError as exc:
                log.warning("[%s] seed %s refused us: %s", self.config.name, address, exc)
                return
            except (OSError, aiohttp.ClientError, TimeoutError, RemoteError) as exc:
                log.debug("[%s] seed %s not reachable yet: %s", self.config.name, address, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _ensure_link(self, node_id: bytes) -> None:
        if node_id in self.links or node_id in self._dialing or self._closing:
            return
        member = self.membership.get(node_id)
        # Dead members are dialled too: that is how a healed partition reconnects (membership rate-limits
        # its messages to the dead to one per sync period).
        if member is None or member.state is MemberState.LEFT or not member.port:
            return

        async def dial() -> None:
            try:
                await self._dial(member.host, member.port)
            except (OSError, aiohttp.ClientError, TimeoutError, RemoteError) as exc:
                log.debug("[%s] dial %s failed: %s", self.config.name, member.name, exc)
                self._outbox.pop(node_id, None)
            finally:
                self._dialing.pop(node_id, None)

        self._dialing[node_id] = self._spawn(dial(), f"dial:{member.name}")

    async def _send_all(self, out: list[tuple[bytes, Message]]) -> None:
        for dest, msg in out:
            link = self.links.get(dest)
            if link is None or link.closed.is_set():
                box = self._outbox.setdefault(dest, [])
                if len(box) < 32:
                    box.append(msg)
                self._ensure_link(dest)
                continue
            try:
                await link.send(msg)
            except LinkClosedError:
                pass
            except EncodeError as exc:  # one unencodable message must never stop the ticker
                log.error(
                    "[%s] dropped a %s to %s: %s", self.config.name, type(msg).__name__, link.peer.name, exc
                )

    def _drain_events(self) -> None:
        for event in self.membership.drain_events():
            member = event.member
            level = logging.DEBUG if event.kind is MemberEventKind.UPDATED else logging.INFO
            log.log(
                level,
                "[%s] member %s %s %s",
                self.config.name,
                member.name,
                member.node_id.hex()[:12],
                event.kind.value,
            )
            self._notify("on_member", event)
            if event.kind in (MemberEventKind.JOINED, MemberEventKind.ALIVE):
                self._ensure_link(member.node_id)
            elif event.kind in (MemberEventKind.DEAD, MemberEventKind.LEFT):
                link = self.links.pop(member.node_id, None)
                self._outbox.pop(member.node_id, None)
                if link is not None:
                    self._spawn(link.close(), "close")

    # ------------------------------------------------------------------ timers

    async def _ticker(self) -> None:
        next_load = 0.0
        while True:
            now = self._now()
            if now >= next_load:
                next_load = now + self.config.load_interval
                head_s = self._head_cost.get(0.0)
                self.membership.update_load(
                    LoadReport(
                        0,
                        self._local_queue,
                        self._local_tail.get(0.001) * 1000,
                        self._served_rate.rate(now),
                        # -1: serves nobody (serve=False), so askers leave this member out
                        (head_s + self._tail_row.get(0.0)) * 1000 if self.config.serve else -1.0,
                        head_s * 1000,
                    )
                )
                if self.config.cache:
                    self.membership.update_cache(self.cache.summary(self.split.fingerprint))
                    if self.config.share_cache:
                        await self._sync_caches()
            await self._send_all(self.membership.tick(now))
            self.counters.gossip_rounds += 1
            self._notify("on_gossip_round")
            self._drain_events()
            deadline = min(self.membership.next_deadline(), next_load)
            await asyncio.sleep(min(max(deadline - self._now(), 0.005), 0.25))

    async def _sync_caches(self) -> None:
        """Anti-entropy for cache entries: ask one random compatible peer for what we lack."""
        compatible = [lk for lk in self.links.values() if lk.peer.fingerprint == self.split.fingerprint]
        if not compatible:
            return
        link = compatible[secrets.randbelow(len(compatible))]
        with contextlib.suppress(LinkClosedError):
            await link.send(CacheSync(tuple(self.cache.known().items()), 256 << 10))

    async def _watch_discovery(self) -> None:
        assert self._discovery is not None
        async for event in self._discovery.events():
            peer = getattr(event, "peer", None)
            if peer is None or peer.node_id == self.node_id or peer.node_id in self.links:
                continue
            if type(event).__name__ in ("PeerFound", "PeerUpdated"):
                self._spawn(self._dial_address(f"{peer.host}:{peer.port}", attempts=3), f"mdns:{peer.name}")

    def __repr__(self) -> str:
        return f"Node({self.config.name!r}, {self.address}, peers={len(self.links)})"


def _local_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"
