"""Read-only status, Prometheus metrics and the live dashboard of a node, on its own aiohttp server.

Routes (all ``GET``; nothing here changes state)::

    /status          JSON: the node, its view of every peer, cache figures, requests by source, bytes
    /metrics         Prometheus text (or OpenMetrics when asked), from a per-node CollectorRegistry
    /                the dashboard page (assets under /static/, no CDN, works offline)
    /events          server-sent events: a "hello" (status + history), then a "snapshot" about once a second
    /static/<file>   dashboard.html, dashboard.js, dashboard.css from the package

Access: a request from a loopback address is served (if its ``Host`` header names this machine, so a web
page cannot reach it through DNS rebinding). Any other client must present the read token, as
``Authorization: Bearer <token>`` or ``?token=<token>``::

    read token = lowercase hex of HMAC-SHA256(key=UTF-8 cluster secret, msg=b"ccied-p2p/1 read-token")[:32]
    e.g.  printf %s 'ccied-p2p/1 read-token' | openssl dgst -sha256 -hmac "$CCIED_SECRET"  (first 32 hex)

The token only reads: it is not the secret and cannot join the cluster. A node without a secret (insecure
mode) serves loopback only. A missing token gets 401, a wrong one (from anywhere) 403; each refusal is logged
(rate-limited) and counted in ``ccied_http_refused_total``. Connections the node's guard refused or closed
(caps, header and idle timeouts) are counted in ``ccied_connections_refused_total`` by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import html
import importlib.resources
import ipaddress
import json
import logging
import math
import re
import socket
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from ccied_p2p.codec.messages import MemberState, MemberUpdate
from ccied_p2p.gossip.membership import MemberEvent, MemberEventKind
from ccied_p2p.logs import RateLimitedLog
from ccied_p2p.runtime.guard import REASONS

if TYPE_CHECKING:
    from ccied_p2p.runtime.node import InferenceResult, Node
    from ccied_p2p.runtime.transport import Link

__all__ = [
    "OBSERVER_KEY",
    "READ_TOKEN_LABEL",
    "ROUTES",
    "STAGES",
    "Access",
    "Observer",
    "check_access",
    "install",
    "read_token",
]

log = logging.getLogger(__name__)

READ_TOKEN_LABEL: Final = b"ccied-p2p/1 read-token"
ROUTES: Final = ("/", "/status", "/metrics", "/events", "/static/{name}")
STAGES: Final = ("head", "lookup", "encode", "transfer", "queue", "tail", "decode", "total")
LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
SAMPLE_INTERVAL: Final = 1.0  # seconds between history samples and between pushed snapshots
HISTORY_SAMPLES: Final = 300  # five minutes
LATENCY_WINDOW: Final = 4096  # latencies kept per source for the /status percentiles
MAX_SUBSCRIBERS: Final = 16  # concurrent /events streams per node
_STATE_ORDER: Final = tuple(s.value for s in MemberState)
_STATIC_NAME: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
_COMMON_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_PAGE_HEADERS: Final = {
    **_COMMON_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}


def read_token(secret: str) -> str:
    """The read token of a cluster secret: 32 lowercase hex digits (see the module docstring)."""
    return hmac.new(secret.encode("utf-8"), READ_TOKEN_LABEL, hashlib.sha256).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------- access


@dataclass(frozen=True, slots=True)
class Access:
    """Whether a request may read, the HTTP status if not, and why (for the log and the body)."""

    allowed: bool
    status: int
    reason: str


def _client_ip(remote: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not remote:
        return None
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".")


def _local_host(name: str, allowed_hosts: Collection[str]) -> bool:
    if name == "localhost" or name.endswith(".localhost") or name in allowed_hosts:
        return True
    ip = _client_ip(name)
    return ip is not None and ip.is_loopback


def check_access(
    remote: str | None,
    host_header: str | None,
    presented: str | None,
    expected: str | None,
    allowed_hosts: Collection[str] = (),
) -> Access:
    """Decide one request: client address, its Host header, the token it presented, the node's token.

    ``expected`` is None on a node without a secret; ``allowed_hosts`` are extra names of this node that a
    loopback client may use in ``Host`` (its bound and advertised addresses).
    """
    if presented:
        if expected is not None and hmac.compare_digest(presented.encode(), expected.encode()):
            return Access(True, 200, "read token")
        if expected is None:
            return Access(False, 403, "this node has no cluster secret and accepts no read token")
        return Access(False, 403, "wrong read token")
    ip = _client_ip(remote)
    if ip is None:
        return Access(False, 403, "unknown client address")
    if ip.is_loopback:
        if host_header and not _local_host(_host_name(host_header), allowed_hosts):
            return Access(False, 403, f"Host {host_header[:64]!r} is not this machine (DNS rebinding?)")
        return Access(True, 200, "loopback")
    if expected is None:
        return Access(False, 403, "insecure node (no cluster secret): loopback clients only")
    return Access(False, 401, "read token required for non-loopback clients")


def _presented_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = request.query.get("token", "")
    return token or None


# -------------------------------------------------------------------------------------------- helpers


def _num(x: float | None, digits: int = 6) -> float | None:
    """A JSON-safe float (NaN and infinities become null)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def _kind(source: str) -> str:
    return "peer" if source.startswith("peer:") else source


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


