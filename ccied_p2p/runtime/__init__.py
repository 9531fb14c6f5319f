"""The asyncio runtime: transport, discovery, gossip timers and the Node facade over the pure layers."""

from __future__ import annotations

__all__: list[str] = []
