"""This device's torch work: the split's head and tail on one worker thread, tails batched as they queue.

The event loop keeps answering probes while a tail computes, and :attr:`Compute.queued_rows` is the real local
queue depth the scheduler and the gossiped load read. Jobs come from this node (owner None) and from peers
(owner: their link), served round-robin across owners (:class:`TailQueue`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ccied_p2p.scheduler import Ewma, RateEstimator
from ccied_p2p.split import SplitModel

__all__ = ["Compute", "TailAnswer", "TailJob", "TailQueue"]

# labels, confidences, compute seconds, queue seconds
TailAnswer = tuple[list[int], list[float], float, float]


@dataclass
class TailJob:
    act: np.ndarray[Any, Any]
    future: asyncio.Future[TailAnswer]
    queued: float


class TailQueue:
    """Tail jobs, FIFO per owner (a peer's link, or None for this node), served round-robin across owners.

    A peer with its whole budget queued (``peer_queue_rows``) then delays another's request by about one batch,
    not by everything it queued.
    """

    __slots__ = ("_by_owner",)

    def __init__(self) -> None:
        self._by_owner: dict[object, deque[TailJob]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_owner)

    def __iter__(self) -> Iterator[TailJob]:
        for jobs in self._by_owner.values():
            yield from jobs

    def append(self, owner: object, job: TailJob) -> None:
        self._by_owner.setdefault(owner, deque()).append(job)

    def peek(self) -> TailJob:
        return next(iter(self._by_owner.values()))[0]

    def popleft(self) -> TailJob:
        owner, jobs = next(iter(self._by_owner.items()))
        job = jobs.popleft()
        del self._by_owner[owner]
        if jobs:
            self._by_owner[owner] = jobs  # to the back of the rotation
        return job


class Compute:
    """The head and tail of ``split`` on one worker thread, and the measurements they leave (seconds).

    :meth:`worker` must run (a task of the node) for :meth:`tail` to answer; the owner cancels what is still
    queued (:meth:`cancel_jobs`) and shuts :attr:`executor` down.
    """

    def __init__(
        self,
        split: SplitModel,
        *,
        max_batch: int,
        inline_tail_ms: float,
        now: Callable[[], float],
        thread_name: str,
    ) -> None:
        self.split = split
        self.max_batch = max(1, max_batch)
        self.inline_tail_ms = inline_tail_ms
        self._now = now
        # No thread starts before the first job.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.head_cost = Ewma(alpha=0.2)  # one input's head
        self.tail_row = Ewma(alpha=0.2)  # pure compute per tail row
        self.tail_batch = Ewma(alpha=0.2)  # pure compute per batch
        self.service = Ewma(alpha=0.2)  # per row as the loop sees it: compute plus the hop to the thread
        self.served_rate = RateEstimator()
        self.queued_rows = 0
        self._jobs = TailQueue()
        self._wake = asyncio.Event()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def head_sync(self, x: torch.Tensor) -> tuple[np.ndarray[Any, Any], float]:
        start = time.perf_counter()
        act = self.split.head(x)
        head_s = time.perf_counter() - start
        if len(x) == 1:
            self.head_cost.update(head_s)
        return act.numpy(), head_s

    def tail_sync(self, act: np.ndarray[Any, Any]) -> tuple[list[int], list[float], float]:
        start = time.perf_counter()
        logits = self.split.tail(torch.from_numpy(np.ascontiguousarray(act, dtype=np.float32)))
        probs = torch.softmax(logits.float(), dim=1)
        conf, labels = probs.max(dim=1)
        return labels.tolist(), conf.tolist(), time.perf_counter() - start

    async def head(self, x: torch.Tensor) -> tuple[np.ndarray[Any, Any], float]:
        """The activation of ``x`` and the seconds its head took."""
        result: tuple[np.ndarray[Any, Any], float] = await self.run(self.head_sync, x)
        return result

    async def tail(self, act: np.ndarray[Any, Any], owner: object = None) -> TailAnswer:
        """Queue rows for the worker (``owner``: the asking peer's link, None for this node); returns labels,
        confidences, compute and queue seconds."""
        job = TailJob(act, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._jobs.append(owner, job)
        self.queued_rows += len(act)
        self._wake.set()
        return await job.future

    def cancel_jobs(self) -> None:
        """Cancel every queued job (the node is closing; :attr:`executor` is shut down after its tasks end)."""
        for job in self._jobs:
            job.future.cancel()

    async def worker(self) -> None:
        """Dynamic batching: whatever queued while the last batch computed runs next, as one batch.

        A lone request runs at once (no timer); under load, batches form by themselves up to ``max_batch``
        rows, which is what makes a CPU tail serve more requests per second. Jobs are taken round-robin
        across askers (:class:`TailQueue`).
        """
        jobs = self._jobs
        while True:
            await self._wake.wait()
            self._wake.clear()
            while jobs:
                batch = [jobs.popleft()]
                rows = len(batch[0].act)
                while jobs and rows + len(jobs.peek().act) <= self.max_batch:
                    batch.append(jobs.popleft())
                    rows += len(batch[-1].act)
                batch = [j for j in batch if not j.future.done()]
                if not batch:
                    self.queued_rows -= rows
                    continue
                acts = batch[0].act if len(batch) == 1 else np.concatenate([j.act for j in batch])
                start = time.perf_counter()
                try:
                    if not jobs and len(acts) == 1 and self.tail_batch.get(1.0) * 1000 < self.inline_tail_ms:
                        # A lone short tail costs less than the hop to the worker thread and back; under
                        # load the thread wins, since the loop keeps moving bytes while it computes.
                        labels, confs, tail_s = self.tail_sync(acts)
                    else:
                        labels, confs, tail_s = await self.run(self.tail_sync, acts)
                    self.tail_batch.update(tail_s)
                    self.tail_row.update(tail_s / len(acts))
                except Exception as exc:
                    for j in batch:
                        if not j.future.done():
                            j.future.set_exception(exc)
                    continue
                finally:
                    self.queued_rows -= rows
                self.service.update((time.perf_counter() - start) / max(1, len(acts)))
                self.served_rate.observe(self._now(), len(acts))
                i = 0
                for j in batch:
                    n = len(j.act)
                    if not j.future.done():
                        j.future.set_result((labels[i : i + n], confs[i : i + n], tail_s, start - j.queued))
                    i += n
