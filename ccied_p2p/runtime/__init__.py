"""The asyncio runtime: the Node facade over the pure layers, and what it is made of.

- ``node``       :class:`~ccied_p2p.runtime.node.Node`: start-up and shutdown, message dispatch, gossip timer
- ``config``     :class:`~ccied_p2p.runtime.config.NodeConfig` and its groups (``NetworkConfig``,
  ``ConnectionLimits``, ``CacheConfig``, ``ServingConfig``, ``StrategyConfig``)
- ``results``    :class:`~ccied_p2p.runtime.results.InferenceResult`, ``NodeObserver``, ``NodeStats``
- ``compute``    head and tail on one worker thread, tails batched round-robin across askers
- ``inference``  this node's requests: the cache, the scheduler's failover order, per-frame strategies
- ``serving``    peers' requests: admission before decoding, refusals, tails and whole inputs run for them
- ``mesh``       the links: accept and dial, one per peer, membership's outbox, mDNS sightings
- ``transport``  one authenticated WebSocket link; ``discovery`` mDNS; ``guard`` inbound connections;
  ``quota`` CPU quotas; ``observe`` /status, /metrics and the dashboard
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ccied_p2p.codec.tensor import Limits
    from ccied_p2p.gossip.membership import MembershipConfig
    from ccied_p2p.inputs import InputSpec
    from ccied_p2p.runtime.config import (
        CacheConfig,
        ConnectionLimits,
        NetworkConfig,
        NodeConfig,
        ServingConfig,
        StrategyConfig,
    )
    from ccied_p2p.runtime.node import Node
    from ccied_p2p.runtime.results import InferenceResult, NodeObserver
    from ccied_p2p.scheduler import SchedulerPolicy

__all__ = [
    "CacheConfig",
    "ConnectionLimits",
    "InferenceResult",
    "InputSpec",
    "Limits",
    "MembershipConfig",
    "NetworkConfig",
    "Node",
    "NodeConfig",
    "NodeObserver",
    "SchedulerPolicy",
    "ServingConfig",
    "StrategyConfig",
]

# PEP 562, as in the package: importing one submodule (``runtime.config``) does not load the node and torch.
_LAZY: dict[str, str] = {
    "CacheConfig": "ccied_p2p.runtime.config",
    "ConnectionLimits": "ccied_p2p.runtime.config",
    "InferenceResult": "ccied_p2p.runtime.results",
    "InputSpec": "ccied_p2p.inputs",
    "Limits": "ccied_p2p.codec.tensor",
    "MembershipConfig": "ccied_p2p.gossip.membership",
    "NetworkConfig": "ccied_p2p.runtime.config",
    "Node": "ccied_p2p.runtime.node",
    "NodeConfig": "ccied_p2p.runtime.config",
    "NodeObserver": "ccied_p2p.runtime.results",
    "SchedulerPolicy": "ccied_p2p.scheduler",
    "ServingConfig": "ccied_p2p.runtime.config",
    "StrategyConfig": "ccied_p2p.runtime.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
