"""The Node: one aiohttp server, peer links, mDNS, SWIM gossip, the cache and the scheduler, in one event loop.

The node is a thin adapter: bytes and events go into the pure layers (codec, cache, membership, scheduler
policy) and what they return is sent. Its parts, each owned by the node:

- :class:`~ccied_p2p.runtime.compute.Compute`     head and tail on one worker thread; tails batched as they queue
- :class:`~ccied_p2p.runtime.inference.Inference` this node's requests: cache, own tail, peers; what it measures
- :class:`~ccied_p2p.runtime.serving.Serving`     peers' requests: admission, refusals, tails and inputs run
- :class:`~ccied_p2p.runtime.mesh.Mesh`           the links: accept, dial, one per peer, membership's outbox

What exists only while the node runs (server, membership, discovery, ...) is one :class:`_Running`, built by
:meth:`Node.start` and torn down in reverse by :meth:`Node.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from aiohttp import web

from ccied_p2p.cache import SemanticCache, reducer_for
from ccied_p2p.codec.messages import (
    Ack,
    CacheEntries,
    CacheSync,
    Gossip,
    InferInput,
    InferRequest,
    Leave,
    LoadReport,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
)
from ccied_p2p.errors import CCIEDError, ConfigError
from ccied_p2p.gossip.membership import Membership
from ccied_p2p.inputs import InputSpec
from ccied_p2p.logs import RateLimitedLog, bind_node
from ccied_p2p.runtime.compute import Compute
from ccied_p2p.runtime.config import NodeConfig
from ccied_p2p.runtime.guard import (
    ConnectionGuard,
    GuardedSite,
    GuardLimits,
    descriptor_budget,
    hold_accept_storm_filter,
    release_accept_storm_filter,
)
from ccied_p2p.runtime.inference import Inference
from ccied_p2p.runtime.mesh import Mesh
from ccied_p2p.runtime.results import InferenceResult, NodeObserver, NodeStats
from ccied_p2p.runtime.serving import Serving
from ccied_p2p.runtime.transport import PROTOCOL_VERSION, WS_PATH, Link, LinkClosedError
from ccied_p2p.split import SplitModel
from ccied_p2p.strategy import Option, Situation, Strategy

if TYPE_CHECKING:
    from ccied_p2p.runtime.discovery import Discovery

__all__ = ["InferenceResult", "Node", "NodeConfig", "NodeObserver", "NodeStats"]

log = logging.getLogger(__name__)

_MEMBERSHIP_TYPES = (Ping, PingReq, Ack, Gossip, Leave)


@dataclass
class _Running:
    """What a node has from :meth:`Node.start` on: its server, its membership, its mDNS registration."""

    app: web.Application
    guard: ConnectionGuard
    membership: Membership
    discovery: Discovery | None = None


class Node:
    """A CCIED peer: asks (``infer``) and serves (tails for peers), in one event loop.

    ``async with Node(split, config) as node: await node.infer(x)``.
    """

    def __init__(self, split: SplitModel, config: NodeConfig, cache: SemanticCache | None = None) -> None:
        """``config.cache`` configures the cache; ``cache`` hands in the store itself (e.g. one loaded from
        disk), whose answer rule ``config.cache`` then overrides field by field (its None fields leave it)."""
        config.validate()
        self.split = split
        self.config = config
        self.node_id = b""  # drawn at every start
        self.port = 0
        self.host = ""
        self.advertised_port = 0
        self.counters = NodeStats()
        self.observers: list[NodeObserver] = []
        self.input_spec = config.strategy.input_spec or InputSpec.for_shape(split.example_input.shape)
        if self.input_spec.shape != tuple(split.example_input.shape[1:]):
            raise ConfigError(
                f"input_spec {self.input_spec.shape} does not match the model's input "
                f"{tuple(split.example_input.shape[1:])}"
            )
        self.cache = (
            cache
            if cache is not None
            else SemanticCache(
                capacity=config.cache.capacity,
                reducer=reducer_for(split.activation_shape, split.channel_mask),
            )
        )
        config.cache.tune(self.cache)
        # What hostile traffic makes this node log (refused connections, handshakes, requests, frames).
        self.refusal_log = RateLimitedLog(log)
        self._compute = Compute(
            split,
            max_batch=config.serving.max_batch,
            inline_tail_ms=config.serving.inline_tail_ms,
            now=self._now,
            thread_name=f"ccied-{config.name}",
        )
        self._inference = Inference(self)
        self._serving = Serving(
            config,
            split,
            self.input_spec,
            cache=self.cache,
            compute=self._compute,
            counters=self.counters,
            notify=self._notify,
            now=self._now,
        )
        self._mesh = Mesh(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stack = contextlib.AsyncExitStack()
        self._running: _Running | None = None
        self._closing = False

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
        if self._running is not None or self._closing:
            raise RuntimeError(f"node {self.config.name!r} was started already")
        # Every task spawned from here inherits the node's name for its log records.
        with bind_node(self.config.name):
            await self._start()

    async def _start(self) -> None:
        cfg, stack = self.config, self._stack
        self.node_id = secrets.token_bytes(16)
        self.cache.node_id = self.node_id
        stack.callback(self._compute.executor.shutdown, wait=True)  # the last thing close() does
        await self._compute.run(torch.set_num_threads, 1)
        await self._compute.run(self._inference.profile_sync, cfg.strategy.profile_runs)

        budget = descriptor_budget()
        max_connections = (
            min(cfg.connections.max_connections, budget)
            if budget is not None
            else cfg.connections.max_connections
        )
        if max_connections < cfg.connections.max_connections:
            log.info(
                "[%s] at most %d connections (half the open-file limit), not %d",
                cfg.name,
                max_connections,
                cfg.connections.max_connections,
            )
        guard = ConnectionGuard(
            GuardLimits(
                cfg.connections.header_timeout,
                cfg.connections.idle_timeout,
                max_connections,
                cfg.connections.max_connections_per_address,
            ),
            refused=self.counters.connections_refused,
            logger=self.refusal_log,
            name=cfg.name,
        )
        stack.callback(guard.close)
        hold_accept_storm_filter()
        stack.callback(release_accept_storm_filter)
        app = web.Application(middlewares=[guard.middleware()])
        app.router.add_get(WS_PATH, self._mesh.handle_ws)
        if cfg.observe:
            from ccied_p2p.runtime.observe import install

            install(app, self)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        stack.push_async_callback(runner.cleanup)
        await runner.setup()
        site = GuardedSite(runner, cfg.network.host, cfg.network.port, guard)
        await site.start()
        # From here to _Running nothing awaits: a peer's handshake cannot finish before membership exists.
        self.port = int(site.sockets[0].getsockname()[1])
        self.host = cfg.network.advertise_host or (
            cfg.network.host if cfg.network.host not in ("0.0.0.0", "") else _local_ip()
        )
        # Outbound connections leave from the bound address, so a relay or firewall can tell nodes apart.
        session = self._mesh.open(cfg.network.host if cfg.network.host not in ("0.0.0.0", "") else None)
        stack.push_async_callback(session.close)
        stack.push_async_callback(self._stop_tasks)
        self.advertised_port = cfg.network.advertise_port or self.port
        membership = Membership(
            self.node_id,
            name=cfg.name,
            host=self.host,
            port=self.advertised_port,
            fingerprint=self.split.fingerprint,
            config=cfg.membership,
            rng=int.from_bytes(self.node_id[:8], "little"),
        )
        running = self._running = _Running(app, guard, membership)
        log.info(
            "[%s] serving on %s:%d (fingerprint %s)",
            cfg.name,
            self.host,
            self.port,
            self.split.fingerprint[:12],
        )
        self._spawn(self._ticker(), "gossip")
        self._spawn(self._compute.worker(), "tail")
        for seed in cfg.network.seeds:
            self._spawn(self._mesh.dial_address(seed), f"seed:{seed}")
        if cfg.network.mdns:
            running.discovery = await self._start_discovery()
            self._spawn(self._mesh.watch_discovery(running.discovery), "mdns")

    async def _start_discovery(self) -> Discovery:
        from ccied_p2p.runtime.discovery import Discovery, DiscoveryConfig, ServiceAnnouncement

        cfg = self.config
        discovery = Discovery(
            DiscoveryConfig(
                interfaces="all"
                if "all" in cfg.network.mdns_interfaces
                else list(cfg.network.mdns_interfaces)
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
        await discovery.__aenter__()

        async def unregister() -> None:
            try:
                await discovery.__aexit__(None, None, None)
            except Exception:  # the node closes regardless; say why mDNS did not unregister cleanly
                log.warning("[%s] mDNS did not close cleanly", cfg.name, exc_info=True)

        self._stack.push_async_callback(unregister)
        return discovery

    async def _stop_tasks(self) -> None:
        """Close every link and end every task (before the server and the session close)."""
        await self._mesh.close_links()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        self._compute.cancel_jobs()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._mesh.close_links()  # links authenticated while closing, whose adopt task never ran
        self._mesh.links.clear()

    async def abort(self) -> None:
        """Stop as a crash would (for fault tests): no Leave, sockets dropped, every task still awaited."""
        if self._closing:
            return
        self._closing = True
        self._mesh.abort_links()
        await self._stack.aclose()

    async def close(self) -> None:
        """Tell peers we leave, unregister mDNS, close links, stop every task; idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._running is not None:
            try:
                await self._mesh.send_all(self._running.membership.leave(self._now()))
            except (CCIEDError, ConnectionError) as exc:
                log.debug("[%s] could not say goodbye: %s", self.config.name, exc)
            except Exception:
                log.warning("[%s] could not say goodbye", self.config.name, exc_info=True)
        await self._stack.aclose()

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
                self._mesh.changed.clear()
                await self._mesh.changed.wait()

    # ------------------------------------------------------------------ views

    def _now(self) -> float:
        return time.monotonic()

    def _started(self) -> _Running:
        if self._running is None:
            raise RuntimeError(
                f"node {self.config.name!r} not started (use `async with Node(...)` or start())"
            )
        return self._running

    @property
    def started(self) -> bool:
        """True from :meth:`start` on (also after :meth:`close`: its membership stays readable)."""
        return self._running is not None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`close` (or :meth:`abort`)."""
        return self._running is not None and not self._closing

    @property
    def membership(self) -> Membership:
        """This node's SWIM membership (RuntimeError before :meth:`start`)."""
        return self._started().membership

    @property
    def app(self) -> web.Application:
        """The aiohttp application serving peers and the observability routes (RuntimeError before start)."""
        return self._started().app

    @property
    def guard(self) -> ConnectionGuard | None:
        """The inbound connection guard; None before :meth:`start`."""
        return None if self._running is None else self._running.guard

    @property
    def links(self) -> dict[bytes, Link]:
        """The authenticated link to each peer, by node id."""
        return self._mesh.links

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def peers(self) -> dict[str, MemberUpdate]:
        """Every other member this node knows, by name, with its state, load and cache summary."""
        if self._running is None:
            return {}
        return {m.name: m for m in self._running.membership.members() if m.node_id != self.node_id}

    def stats(self) -> dict[str, Any]:
        """Counters: requests by source, failures, bytes, what was served, cache and peers."""
        s = self.counters
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
            "cache": dataclasses.asdict(self.cache.stats()),
            "peers": {name: m.state.value for name, m in self.peers.items()},
            "links": len(self.links),
        }

    # ------------------------------------------------------------------ inference

    def _input(self, x: Any) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=torch.float32)
        expected = tuple(self.split.example_input.shape[1:])
        if tuple(t.shape) != expected:
            batch = t.dim() == len(expected) + 1 and tuple(t.shape[1:]) == expected
            hint = " (a batch of inputs: infer_batch)" if batch else ""
            raise ConfigError(f"expected an input shaped {expected}, got {tuple(t.shape)}{hint}")
        return t

    async def infer(self, x: torch.Tensor | np.ndarray[Any, Any]) -> InferenceResult:
        """Infer one input shaped like one row of the model's example input, e.g. (C, H, W)."""
        t = self._input(x)
        return await self._counted(self._inference.infer(t.unsqueeze(0)))

    async def infer_batch(
        self, xs: torch.Tensor | np.ndarray[Any, Any] | Sequence[Any], *, concurrency: int = 8
    ) -> list[InferenceResult]:
        """Infer each of ``xs`` ((N, C, H, W), or a sequence of inputs), at most ``concurrency`` at once;
        one result per input, in order. A failed input fails the batch (the others still finish)."""
        rows = [self._input(x) for x in xs]
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(row: torch.Tensor) -> InferenceResult:
            async with sem:
                return await self._counted(self._inference.infer(row.unsqueeze(0)))

        return list(await asyncio.gather(*(one(row) for row in rows)))

    async def infer_frame(self, frame: Any, *, only: Strategy | None = None) -> InferenceResult:
        """Infer one camera frame (uint8 (H, W, 3) or (H, W), any size) the fastest measured way.

        The options of :meth:`options` run in order as the failover; this device's own forward is always
        among them, so only a local failure fails the request. ``only``: try just that strategy first
        (a fixed strategy, for comparisons), then fall back to local.
        """
        return await self._counted(self._inference.infer_frame(frame, only))

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

    def situation(self) -> Situation:
        """What :func:`ccied_p2p.strategy.choose` sees now: this device's measured costs, each compatible
        peer's gossiped costs and load, each link's fitted bandwidth and round trip, the cache's hit rate
        (assembled by the pure :func:`ccied_p2p.strategy.live_situation`)."""
        return self._inference.situation()

    def options(self) -> list[Option]:
        """Every way to answer the next frame, best first (the first is what :meth:`infer_frame` tries)."""
        return self._inference.options()

    def recent_hit_rate(self) -> float:
        """Hits over the last 32 lookups, with one hit and one miss assumed before them (Laplace): an
        unmeasured or unlucky cache keeps a chance to be tried."""
        return self._inference.recent_hit_rate()

    def reset_cache(self) -> None:
        """Empty this node's cache and forget its measured hit rate (a fresh start, e.g. between runs)."""
        self.cache.clear()
        self._inference.reset()

    # ------------------------------------------------------------------ messages and timers

    async def _on_message(self, link: Link, msg: Message, decode_s: float = 0.0) -> None:
        if isinstance(msg, InferRequest):
            self._spawn(self._serving.serve(link, msg, decode_s), "serve")
        elif isinstance(msg, InferInput):
            self._spawn(self._serving.serve_input(link, msg, decode_s), "serve-input")
        elif isinstance(msg, _MEMBERSHIP_TYPES):
            if not isinstance(msg, Leave):
                self._note_loads(msg)
            await self._mesh.send_all(self.membership.receive(link.node_id, msg, self._now()))
            self._mesh.drain_events()
        elif isinstance(msg, CacheSync):
            await self._serving.answer_sync(link, msg)
        elif isinstance(msg, CacheEntries):
            self._serving.merge_entries(link, msg)
        else:
            log.debug("[%s] ignoring %s from %s", self.config.name, type(msg).__name__, link.peer.name)

    def _note_loads(self, msg: Ping | PingReq | Ack | Gossip) -> None:
        now = self._now()
        for upd in msg.updates:
            if upd.load is not None:
                cur = self.membership.get(upd.node_id)
                if cur is None or cur.load is None or upd.load.version > cur.load.version:
                    self._inference.load_at[upd.node_id] = now

    async def _ticker(self) -> None:
        membership, compute = self.membership, self._compute
        next_load = 0.0
        while True:
            now = self._now()
            if now >= next_load:
                next_load = now + self.config.load_interval
                head_s = compute.head_cost.get(0.0)
                membership.update_load(
                    LoadReport(
                        0,
                        compute.queued_rows,
                        compute.service.get(0.001) * 1000,
                        compute.served_rate.rate(now),
                        # -1: serves nobody (serve=False), so askers leave this member out
                        (head_s + compute.tail_row.get(0.0)) * 1000 if self.config.serving.serve else -1.0,
                        head_s * 1000,
                    )
                )
                if self.config.cache.enabled:
                    membership.update_cache(self.cache.summary(self.split.fingerprint))
                    if self.config.cache.share:
                        await self._sync_caches()
            await self._mesh.send_all(membership.tick(now))
            self.counters.gossip_rounds += 1
            self._notify("on_gossip_round")
            self._mesh.drain_events()
            deadline = min(membership.next_deadline(), next_load)
            await asyncio.sleep(min(max(deadline - self._now(), 0.005), 0.25))

    async def _sync_caches(self) -> None:
        """Anti-entropy for cache entries: ask one random compatible peer for what we lack."""
        compatible = [lk for lk in self.links.values() if lk.peer.fingerprint == self.split.fingerprint]
        if not compatible:
            return
        link = compatible[secrets.randbelow(len(compatible))]
        with contextlib.suppress(LinkClosedError):
            await link.send(CacheSync(tuple(self.cache.known().items()), 256 << 10))

    def __repr__(self) -> str:
        return f"Node({self.config.name!r}, {self.address}, peers={len(self.links)})"


def _local_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"