class _Collector:
    """Gauges and counters that already live in the node, read at scrape time."""

    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    def collect(self) -> Iterable[Metric]:
        obs = self._observer
        node = obs.node
        now = time.monotonic()
        obs.poll_links(now)
        info = InfoMetricFamily("ccied_node", "This node: name, id, model fingerprint and split point.")
        info.add_metric(
            [],
            {
                "name": node.config.name,
                "node_id": node.node_id.hex(),
                "fingerprint": node.split.fingerprint,
                "split": node.split.split_at,
                "address": node.address,
            },
        )
        yield info
        yield GaugeMetricFamily("ccied_node_uptime_seconds", "Seconds since the node started.", obs.uptime())
        c = node.counters
        yield CounterMetricFamily("ccied_request_retries", "Peer attempts that failed over.", c.retries)
        yield CounterMetricFamily(
            "ccied_serve_errors",
            "Peer tail requests refused (fingerprint, shape, serve=False).",
            c.serve_errors,
        )
        refused = CounterMetricFamily(
            "ccied_connections_refused",
            "Inbound connections refused at accept (per_address, total cap) or closed by the guard "
            "(evicted to make room, header_timeout, idle_timeout).",
            labels=["reason"],
        )
        for reason in REASONS:
            refused.add_metric([reason], c.connections_refused.get(reason, 0))
        yield refused
        if node.guard is not None:
            yield GaugeMetricFamily(
                "ccied_connections_open", "Inbound connections open (HTTP and peers).", node.guard.open
            )
        peer_refused = CounterMetricFamily(
            "ccied_peer_refused",
            "Peer frames refused before or instead of serving them (shape, rows, busy, feature, ...).",
            labels=["reason"],
        )
        for reason, count in sorted(c.refused.items()):
            peer_refused.add_metric([reason], count)
        yield peer_refused
        yield from self._cache(obs)
        yield from self._peers(obs, now)
        yield from self._links(obs)

    @staticmethod
    def _cache(obs: Observer) -> Iterable[Metric]:
        node = obs.node
        if not hasattr(node, "cache"):
            return
        cache = node.cache
        st = cache.stats()
        for name, value, doc in (
            ("hits", st.hits, "Cache lookups answered from the cache."),
            ("misses", st.misses, "Cache lookups that found no answer."),
            ("inserts", st.inserts, "Entries inserted by this node."),
            ("evictions", st.evictions, "Entries evicted for capacity."),
            ("merged", st.merged, "Entries accepted from peers."),
            ("rejected", st.rejected, "Peer entries rejected (invalid or foreign model)."),
        ):
            yield CounterMetricFamily(f"ccied_cache_{name}", doc, value)
        yield GaugeMetricFamily("ccied_cache_entries", "Entries held.", st.entries)
        yield GaugeMetricFamily("ccied_cache_capacity", "Entries the cache may hold.", cache.capacity)
        recent = obs.recent_hit_rate()
        if recent is not None:
            yield GaugeMetricFamily(
                "ccied_cache_recent_hit_ratio", "Hit ratio over the cache's recent lookups.", recent
            )
        yield GaugeMetricFamily(
            "ccied_cache_threshold", "Cosine distance within which a neighbour votes.", cache.threshold
        )
        yield GaugeMetricFamily("ccied_cache_k", "Neighbours consulted per lookup.", cache.k)
        yield GaugeMetricFamily("ccied_cache_votes", "Agreeing neighbours needed for a hit.", cache.votes)

    @staticmethod
    def _peers(obs: Observer, now: float) -> Iterable[Metric]:
        members = obs.members()
        by_state = GaugeMetricFamily(
            "ccied_peers", "Other members by state, in this node's view.", labels=["state"]
        )
        counts = dict.fromkeys(_STATE_ORDER, 0)
        for m in members:
            counts[m.state.value] += 1
        for state_name, n in counts.items():
            by_state.add_metric([state_name], n)
        yield by_state
        state = GaugeMetricFamily(
            "ccied_peer_state", "1 for each peer's current state.", labels=["peer", "state"]
        )
        queue = GaugeMetricFamily("ccied_peer_queue_depth", "Peer's reported tail queue.", labels=["peer"])
        tail = GaugeMetricFamily("ccied_peer_tail_seconds", "Peer's reported tail time.", labels=["peer"])
        rate = GaugeMetricFamily(
            "ccied_peer_service_rate", "Peer's reported tails per second.", labels=["peer"]
        )
        entries = GaugeMetricFamily(
            "ccied_peer_cache_entries", "Peer's reported cache entries.", labels=["peer"]
        )
        hit = GaugeMetricFamily(
            "ccied_peer_cache_hit_ratio", "Peer's reported recent hit ratio.", labels=["peer"]
        )
        heard = GaugeMetricFamily(
            "ccied_peer_last_heard_seconds", "Seconds since the last sign of life.", labels=["peer"]
        )
        for m in members:
            name = m.name
            state.add_metric([name, m.state.value], 1)
            if m.load is not None:
                queue.add_metric([name], m.load.queue_depth)
                tail.add_metric([name], m.load.tail_ms / 1000)
                rate.add_metric([name], m.load.service_rate)
            if m.cache is not None:
                entries.add_metric([name], m.cache.entries)
                hit.add_metric([name], m.cache.hit_rate)
            last = obs.last_heard(m.node_id)
            if last is not None:
                heard.add_metric([name], max(0.0, now - last))
        yield from (state, queue, tail, rate, entries, hit, heard)
        me = obs.me()
        if me is not None and me.load is not None:
            yield GaugeMetricFamily("ccied_local_queue_depth", "Tails waiting here.", me.load.queue_depth)
            yield GaugeMetricFamily(
                "ccied_local_tail_seconds", "This node's smoothed tail time.", me.load.tail_ms / 1000
            )

    @staticmethod
    def _links(obs: Observer) -> Iterable[Metric]:
        fams = {
            key: CounterMetricFamily(f"ccied_link_{key}", doc, labels=["peer"])
            for key, doc in (
                ("bytes_sent", "Bytes sent on peer links (all messages, sealed)."),
                ("bytes_received", "Bytes received on peer links (all messages, sealed)."),
                ("frames_sent", "Frames sent on peer links."),
                ("frames_received", "Frames received on peer links."),
            )
        }
        for peer, t in sorted(obs.traffic().items()):
            for key, fam in fams.items():
                fam.add_metric([peer], getattr(t, key))
        yield from fams.values()
        yield GaugeMetricFamily("ccied_links", "Open authenticated peer links.", len(obs.node.links))


