"""How a node answers its own requests: the cache, its own tail, or a peer's, and what it measures doing so.

Two paths share one cache lookup (:meth:`Inference.lookup`, the cache key computed once per request):

- :meth:`Inference.infer` (a model input): head here, then the cache, then the scheduler's failover order
  (:func:`ccied_p2p.scheduler.choose`: faster peers first, this node's tail last), tried in that order;
- :meth:`Inference.infer_frame` (a camera frame): the per-request strategy
  (:func:`ccied_p2p.strategy.choose`: cache, local, split or offload, from measured costs), tried in order.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ccied_p2p.cache import Hit, LookupResult
from ccied_p2p.codec.auth import SEAL_OVERHEAD
from ccied_p2p.codec.messages import InferInput, InferRequest, MemberState
from ccied_p2p.codec.wire import encode_message
from ccied_p2p.errors import CCIEDError, RemoteError
from ccied_p2p.inputs import encode_jpeg
from ccied_p2p.runtime.results import InferenceResult
from ccied_p2p.scheduler import Candidate, Ewma, LinkEstimator, Request, candidate_from_member, choose
from ccied_p2p.strategy import (
    Exploration,
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

if TYPE_CHECKING:
    from ccied_p2p.runtime.node import Node

__all__ = ["Inference", "Looked"]

log = logging.getLogger(__name__)

Feature = np.ndarray[Any, Any]


@dataclasses.dataclass
class Looked:
    """One request's cache lookup: its key (``feature``, None when the cache is off or failed) and answer."""

    feature: Feature | None = None
    found: LookupResult | None = None

    @property
    def hit(self) -> Hit | None:
        """The hit to serve as is (not one the cache wants audited)."""
        return self.found if isinstance(self.found, Hit) and not self.found.audit else None


