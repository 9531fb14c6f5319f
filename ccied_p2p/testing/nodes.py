"""The harness's record of each node (:class:`NodeHandle`) and of what the nodes saw (:class:`Sighting`).

Apart from :mod:`ccied_p2p.testing.cluster`, which drives them, to keep each module short.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ccied_p2p.gossip.membership import MemberEvent
from ccied_p2p.runtime.node import Node, NodeObserver
from ccied_p2p.runtime.quota import CpuQuota

__all__ = ["Mode", "NodeHandle", "Sighting"]

Mode = Literal["inprocess", "subprocess"]


@dataclass(frozen=True, slots=True)
class Sighting:
    """One membership event as a node reported it; ``at`` is this process's ``time.monotonic()``."""

    at: float
    observer: str
    member: str
    kind: str  # joined | suspected | alive | dead | left | updated
    member_id: str | None = None  # hex node id, when the reporter says it


@dataclass
class NodeHandle:
    """One slot of the cluster: where node ``index`` lives and what runs there now."""

    index: int
    name: str
    mode: Mode
    host: str  # the address the node binds (and dials from)
    port: int
    relay_host: str | None = None  # its ingress relay, when links are emulated (same port)
    node: Node | None = None  # in-process only
    process: asyncio.subprocess.Process | None = None  # subprocess only
    node_id: str | None = None  # hex id of the current run, when known
    generation: int = 0  # how many times it was started
    killed_at: float | None = None  # monotonic time of the last kill
    log_path: Path | None = None  # subprocess stderr
    cpu_quota: float | None = None  # fraction of one core its process runs on (subprocess only)
    quota: CpuQuota | None = None  # the cgroup holding the current process, while it runs
    _readers: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    @property
    def running(self) -> bool:
        if self.mode == "inprocess":
            return self.node is not None
        return self.process is not None and self.process.returncode is None

    @property
    def address(self) -> str:
        """The ``host:port`` other nodes dial (the relay's, when links are emulated)."""
        return f"{self.relay_host or self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class _Watcher(NodeObserver):
    """Records membership events as sightings."""

    def __init__(self, sink: list[Sighting]) -> None:
        self._sink = sink

    def on_member(self, node: Node, event: MemberEvent) -> None:
        m = event.member
        self._sink.append(
            Sighting(time.monotonic(), node.config.name, m.name, event.kind.value, m.node_id.hex())
        )

    def __getattr__(self, name: str) -> Any:
        # Observer hooks added to the runtime later are ignored rather than breaking the harness.
        if name.startswith("on_"):
            return lambda *args: None
        raise AttributeError(name)
