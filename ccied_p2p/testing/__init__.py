"""Test harness for ccied-p2p clusters: real nodes on loopback, emulated links and faults.

- :class:`LocalCluster` (:mod:`ccied_p2p.testing.cluster`): ``async with LocalCluster(n, ...) as cluster``
  starts n nodes in this process or as ``ccied-p2p serve`` subprocesses; ``kill``, ``restart``,
  ``partition``, ``heal``, ``set_link``, ``wait_converged``, ``views``, ``detection_times``.
- :class:`LinkSpec` (:mod:`ccied_p2p.testing.linkmodel`): rate (bytes/s), one-way delay, jitter, loss
  (as TCP stalls) and resets of one link direction; ``LinkSpec.wifi()`` is 10 Mbit/s, 20 ms.
- :class:`Relay`, :class:`Network` (:mod:`ccied_p2p.testing.relay`): the user-space link emulator (no root).
- ``local_cluster`` (:mod:`ccied_p2p.testing.pytest_plugin`): the pytest fixture factory; enable it with
  ``pytest_plugins = ["ccied_p2p.testing.pytest_plugin"]`` in a top-level conftest.
- :mod:`ccied_p2p.testing.netns`: optional real network namespaces (root and ``ip netns``) with ``tc tbf``.
- :func:`~ccied_p2p.testing.wait.until` (:mod:`ccied_p2p.testing.wait`): wait for a condition that has no
  event, re-checked whenever the event loop goes idle after activity (no polling period).

Example::

    from ccied_p2p.gossip.membership import MembershipConfig
    from ccied_p2p.testing import LinkSpec, LocalCluster

    async with LocalCluster(3, link=LinkSpec.wifi(), membership=MembershipConfig.quick()) as cluster:
        result = await cluster.node(0).infer(x)
        cluster.partition({0, 1}, {2})
        await cluster.wait_converged(5)
        cluster.heal()
"""

from __future__ import annotations

from typing import Any

from ccied_p2p.testing.cluster import LocalCluster, NodeHandle, Sighting
from ccied_p2p.testing.linkmodel import LinkSpec
from ccied_p2p.testing.relay import Network, Relay

__all__ = [
    "LinkSpec",
    "LocalCluster",
    "Network",
    "NodeHandle",
    "Relay",
    "Sighting",
    "local_cluster",
]


def __getattr__(name: str) -> Any:
    # The fixture needs pytest; import it only when asked for, so the harness itself does not.
    if name == "local_cluster":
        from ccied_p2p.testing.pytest_plugin import local_cluster

        return local_cluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
