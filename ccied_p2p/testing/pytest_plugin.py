"""The ``local_cluster`` pytest fixture: a factory of started :class:`LocalCluster`, all closed at teardown.

Enable it with ``pytest_plugins = ["ccied_p2p.testing.pytest_plugin"]`` in a top-level ``conftest.py``::

    async def test_failover(local_cluster):
        cluster = await local_cluster(3, link=LinkSpec.wifi(), membership=MembershipConfig.quick())
        await cluster.kill(1)
        await cluster.wait_converged(5)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest_asyncio

from ccied_p2p.testing.cluster import LocalCluster

__all__ = ["ClusterFactory", "local_cluster"]


class ClusterFactory(Protocol):
    """``await local_cluster(n, **LocalCluster options)`` -> a started cluster."""

    async def __call__(self, n: int = 3, **options: Any) -> LocalCluster: ...


@pytest_asyncio.fixture
async def local_cluster() -> AsyncIterator[ClusterFactory]:
    """Start clusters on demand inside a test; every one is closed (and checked closed) after it."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(n: int = 3, **options: Any) -> LocalCluster:
            return await stack.enter_async_context(LocalCluster(n, **options))

        yield make
