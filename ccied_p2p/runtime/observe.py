"""Read-only status, Prometheus metrics and the live dashboard of a node (placeholder until written)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ccied_p2p.runtime.node import Node

__all__ = ["install"]


def install(app: web.Application, node: Node) -> None:
    """Add the observability routes to ``app`` and register the node's metrics observer."""
