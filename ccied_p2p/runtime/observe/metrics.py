"""The node's Prometheus figures read at scrape time (:class:`Collector`), beside the counters of :class:`Observer`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from ccied_p2p.codec.messages import MemberState
from ccied_p2p.runtime.guard import REASONS

if TYPE_CHECKING:
    from ccied_p2p.runtime.observe.status import Observer


__all__ = ["LATENCY_BUCKETS", "STAGES", "STATE_ORDER", "Collector"]

STAGES: Final = ("head", "lookup", "encode", "transfer", "queue", "tail", "decode", "total")
LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
STATE_ORDER: Final = tuple(s.value for s in MemberState)


class Collector:
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
        cache = obs.node.cache
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
        counts = dict.fromkeys(STATE_ORDER, 0)
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
