"""The status document and history of a node: :class:`Observer`, a ``NodeObserver`` that counts as it goes."""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

from ccied_p2p.codec.messages import MemberUpdate
from ccied_p2p.gossip.membership import MemberEvent, MemberEventKind
from ccied_p2p.runtime.results import InferenceResult, NodeObserver

if TYPE_CHECKING:
    from ccied_p2p.runtime.node import Node
    from ccied_p2p.runtime.transport import Link
from ccied_p2p.runtime.observe.metrics import LATENCY_BUCKETS, STAGES, STATE_ORDER, Collector

__all__ = ["HISTORY_SAMPLES", "LATENCY_WINDOW", "SAMPLE_INTERVAL", "Observer"]

log = logging.getLogger(__name__)

SAMPLE_INTERVAL: Final = 1.0  # seconds between history samples and between pushed snapshots
HISTORY_SAMPLES: Final = 300  # five minutes
LATENCY_WINDOW: Final = 4096  # latencies kept per source for the /status percentiles


def _num(x: float | None, digits: int = 6) -> float | None:
    """A JSON-safe float (NaN and infinities become null)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def _percentiles_ms(values: Iterable[float]) -> dict[str, Any]:
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "window": 0}
    p50, p90, p99 = np.percentile(arr, (50, 90, 99)) * 1000
    return {
        "p50": _num(p50, 4),
        "p90": _num(p90, 4),
        "p99": _num(p99, 4),
        "mean": _num(float(arr.mean()) * 1000, 4),
        "window": int(arr.size),
    }


@dataclass(slots=True)
class _Traffic:
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0

    def add(self, other: Any) -> None:
        self.bytes_sent += other.bytes_sent
        self.bytes_received += other.bytes_received
        self.frames_sent += other.frames_sent
        self.frames_received += other.frames_received


class Observer(NodeObserver):
    """The node's metrics and history: a :class:`~ccied_p2p.runtime.node.NodeObserver` plus scrape-time reads.

    Every callback is O(1)-ish and never raises; the registry is this node's own (several nodes share a
    process in tests), never prometheus-client's global one.
    """

    def __init__(self, node: Node, registry: CollectorRegistry | None = None) -> None:
        self.node = node
        self.registry = registry if registry is not None else CollectorRegistry()
        self.started = time.monotonic()
        self.started_wall = time.time()
        r = self.registry
        self.requests = Counter(
            "ccied_requests",
            "Inference requests this node answered, by where the answer came from and how it went.",
            ["source", "peer", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "ccied_request_duration_seconds",
            "Request time by stage (head, lookup, encode, transfer, queue, tail, decode, total) and source.",
            ["stage", "source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.activation_sent = Counter(
            "ccied_activation_bytes_sent",
            "Encoded activation bytes sent for requests answered by peers.",
            ["peer"],
            registry=r,
        )
        self.activation_raw = Counter(
            "ccied_activation_bytes_raw",
            "The fp32 activation bytes of each answered request (what sending it raw would cost).",
            ["source"],
            registry=r,
        )
        self.served = Counter("ccied_served", "Tail inferences computed for peers (rows).", registry=r)
        self.served_tail = Histogram(
            "ccied_served_tail_seconds",
            "Tail compute time of peer requests.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "ccied_auth_failures", "Peer connections refused at the handshake.", registry=r
        )
        self.gossip_rounds = Counter("ccied_gossip_rounds", "Gossip timer rounds run.", registry=r)
        self.member_events = Counter(
            "ccied_member_events", "Membership changes observed, by kind.", ["kind"], registry=r
        )
        self.http_refused = Counter(
            "ccied_http_refused",
            "Observation requests refused (no, wrong or unusable token).",
            ["reason"],
            registry=r,
        )
        r.register(Collector(self))
        self._latencies: dict[str, deque[float]] = {}
        self._interval: dict[str, list[float]] = {}
        self._raw_offloaded = 0
        self._last_heard: dict[bytes, float] = {}
        self._link_seen: dict[int, tuple[str, bytes, Link]] = {}
        self._rx_frames: dict[int, int] = {}
        self._retired: dict[str, _Traffic] = {}
        self._closed: weakref.WeakSet[Link] = weakref.WeakSet()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SAMPLES)
        self._seq = 0
        self._next_sample = self.started + SAMPLE_INTERVAL
        self._last_counts = (0, 0, 0)
        self._status_cache: tuple[float, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ NodeObserver

    def on_result(self, node: Node, result: InferenceResult) -> None:
        source, kind, peer = result.source, result.kind, result.peer or ""
        self.requests.labels(kind, peer, "ok" if result.attempts <= 1 else "failover").inc()
        for stage, seconds in result.timings.items():
            if stage in STAGES and math.isfinite(seconds) and seconds >= 0:
                self.duration.labels(stage, kind).observe(seconds)
        if result.bytes_sent:
            self.activation_sent.labels(peer).inc(result.bytes_sent)
        if result.bytes_raw:
            self.activation_raw.labels(kind).inc(result.bytes_raw)
            if kind == "peer":
                self._raw_offloaded += result.bytes_raw
        latency = result.latency
        if math.isfinite(latency):
            window = self._latencies.get(source)
            if window is None:
                window = self._latencies[source] = deque(maxlen=LATENCY_WINDOW)
            window.append(latency)
            self._interval.setdefault(source, []).append(latency)

    def on_failure(self, node: Node, error: BaseException) -> None:
        self.requests.labels("none", "", "error").inc()

    def on_served(self, node: Node, count: int, tail_s: float) -> None:
        self.served.inc(count)
        if math.isfinite(tail_s) and tail_s >= 0:
            self.served_tail.observe(tail_s)

    def on_auth_failure(self, node: Node, peer: str, reason: str) -> None:
        self.auth_failures.inc()

    def on_member(self, node: Node, event: MemberEvent) -> None:
        self.member_events.labels(event.kind.value).inc()
        if event.kind in (MemberEventKind.JOINED, MemberEventKind.ALIVE, MemberEventKind.UPDATED):
            self._last_heard[event.member.node_id] = time.monotonic()

    def on_gossip_round(self, node: Node) -> None:
        self.gossip_rounds.inc()
        now = time.monotonic()
        self.poll_links(now)
        if now >= self._next_sample:
            self.sample(now)

    # ------------------------------------------------------------------ views

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def members(self) -> list[MemberUpdate]:
        node = self.node
        if not node.started:
            return []
        return sorted(
            (m for m in node.membership.members() if m.node_id != node.node_id),
            key=lambda m: (m.name, m.node_id),
        )

    def me(self) -> MemberUpdate | None:
        return self.node.membership.me if self.node.started else None

    def recent_hit_rate(self) -> float | None:
        me = self.me()
        if me is not None and me.cache is not None:
            return me.cache.hit_rate
        return None

    def last_heard(self, node_id: bytes) -> float | None:
        return self._last_heard.get(node_id)

    def on_link_opened(self, node: Node, link: Link) -> None:
        """Optional hook (see :meth:`poll_links`): start counting a link at once."""
        self._track(link, time.monotonic())

    def on_link_closed(self, node: Node, link: Link) -> None:
        """Optional hook: fold a link's final byte counts the moment it closes."""
        self._retire(id(link), link)

    def _track(self, link: Link, now: float) -> None:
        key = id(link)
        if link in self._closed:
            return
        if key not in self._link_seen:
            self._link_seen[key] = (link.peer.name, link.node_id, link)
        frames = link.stats.frames_received
        if frames != self._rx_frames.get(key):
            self._rx_frames[key] = frames
            self._last_heard[link.node_id] = now

    def _retire(self, key: int, link: Link) -> None:
        if link in self._closed:
            return
        self._closed.add(link)
        self._retired.setdefault(link.peer.name, _Traffic()).add(link.stats)
        self._link_seen.pop(key, None)
        self._rx_frames.pop(key, None)

    def poll_links(self, now: float) -> None:
        """Fold closed links into per-peer totals (so byte counters never go back) and note who spoke.

        Runs every gossip round and scrape; a link that opens and closes between two rounds (under
        0.25 s) is only counted if the node calls :meth:`on_link_opened` / :meth:`on_link_closed`.
        """
        current = {id(link): link for link in self.node.links.values()}
        for key, (_name, _nid, link) in list(self._link_seen.items()):
            if key not in current:
                self._retire(key, link)
        for link in current.values():
            self._track(link, now)

    def traffic(self) -> dict[str, _Traffic]:
        out: dict[str, _Traffic] = {}
        for name, t in self._retired.items():
            out.setdefault(name, _Traffic()).add(t)
        for name, _nid, link in self._link_seen.values():
            out.setdefault(name, _Traffic()).add(link.stats)
        return out

    def sample(self, now: float) -> dict[str, Any]:
        """Close one history interval: deltas of requests and hits, medians of latency, every node's load."""
        node = self.node
        c = node.counters
        hits = c.by_source.get("cache", 0)
        d_req, d_hits, d_failed = (
            c.requests - self._last_counts[0],
            hits - self._last_counts[1],
            c.failed - self._last_counts[2],
        )
        self._last_counts = (c.requests, hits, c.failed)
        interval, self._interval = self._interval, {}
        everything = [v for vs in interval.values() for v in vs]
        nodes: dict[str, dict[str, Any]] = {}
        me = self.me()
        nodes[node.config.name] = {
            "state": "alive",
            "self": True,
            "queue": None if me is None or me.load is None else me.load.queue_depth,
            "tail_ms": None if me is None or me.load is None else _num(me.load.tail_ms, 4),
            "rate": None if me is None or me.load is None else _num(me.load.service_rate, 3),
            "hit_rate": _num(self.recent_hit_rate(), 4),
            "latency_ms": _num(float(np.median(everything)) * 1000, 4) if everything else None,
        }
        for m in self.members():
            if m.name in nodes and m.state.value in ("dead", "left"):
                continue  # a restarted peer's old record; the live one is listed under the same name
            lat = interval.get(f"peer:{m.name}", [])
            nodes[m.name] = {
                "state": m.state.value,
                "self": False,
                "queue": None if m.load is None else m.load.queue_depth,
                "tail_ms": None if m.load is None else _num(m.load.tail_ms, 4),
                "rate": None if m.load is None else _num(m.load.service_rate, 3),
                "hit_rate": None if m.cache is None else _num(m.cache.hit_rate, 4),
                "latency_ms": _num(float(np.median(lat)) * 1000, 4) if lat else None,
            }
        self._seq += 1
        record = {
            "seq": self._seq,
            "t": round(time.time(), 3),
            "requests": d_req,
            "hits": d_hits,
            "failed": d_failed,
            "hit_rate": _num(d_hits / d_req, 4) if d_req else None,
            "latency_ms": nodes[node.config.name]["latency_ms"],
            "bytes_sent": c.bytes_sent,
            "bytes_raw": c.bytes_raw,
            "nodes": nodes,
        }
        self.history.append(record)
        self._next_sample = max(self._next_sample + SAMPLE_INTERVAL, now + SAMPLE_INTERVAL / 2)
        return record

    def status(self) -> dict[str, Any]:
        """The ``/status`` document: the node, every peer, cache, requests by source, bytes, gossip."""
        node = self.node
        now = time.monotonic()
        self.poll_links(now)
        c = node.counters
        links = dict(node.links)
        peers = []
        for m in self.members():
            link = links.get(m.node_id)
            heard = self._last_heard.get(m.node_id)
            source = f"peer:{m.name}"
            peers.append(
                {
                    "name": m.name,
                    "id": m.node_id.hex(),
                    "state": m.state.value,
                    "address": f"{m.host}:{m.port}",
                    "fingerprint": m.fingerprint,
                    "compatible": m.fingerprint == node.split.fingerprint,
                    "incarnation": m.incarnation,
                    "load": None
                    if m.load is None
                    else {
                        "queue_depth": m.load.queue_depth,
                        "tail_ms": _num(m.load.tail_ms, 4),
                        "service_rate": _num(m.load.service_rate, 3),
                    },
                    "cache": None
                    if m.cache is None
                    else {"entries": m.cache.entries, "hit_rate": _num(m.cache.hit_rate, 4)},
                    "last_heard_s": None if heard is None else _num(max(0.0, now - heard), 3),
                    "link": None
                    if link is None
                    else {
                        "dialled_by": "us" if link.role.value == "initiator" else "them",
                        "in_flight": link.in_flight,
                        "bytes_sent": link.stats.bytes_sent,
                        "bytes_received": link.stats.bytes_received,
                    },
                    "requests": c.by_source.get(source, 0),
                    "latency_ms": _percentiles_ms(self._latencies.get(source, ())),
                }
            )
        by_source = {
            src: {"count": n, "latency_ms": _percentiles_ms(self._latencies.get(src, ()))}
            for src, n in sorted(c.by_source.items())
        }
        by_kind: dict[str, int] = {"cache": 0, "local": 0, "peer": 0, **c.by_kind}
        states = dict.fromkeys(STATE_ORDER, 0)
        for m in self.members():
            states[m.state.value] += 1
        me = self.me()
        return {
            "node": {
                "id": node.node_id.hex(),
                "name": node.config.name,
                "address": node.address,
                "fingerprint": node.split.fingerprint,
                "split": node.split.split_at,
                "activation_shape": list(node.split.activation_shape),
                "encoding": node.config.strategy.encoding,
                "uptime_s": _num(self.uptime(), 3),
                "started": round(self.started_wall, 3),
                "secure": node.config.secret is not None,
                "cpu_quota": node.config.cpu_quota,
                "load": None
                if me is None or me.load is None
                else {
                    "queue_depth": me.load.queue_depth,
                    "tail_ms": _num(me.load.tail_ms, 4),
                    "service_rate": _num(me.load.service_rate, 3),
                },
            },
            "peers": peers,
            "cache": self._cache_status(),
            "requests": {
                "total": c.requests,
                "failed": c.failed,
                "retries": c.retries,
                "by_source": by_source,
                "by_kind": by_kind,
                "latency_ms": _percentiles_ms(v for d in self._latencies.values() for v in d),
                "served": c.served,
                "serve_errors": c.serve_errors,
                "refused": dict(c.refused),
            },
            "bytes": {
                "activation_sent": c.bytes_sent,
                "activation_raw": c.bytes_raw,
                "activation_raw_offloaded": self._raw_offloaded,
                "saved": c.bytes_raw - c.bytes_sent,
                "compression": _num(self._raw_offloaded / c.bytes_sent, 3) if c.bytes_sent else None,
                "link_sent": sum(t.bytes_sent for t in self.traffic().values()),
                "link_received": sum(t.bytes_received for t in self.traffic().values()),
            },
            "gossip": {"rounds": c.gossip_rounds, "states": states, "links": len(links)},
            "auth_failures": c.auth_failures,
            "connections": None if node.guard is None else node.guard.stats(),
            "time": round(time.time(), 3),
        }

    def _cache_status(self) -> dict[str, Any] | None:
        node = self.node
        cache = node.cache
        st = cache.stats()
        looked = st.hits + st.misses
        return {
            "enabled": node.config.cache.enabled,
            "shared": node.config.cache.share,
            "entries": st.entries,
            "capacity": cache.capacity,
            "hits": st.hits,
            "misses": st.misses,
            "hit_rate": _num(st.hits / looked, 4) if looked else None,
            "recent_hit_rate": _num(self.recent_hit_rate(), 4),
            "inserts": st.inserts,
            "evictions": st.evictions,
            "merged": st.merged,
            "rejected": st.rejected,
            "false_hit_budget": {
                "threshold": _num(cache.threshold, 6),
                "k": cache.k,
                "votes": cache.votes,
                "min_confidence": _num(cache.min_confidence, 4),
            },
        }

    def cached_status(self, max_age: float = SAMPLE_INTERVAL / 2) -> dict[str, Any]:
        """The status, rebuilt at most every ``max_age`` seconds (shared by every live dashboard)."""
        now = time.monotonic()
        if self._status_cache is None or now - self._status_cache[0] > max_age:
            self._status_cache = (now, self.status())
        return self._status_cache[1]

    def metrics(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics if ``accept`` asks for it)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
