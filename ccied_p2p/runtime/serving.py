"""What a node does for its peers: admit or refuse their frames, run their tails and inputs, share its cache.

Every peer has a budget (:class:`~ccied_p2p.codec.admission.PeerBudget`) checked before a frame is decoded;
refusals are counted and logged at most 20 lines per 10 s. Served rows go through the node's tail queue
(:class:`~ccied_p2p.runtime.compute.Compute`), round-robin with this node's own requests.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ccied_p2p.cache import SemanticCache
from ccied_p2p.codec.admission import AdmissionPolicy, PeerBudget
from ccied_p2p.codec.messages import (
    CacheEntries,
    CacheSync,
    ErrorMessage,
    InferInput,
    InferRequest,
    InferResponse,
    Message,
)
from ccied_p2p.codec.wire import Frame
from ccied_p2p.errors import CCIEDError, CodecError
from ccied_p2p.inputs import InputSpec, decode_jpeg
from ccied_p2p.runtime.compute import Compute
from ccied_p2p.runtime.config import NodeConfig
from ccied_p2p.runtime.results import NodeStats
from ccied_p2p.runtime.transport import Link, LinkClosedError
from ccied_p2p.split import SplitModel

__all__ = ["Serving"]

log = logging.getLogger(__name__)


class Serving:
    """The serving side of a node: per-peer budgets, refusals, tails and whole inputs run for peers.

    It reads the node's ``config`` as it is at each request (a test may turn the cache off), counts into
    ``counters`` and tells the node's observers through ``notify(hook, *args)``.
    """

    def __init__(
        self,
        config: NodeConfig,
        split: SplitModel,
        spec: InputSpec,
        *,
        cache: SemanticCache,
        compute: Compute,
        counters: NodeStats,
        notify: Callable[..., None],
        now: Callable[[], float],
    ) -> None:
        self.config, self.split, self.spec = config, split, spec
        self.cache, self.compute, self.counters = cache, compute, counters
        self._notify, self._now = notify, now
        cfg = config
        self.policy = AdmissionPolicy(
            activation_shape=tuple(split.activation_shape),
            max_rows=cfg.serving.max_batch,
            max_feature=max(1, math.prod(split.activation_shape)),
            queue_rows=cfg.serving.peer_queue_rows,
            queue_bytes=cfg.serving.peer_queue_bytes,
            input_shape=spec.shape if cfg.serving.accept_inputs and cfg.serving.serve else None,
            max_input_bytes=min(spec.max_jpeg_bytes(), cfg.serving.limits.max_input_bytes),
        )
        self.budgets: dict[Link, PeerBudget] = {}
        self._refusal_window = -math.inf
        self._refusals_logged = 0
        self._refusals_quiet = 0

    def forget(self, link: Link) -> None:
        """The link closed: drop its budget."""
        self.budgets.pop(link, None)

    # ------------------------------------------------------------------ admission

    async def admit(self, link: Link, frame: Frame) -> bool:
        """Refuse, before decoding, what this node would never serve or what the peer has no budget for."""
        budget = self.budgets.get(link)
        if budget is None:
            if link.closed.is_set():
                return False
            budget = self.budgets[link] = PeerBudget()
        refused = budget.admit(frame, self.policy)
        if refused is None:
            return True
        self.refuse(link, refused.code.value, refused.reason)
        if refused.request_id is not None:
            with contextlib.suppress(LinkClosedError):
                # Awaited in the link's read loop: a peer that does not read its refusals stops being read.
                await link.send(ErrorMessage(refused.request_id, refused.code.value, refused.reason))
        return False

    def refuse(self, link: Link, code: str, reason: str) -> None:
        """Count a refusal and log it, at most 20 lines per 10 s (then one line with the count)."""
        name = self.config.name
        refused = self.counters.refused
        refused[code] = refused.get(code, 0) + 1
        now = time.monotonic()
        if now - self._refusal_window > 10.0:
            if self._refusals_quiet:
                log.warning("[%s] %d more peer requests refused", name, self._refusals_quiet)
            self._refusal_window, self._refusals_logged, self._refusals_quiet = now, 0, 0
        if self._refusals_logged >= 20:
            self._refusals_quiet += 1
            return
        self._refusals_logged += 1
        log.warning("[%s] refused a request from %s (%s): %s", name, link.peer.name, code, reason)

    async def _reply(self, link: Link, reply: Message) -> None:
        if isinstance(reply, ErrorMessage):
            self.counters.serve_errors += 1
            self.refuse(link, reply.code, reply.message)
        with contextlib.suppress(LinkClosedError):
            await link.send(reply)

    def _remember(self, act: np.ndarray[Any, Any], label: int, confidence: float) -> None:
        """Cache what this node computed for a peer (one row), as its own answer."""
        if self.config.cache.enabled:
            try:
                self.cache.insert(act, label, confidence, self.split.fingerprint, self._now())
            except CCIEDError as exc:
                log.debug("[%s] a served answer was not cached: %s", self.config.name, exc)

    # ------------------------------------------------------------------ tails (split)

    async def serve(self, link: Link, msg: InferRequest, decode_s: float) -> None:
        """Run the tail on a peer's activation and answer it."""
        try:
            await self._reply(link, await self._tail_reply(link, msg, decode_s))
        finally:
            budget = self.budgets.get(link)
            if budget is not None:
                budget.release(len(msg.activation), msg.activation.nbytes)

    async def _tail_reply(self, link: Link, msg: InferRequest, decode_s: float) -> Message:
        cfg, split = self.config, self.split
        if not cfg.serving.serve:
            return ErrorMessage(msg.request_id, "refused", f"{cfg.name} does not serve tails")
        if msg.fingerprint != split.fingerprint or msg.split != split.split_at:
            return ErrorMessage(msg.request_id, "fingerprint", "model fingerprint or split does not match")
        if tuple(msg.activation.shape[1:]) != split.activation_shape or msg.activation.shape[0] < 1:
            return ErrorMessage(
                msg.request_id,
                "shape",
                f"activation {msg.activation.shape}, expected (N, *{split.activation_shape})",
            )
        labels, confs, tail_s, queue_s = await self.compute.tail(msg.activation, link)
        self.counters.served += 1
        self._notify("on_served", len(labels), tail_s)
        if len(labels) == 1:
            self._remember(msg.activation, labels[0], confs[0])
        return InferResponse(
            msg.request_id,
            tuple(labels),
            tuple(confs),
            {"decode": decode_s, "tail": tail_s, "queue": queue_s},
        )

    # ------------------------------------------------------------------ whole inputs (offload)

    async def serve_input(self, link: Link, msg: InferInput, decode_s: float) -> None:
        """Run the whole model on a peer's input (offload): its head here, its tail through the tail queue."""
        try:
            await self._reply(link, await self._input_reply(link, msg, decode_s))
        finally:
            budget = self.budgets.get(link)
            if budget is not None:
                budget.release(1, self.policy.input_cost(len(msg.data)))

    async def _input_reply(self, link: Link, msg: InferInput, decode_s: float) -> Message:
        cfg, spec = self.config, self.spec
        if not (cfg.serving.serve and cfg.serving.accept_inputs):
            return ErrorMessage(msg.request_id, "refused", f"{cfg.name} does not run inputs")
        if msg.fingerprint != self.split.fingerprint:
            return ErrorMessage(msg.request_id, "fingerprint", "model fingerprint does not match")
        if msg.preprocess != spec.key or tuple(msg.shape) != spec.shape:
            return ErrorMessage(
                msg.request_id, "input", f"input {msg.shape} as {msg.preprocess!r}, this node: {spec.key}"
            )
        try:
            x, jpeg_s = await self.compute.run(self._input_tensor, msg)
        except CodecError as exc:
            return ErrorMessage(msg.request_id, "input", str(exc))
        act, head_s = await self.compute.head(x)
        labels, confs, tail_s, queue_s = await self.compute.tail(act, link)
        self.counters.served += 1
        self._notify("on_served", len(labels), tail_s)
        self._remember(act, labels[0], confs[0])
        return InferResponse(
            msg.request_id,
            tuple(labels),
            tuple(confs),
            {"decode": decode_s, "jpeg": jpeg_s, "head": head_s, "tail": tail_s, "queue": queue_s},
        )

    def _input_tensor(self, msg: InferInput) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        spec = self.spec
        if msg.format == "jpeg":
            x = spec.to_tensor(decode_jpeg(msg.data, spec))
        else:
            assert msg.tensor is not None
            x = msg.tensor
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), time.perf_counter() - start

    # ------------------------------------------------------------------ cache sharing

    def _sharing(self) -> bool:
        cfg = self.config
        return cfg.cache.enabled and cfg.cache.share

    async def answer_sync(self, link: Link, msg: CacheSync) -> None:
        """Send the entries the asker lacks, as far as one frame carries them."""
        if not self._sharing():
            return
        entries = self.cache.entries_since(dict(msg.known), max_bytes=min(msg.max_bytes, 256 << 10))
        # A prefix keeps the asker's per-origin high-water marks honest; more would not decode there.
        del entries[self.config.serving.limits.max_items :]
        if entries:
            await link.send(CacheEntries(tuple(entries)))

    def merge_entries(self, link: Link, msg: CacheEntries) -> None:
        if not self._sharing() or link.peer.fingerprint != self.split.fingerprint:
            return
        self.cache.merge(msg.entries, self.split.fingerprint, self._now())