class Observer:
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
        r.register(_Collector(self))
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
        source = result.source
        kind = _kind(source)
        peer = source[5:] if kind == "peer" else ""
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
        if not hasattr(node, "membership"):
            return []
        return sorted(
            (m for m in node.membership.members() if m.node_id != node.node_id),
            key=lambda m: (m.name, m.node_id),
        )

    def me(self) -> MemberUpdate | None:
        return self.node.membership.me if hasattr(self.node, "membership") else None

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
        by_kind: dict[str, int] = {"cache": 0, "local": 0, "peer": 0}
        for src, n in c.by_source.items():
            by_kind[_kind(src)] = by_kind.get(_kind(src), 0) + n
        states = dict.fromkeys(_STATE_ORDER, 0)
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
                "encoding": node.config.encoding,
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
        if not hasattr(node, "cache"):
            return None
        cache = node.cache
        st = cache.stats()
        looked = st.hits + st.misses
        return {
            "enabled": node.config.cache,
            "shared": node.config.share_cache,
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


# ---------------------------------------------------------------------------------------------- routes

OBSERVER_KEY: Final = web.AppKey("ccied_observer", Observer)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Routes:
    def __init__(self, node: Node, observer: Observer) -> None:
        self.node = node
        self.observer = observer
        secret = node.config.secret
        self.token = read_token(secret) if secret is not None else None
        self.stop = asyncio.Event()
        self.subscribers = 0
        self._static: dict[str, bytes] = {}
        self._refusal_log = RateLimitedLog(log)

    # ------------------------------------------------------------------ access

    def _allowed_hosts(self) -> set[str]:
        cfg = self.node.config
        # Debian maps the host name to 127.0.1.1, so a browser on this machine may use it.
        return {h.lower() for h in (cfg.host, cfg.advertise_host, self.node.host) if h} | self._machine

    @functools.cached_property
    def _machine(self) -> set[str]:
        name = socket.gethostname().lower()
        return {name, f"{name}.local"} if name else set()

    def guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            peer = request.transport.get_extra_info("peername") if request.transport is not None else None
            remote = str(peer[0]) if isinstance(peer, tuple | list) and peer else None
            access = check_access(
                remote,
                request.headers.get("Host"),
                _presented_token(request),
                self.token,
                self._allowed_hosts(),
            )
            if not access.allowed:
                self._refused(request, remote, access)
                headers = dict(_COMMON_HEADERS)
                if access.status == 401:
                    headers["WWW-Authenticate"] = 'Bearer realm="ccied-p2p read"'
                return web.json_response({"error": access.reason}, status=access.status, headers=headers)
            return await handler(request)

        return guarded

    def _refused(self, request: web.Request, remote: str | None, access: Access) -> None:
        reason = {401: "missing_token", 403: "forbidden"}.get(access.status, "other")
        if "wrong read token" in access.reason:
            reason = "wrong_token"
        elif "Host" in access.reason:
            reason = "bad_host"
        self.observer.http_refused.labels(reason).inc()
        self._refusal_log.warning(
            "http",
            "[%s] refused %s %s from %s: %s (%d)",
            self.node.config.name,
            request.method,
            request.path,
            remote,
            access.reason,
            access.status,
        )

    # ------------------------------------------------------------------ handlers

    async def status(self, request: web.Request) -> web.StreamResponse:
        body = self.observer.status()
        if request.query.get("history") in ("1", "true"):
            body["history"] = list(self.observer.history)
        return web.json_response(body, headers=_COMMON_HEADERS, dumps=_dumps)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body, content_type = self.observer.metrics(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={**_COMMON_HEADERS, "Content-Type": content_type})

    async def page(self, request: web.Request) -> web.StreamResponse:
        token = _presented_token(request) if "token" in request.query else None
        query = "" if token is None else "?token=" + quote(token, safe="")
        text = self._asset("dashboard.html").decode("utf-8")
        text = text.replace("{{query}}", html.escape(query)).replace(
            "{{name}}", html.escape(self.node.config.name)
        )
        return web.Response(text=text, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        suffix = name[name.rfind(".") :] if "." in name else ""
        if not _STATIC_NAME.fullmatch(name) or suffix not in _CONTENT_TYPES:
            raise web.HTTPNotFound()
        try:
            body = self._asset(name)
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        return web.Response(body=body, headers={**_COMMON_HEADERS, "Content-Type": _CONTENT_TYPES[suffix]})

    def _asset(self, name: str) -> bytes:
        data = self._static.get(name)
        if data is None:
            path = importlib.resources.files("ccied_p2p").joinpath("static").joinpath(name)
            if not path.is_file():
                raise FileNotFoundError(name)
            data = self._static[name] = path.read_bytes()
        return data

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.subscribers >= MAX_SUBSCRIBERS:
            return web.json_response(
                {"error": f"at most {MAX_SUBSCRIBERS} live dashboards per node"},
                status=503,
                headers={**_COMMON_HEADERS, "Retry-After": "5"},
            )
        resp = web.StreamResponse(
            headers={**_COMMON_HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        self.subscribers += 1
        try:
            await resp.prepare(request)
            await resp.write(b"retry: 2000\n\n")
            hello = {"status": self.observer.cached_status(), "history": list(self.observer.history)}
            await resp.write(_event("hello", hello))
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SAMPLE_INTERVAL):
                        await self.stop.wait()
                if self.stop.is_set():
                    break
                history = self.observer.history
                snapshot = {
                    "status": self.observer.cached_status(),
                    "sample": history[-1] if history else None,
                }
                await resp.write(_event("snapshot", snapshot))
        except ConnectionError:
            pass  # the dashboard went away
        finally:
            self.subscribers -= 1
        return resp

    async def on_shutdown(self, app: web.Application) -> None:
        self.stop.set()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {_dumps(data)}\n\n".encode()


def install(app: web.Application, node: Node) -> Observer:
    """Add the observability routes to ``app`` and register the node's metrics observer."""
    observer = Observer(node)
    node.observers.append(observer)
    routes = _Routes(node, observer)
    app[OBSERVER_KEY] = observer
    app.on_shutdown.append(routes.on_shutdown)
    app.router.add_get("/", routes.guard(routes.page))
    app.router.add_get("/status", routes.guard(routes.status))
    app.router.add_get("/metrics", routes.guard(routes.metrics))
    app.router.add_get("/events", routes.guard(routes.events), allow_head=False)
    app.router.add_get("/static/{name}", routes.guard(routes.static))
    return observer