class Inference:
    """The asking side of ``node``: its requests and the costs the per-request choice reads (seconds, bytes).

    From the node it reads its config, split, input spec, cache, links and membership, and runs on its
    :class:`~ccied_p2p.runtime.compute.Compute`; it counts retries in ``node.counters`` and owns the rest of
    what it measures (per-link estimators and fits, lookups, wire sizes).
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.act_bytes = Ewma(alpha=0.2)  # what a split puts on the wire
        self.input_bytes = Ewma(alpha=0.2)  # what an offload puts on the wire, measured
        self.input_guess = 0.0  # ... until it is measured
        self.encode_cost = Ewma(alpha=0.2)  # JPEG encoding
        self.lookup_cost = Ewma(alpha=0.2)
        self.lookups: deque[bool] = deque(maxlen=32)  # the last lookups: hit or not
        # When to look the cache up and size the input though the policy chose otherwise.
        self.exploration = Exploration(node.config.strategy.explore_every)
        self.links_fit: dict[bytes, LinkFit] = {}
        self.estimators: dict[bytes, LinkEstimator] = {}
        self.load_at: dict[bytes, float] = {}  # when each member's load report last changed

    def _estimator(self, node_id: bytes) -> LinkEstimator:
        return self.estimators.setdefault(node_id, LinkEstimator())

    # ------------------------------------------------------------------ measurements

    def profile_sync(self, runs: int) -> None:
        """A few forwards of the example input (on the worker thread): this device's head and tail costs
        before any request, and the wire size of its activation and of its input."""
        node = self.node
        split, compute = node.split, node._compute
        act = split.head(split.example_input).numpy()
        for _ in range(runs):
            act, _ = compute.head_sync(split.example_input)
            _, _, tail_s = compute.tail_sync(act)
            compute.tail_row.update(tail_s)
        msg = InferRequest(0, split.fingerprint, split.split_at, act, node.config.strategy.encoding)
        self.act_bytes.update(len(encode_message(msg)) + SEAL_OVERHEAD)
        spec = node.input_spec
        # A q90 JPEG of a camera frame: 6-16 KB at 224x224x3; a raw input: its float32 bytes. The first
        # measured size replaces it (size_input: the first request measures it).
        guess = spec.pixels // 10 if self.offload_format() == "jpeg" else spec.pixels * 4
        self.input_guess = guess + 160.0

    def offload_format(self) -> str:
        node = self.node
        fmt = node.config.strategy.offload_format
        if fmt == "auto":
            return "jpeg" if node.input_spec.size[0] * node.input_spec.size[1] >= 64 * 64 else "raw"
        return fmt

    def recent_hit_rate(self) -> float:
        return (sum(self.lookups) + 1) / (len(self.lookups) + 2)

    def reset(self) -> None:
        self.lookups.clear()
        self.exploration.reset()

    # ------------------------------------------------------------------ the cache

    def lookup(self, act: np.ndarray[Any, Any], timings: dict[str, float], explored: bool = False) -> Looked:
        """Reduce ``act`` to its cache key and look it up; the key is kept for :meth:`remember`.
        ``explored``: looked up only to measure the hit rate (:class:`~ccied_p2p.strategy.Exploration`)."""
        node = self.node
        start = time.perf_counter()
        hit = False  # a lookup that fails measures a miss
        try:
            feature = self._key(act, logging.WARNING).feature
            if feature is None:
                return Looked()
            found = node.cache.lookup(feature, node.split.fingerprint, node._now())
            hit = isinstance(found, Hit) and not found.audit
        except CCIEDError as exc:
            log.warning("[%s] cache lookup failed: %s", node.config.name, exc)
            return Looked()
        finally:
            self.exploration.looked(hit, explored)
        timings["lookup"] = time.perf_counter() - start
        self.lookup_cost.update(timings["lookup"])
        self.lookups.append(hit)
        return Looked(feature, found)

    def remember(self, looked: Looked, result: InferenceResult) -> None:
        """Tell the cache what the model said: verify an audited hit, insert a miss (under the same key)."""
        node = self.node
        if looked.feature is None:
            return
        fp, now = node.split.fingerprint, node._now()
        try:
            if isinstance(looked.found, Hit):
                node.cache.verify(looked.feature, looked.found, result.label, result.confidence, fp, now)
            else:
                node.cache.insert(looked.feature, result.label, result.confidence, fp, now)
        except CCIEDError as exc:
            log.debug("[%s] an answer was not cached: %s", node.config.name, exc)

    @staticmethod
    def _cached(hit: Hit, timings: dict[str, float], t0: float, raw: int, **extra: Any) -> InferenceResult:
        timings["total"] = time.perf_counter() - t0
        return InferenceResult(
            hit.label, hit.confidence, "cache", timings, 0, raw, hit.distance, strategy="cache", **extra
        )

    # ------------------------------------------------------------------ a model input

    async def infer(self, x: torch.Tensor) -> InferenceResult:
        """One input (1, *shape): head, cache, then the scheduler's failover order."""
        node = self.node
        t0 = time.perf_counter()
        act, head_s = await node._compute.head(x)
        timings: dict[str, float] = {"head": head_s}
        raw_bytes = int(act.size) * 4
        looked = self.lookup(act, timings) if node.config.cache.enabled else Looked()
        if looked.hit is not None:
            return self._cached(looked.hit, timings, t0, raw_bytes)
        # A miss, or a hit the cache wants audited: run the tail and tell the cache what it said.
        result = await self._run_tail(act, timings, t0, raw_bytes)
        self.remember(looked, result)
        return result

    def _candidates(self) -> list[Candidate]:
        node = self.node
        cfg, compute = node.config, node._compute
        local = Candidate(
            node_id=node.node_id,
            fingerprint=node.split.fingerprint,
            tail_s=compute.service.get(0.001)
            if cfg.strategy.local_tail_ms is None
            else cfg.strategy.local_tail_ms / 1000,
            local=True,
            name=cfg.name,
            queue_depth=compute.queued_rows,
            service_rate=0.0,
        )
        out = [local]
        if not cfg.strategy.offload:
            return out
        for node_id, link in node.links.items():
            member = node.membership.get(node_id)
            if member is None or link.closed.is_set():
                continue
            out.append(
                candidate_from_member(
                    member,
                    self._estimator(node_id),
                    inflight=link.in_flight,
                    load_at=self.load_at.get(node_id, math.inf),
                )
            )
        return out

    async def _run_tail(
        self, act: np.ndarray[Any, Any], timings: dict[str, float], t0: float, raw_bytes: int
    ) -> InferenceResult:
        """Try the scheduler's order as returned: faster peers first, this node's own tail last."""
        node = self.node
        cfg, fp = node.config, node.split.fingerprint
        request = Request(fp, payload_bytes=max(64, raw_bytes // 8))
        order = choose(request, self._candidates(), node._now(), cfg.strategy.policy)
        for attempts, estimate in enumerate(order, start=1):
            target = estimate.candidate
            if target.local:
                labels, confs, tail_s, queue_s = await node._compute.tail(act)
                timings.update(tail=tail_s, queue=queue_s, total=time.perf_counter() - t0)
                return InferenceResult(
                    labels[0], confs[0], "local", timings, 0, raw_bytes, attempts=attempts, strategy="local"
                )
            link = node.links.get(target.node_id)
            if link is None:
                continue
            est = self._estimator(target.node_id)
            try:
                t_enc = time.perf_counter()
                msg = InferRequest(0, fp, node.split.split_at, act, cfg.strategy.encoding)
                resp, sent, encode_s = await link.request(msg, cfg.network.request_timeout)
                rtt = time.perf_counter() - t_enc
            except (RemoteError, ConnectionError) as exc:
                node.counters.retries += 1
                est.failure(node._now())
                log.info("[%s] tail on %s failed (%s); trying the next", cfg.name, target.name, exc)
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
                "peer",
                timings,
                sent,
                raw_bytes,
                attempts=attempts,
                strategy="split",
                peer=link.peer.name,
            )
        raise RemoteError("every way to answer failed")  # unreachable: the order ends with the local tail

    # ------------------------------------------------------------------ frames: the per-request choice

    def situation(self) -> Situation:
        """What :func:`ccied_p2p.strategy.choose` sees now (see :meth:`Node.situation`)."""
        node = self.node
        cfg, compute = node.config, node._compute
        now = node._now()
        peers: list[LivePeer] = []
        if cfg.strategy.offload:
            for node_id, link in node.links.items():
                member = node.membership.get(node_id)
                if (
                    member is None
                    or link.closed.is_set()
                    or member.fingerprint != node.split.fingerprint
                    or member.state is not MemberState.ALIVE
                ):
                    continue
                est = self._estimator(node_id)
                fit = self.links_fit.setdefault(node_id, LinkFit())
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
                        penalty_s=cfg.network.request_timeout if est.backoff_until > now else 0.0,
                        node_id=node_id,
                    )
                )
        return live_situation(
            Live(
                node.split.split_at,
                compute.head_cost.get(0.0),
                compute.tail_row.get(0.0),
                peers,
                input_bytes=round(self.input_bytes.get(self.input_guess)),
                activation_bytes=round(self.act_bytes.get(0.0)),
                lookups=tuple(self.lookups),
                # A cache calibrated to answer nothing (threshold < 0) is no option.
                cache=cfg.cache.enabled and node.cache.threshold >= 0,
                lookup_s=self.lookup_cost.get(0.0003),
                queue_s=compute.queued_rows * compute.tail_row.get(0.0),
                encode_s=self.encode_cost.get(0.0) if self.offload_format() == "jpeg" else 0.0,
                slowdown=1.0 / (cfg.cpu_quota or 1.0),
            )
        )

    def options(self) -> list[Option]:
        return choose_strategy(
            self.situation(), StrategyPolicy(frames_stay=self.node.config.strategy.frames_stay)
        )

    async def infer_frame(self, frame: Any, only: Strategy | None) -> InferenceResult:
        node = self.node
        cfg = node.config
        t0 = time.perf_counter()
        spec = node.input_spec
        pixels = spec.prepare(frame)
        options = self.options()
        chosen = options[0].label
        # A fixed strategy other than the cache leaves the cache alone (no lookup, no insert).
        use_cache = cfg.cache.enabled and only in (None, Strategy.CACHE)
        explored = sizing = False
        if only is not None:  # forced: neither measures nor counts toward measuring what was not chosen
            picked = [o for o in options if o.strategy is only]
            options = picked + [o for o in options if o.strategy is Strategy.LOCAL]
        else:
            self.exploration.every = cfg.strategy.explore_every  # the config is read per request
            options, explored, sizing = self.exploration.plan(options, use_cache)
        timings: dict[str, float] = {}
        act: np.ndarray[Any, Any] | None = None
        looked = Looked()
        jpeg: InferInput | None = None
        if sizing:
            # Encoded only to measure what offload would send (kept, should offload be tried after all).
            jpeg = await self._input_message(pixels, timings)
            self.input_bytes.update(len(encode_message(jpeg)) + SEAL_OVERHEAD)
        for attempts, option in enumerate(options, start=1):
            done: InferenceResult | None = None
            try:
                if option.strategy is Strategy.OFFLOAD:
                    if jpeg is None:
                        jpeg = await self._input_message(pixels, timings)
                    done = await self._remote(option, jpeg, timings, t0)
                else:
                    if act is None:
                        act, timings["head"] = await node._compute.head(
                            torch.from_numpy(spec.to_tensor(pixels))
                        )
                    if option.strategy is Strategy.CACHE:
                        looked = self.lookup(act, timings, explored=explored and attempts == 1)
                        if looked.hit is not None:
                            return self._cached(
                                looked.hit, timings, t0, act.size * 4, attempts=attempts, chosen=chosen
                            )
                    if option.peer is None:
                        labels, confs, tail_s, queue_s = await node._compute.tail(act)
                        timings.update(tail=tail_s, queue=queue_s, total=time.perf_counter() - t0)
                        done = InferenceResult(
                            labels[0], confs[0], "local", timings, 0, act.size * 4, strategy="local"
                        )
                    else:
                        msg = InferRequest(
                            0, node.split.fingerprint, node.split.split_at, act, cfg.strategy.encoding
                        )
                        done = await self._remote(option, msg, timings, t0)
                    if use_cache and done is not None:
                        if looked.feature is None:
                            # Not looked up (another option came first): the key is computed only now.
                            looked = self._key(act)
                        self.remember(looked, done)
            except (RemoteError, ConnectionError) as exc:
                node.counters.retries += 1
                log.info("[%s] %s failed (%s); trying the next", cfg.name, option.label, exc)
                continue
            if done is not None:
                return dataclasses.replace(done, attempts=attempts, chosen=chosen)
        raise RemoteError("every way to answer failed")  # unreachable: local is always an option

    def _key(self, act: np.ndarray[Any, Any], level: int = logging.DEBUG) -> Looked:
        """The cache key of ``act`` without a lookup (:meth:`lookup`'s, and an answer's to insert that was
        not looked up); none if the reducer fails or gives no finite key, logged at ``level``."""
        name = self.node.config.name
        try:
            features = self.node.cache.features(act)
        except CCIEDError as exc:
            log.log(level, "[%s] no cache key: %s", name, exc)
            return Looked()
        if features.shape[0] != 1 or not np.all(np.isfinite(features[0])):
            log.log(level, "[%s] no finite cache key for one input", name)
            return Looked()
        return Looked(features[0])

    async def _input_message(self, pixels: np.ndarray[Any, Any], timings: dict[str, float]) -> InferInput:
        node = self.node
        spec, fp = node.input_spec, node.split.fingerprint
        self.exploration.sized()
        if self.offload_format() == "raw":
            return InferInput(0, fp, spec.key, "raw", spec.shape, tensor=spec.to_tensor(pixels))
        start = time.perf_counter()
        data = await node._compute.run(encode_jpeg, pixels, node.config.strategy.jpeg_quality)
        timings["jpeg"] = time.perf_counter() - start
        self.encode_cost.update(timings["jpeg"])
        return InferInput(0, fp, spec.key, "jpeg", spec.shape, data)

    async def _remote(
        self, option: Option, msg: InferRequest | InferInput, timings: dict[str, float], t0: float
    ) -> InferenceResult | None:
        """Send a split or an offload to the option's peer; None if there is no link to it any more."""
        node = self.node
        link = node.links.get(option.node_id)
        if link is None or link.closed.is_set():
            return None
        est = self._estimator(option.node_id)
        fit = self.links_fit.setdefault(option.node_id, LinkFit())
        start = time.perf_counter()
        try:
            resp, sent, encode_s = await link.request(msg, node.config.network.request_timeout)
        except (RemoteError, ConnectionError):
            est.failure(node._now())
            raise
        rtt = time.perf_counter() - start
        server = sum(resp.timings.get(k, 0.0) for k in ("decode", "head", "tail", "queue", "jpeg"))
        transfer = max(rtt - encode_s - server, 1e-6)
        fit.observe(sent, transfer)
        est.success(transfer, sent, transfer)
        offload = isinstance(msg, InferInput)
        (self.input_bytes if offload else self.act_bytes).update(sent)
        if not resp.labels:
            return None
        timings.update(
            encode=encode_s, remote=server, transfer=transfer, rtt=rtt, total=time.perf_counter() - t0
        )
        raw = 0 if offload or not isinstance(msg, InferRequest) else msg.activation.size * 4
        return InferenceResult(
            resp.labels[0],
            resp.confidences[0],
            "peer",
            timings,
            sent,
            raw,
            strategy="offload" if offload else "split",
            peer=link.peer.name,
        )
