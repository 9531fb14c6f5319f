"""The asyncio runtime: the Node facade over the pure layers, and what it is made of.

- ``node``       :class:`~ccied_p2p.runtime.node.Node`: start-up and shutdown, message dispatch, gossip timer
- ``config``     :class:`~ccied_p2p.runtime.config.NodeConfig`
- ``results``    :class:`~ccied_p2p.runtime.results.InferenceResult`, ``NodeObserver``, ``NodeStats``
- ``compute``    head and tail on one worker thread, tails batched round-robin across askers
- ``inference``  this node's requests: the cache, the scheduler's failover order, per-frame strategies
- ``serving``    peers' requests: admission before decoding, refusals, tails and whole inputs run for them
- ``mesh``       the links: accept and dial, one per peer, membership's outbox, mDNS sightings
- ``transport``  one authenticated WebSocket link; ``discovery`` mDNS; ``guard`` inbound connections;
  ``quota`` CPU quotas; ``observe`` /status, /metrics and the dashboard
"""

from __future__ import annotations

__all__: list[str] = []
