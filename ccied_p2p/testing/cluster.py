"""LocalCluster: n real nodes on loopback, in this process or as ``ccied-p2p serve`` subprocesses, with faults.

Layout. Node ``i`` binds ``127.0.0.(10+i)`` (every 127/8 address is local on Linux), with mDNS off, and
joins through the other nodes' addresses as seeds. With link emulation (``link=`` a
:class:`~ccied_p2p.testing.linkmodel.LinkSpec`) node ``i`` also gets an ingress relay on
``127.0.1.(10+i)`` at the same port and advertises the relay's address, so every byte another node sends it
crosses the relay. Outbound connections leave from the node's bound address, so a relay tells which node is
calling by the source IP: that is what makes per-pair specs (:meth:`LocalCluster.set_link`) and partitions
(:meth:`LocalCluster.partition`) work. The relay forwards from the caller's relay address, so the receiving
node sees the caller at the address it advertises.

Faults. :meth:`LocalCluster.kill` stops a node without a goodbye (SIGKILL for a subprocess; for an
in-process node its sockets are shut and its tasks cancelled, with no Leave sent); :meth:`LocalCluster.restart`
starts it again under the same name (a new node id, as after a crash); :meth:`LocalCluster.partition` /
:meth:`LocalCluster.heal` cut and restore links at the relays (with ``netns=True``, at the namespace bridge).

Observation. Every membership event each node reports is kept as a :class:`Sighting` with the time this
process saw it (in-process: a :class:`~ccied_p2p.runtime.node.NodeObserver`; subprocess: the node's INFO log
line ``[observer] member <name> <kind>``, read from its stderr as it is written). :meth:`LocalCluster.views`
and :meth:`LocalCluster.wait_converged` compare what every node believes with what is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import is_dataclass, replace
from pathlib import Path
from typing import Any

from ccied_p2p.codec.messages import MemberState
from ccied_p2p.errors import ConfigError, LocalError
from ccied_p2p.gossip.membership import MembershipConfig
from ccied_p2p.presets import CacheSettings
from ccied_p2p.runtime.config import NetworkConfig, NodeConfig
from ccied_p2p.runtime.node import Node
from ccied_p2p.runtime.quota import CpuQuota, QuotaSpec
from ccied_p2p.split import SplitModel
from ccied_p2p.testing.linkmodel import LinkSpec
from ccied_p2p.testing.netns import NetnsLab, unavailable
from ccied_p2p.testing.nodes import Mode, NodeHandle, Sighting, _Watcher
from ccied_p2p.testing.relay import Network, Relay

__all__ = ["LocalCluster", "Mode", "NodeHandle", "Sighting"]

log = logging.getLogger(__name__)


_LOG_EVENT = re.compile(
    r"\[(?P<observer>[^\]]+)\] member (?P<member>\S+)(?: (?P<id>[0-9a-f]{8,32}))? "
    r"(?P<kind>joined|suspected|alive|dead|left|updated)\s*$"
)
_STATE_OF_KIND = {
    "joined": MemberState.ALIVE,
    "alive": MemberState.ALIVE,
    "updated": MemberState.ALIVE,
    "suspected": MemberState.SUSPECT,
    "dead": MemberState.DEAD,
    "left": MemberState.LEFT,
}
_NETNS_PORT = 7700  # every namespace has its own port space
_PORT_TRIES = 20
_RANK = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2, MemberState.LEFT: 3}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bindable(host: str, port: int) -> bool:
    """Whether a server (which sets SO_REUSEADDR) can bind ``host:port`` now. A relay's port is free on the
    relay's address, not necessarily on its node's: an earlier outgoing connection from the node's address may
    hold the same number (in TIME_WAIT, without SO_REUSEADDR), and then the node's bind fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _copied(value: Any) -> Any:
    """A shallow copy of a dataclass instance (a NodeConfig group), anything else as it is."""
    return replace(value) if is_dataclass(value) and not isinstance(value, type) else value


class LocalCluster:
    """``async with LocalCluster(3) as cluster:`` n real nodes on loopback, with kills, restarts, partitions.

    ``model``/``data``/``amount`` name the reference split (``split=`` gives one directly, in-process only);
    ``mode`` is ``"inprocess"``, ``"subprocess"`` or one per node; ``link`` turns on link emulation with that
    spec for every pair (``LinkSpec()`` emulates a perfect link, which still allows partitions);
    ``membership`` defaults to :class:`MembershipConfig` (``MembershipConfig.quick()`` for fast tests);
    ``cache_settings`` calibrated cache settings for every node; ``node_options`` more NodeConfig fields
    for in-process nodes, groups whole (``cache=CacheConfig(enabled=False)``,
    ``network=NetworkConfig(request_timeout=...)``: the cluster sets its addresses, seeds and mDNS in it). ``netns=True`` (root only) runs every
    node as a subprocess in its own network namespace (:mod:`ccied_p2p.testing.netns`): ``link.rate`` is
    applied with ``tc tbf`` and partitions split the bridge. ``cpu_quota`` (a fraction of one core, for every
    node or one per node, None for unlimited) puts each subprocess node in its own cgroup right after it is
    spawned (:mod:`ccied_p2p.runtime.quota`); in-process nodes share this process and cannot be quota'd alone.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        model: str = "lenet",
        data: str = "mnist-5k",
        amount: float = 0.5,
        mode: Mode | Sequence[Mode] = "inprocess",
        link: LinkSpec | None = None,
        links: Mapping[tuple[int, int], LinkSpec] | None = None,
        secret: str | None = None,
        membership: MembershipConfig | None = None,
        cache_settings: CacheSettings | None = None,
        node_options: Mapping[str, Any] | None = None,
        split: SplitModel | None = None,
        name_prefix: str = "node",
        first_host: int = 10,
        seed: int = 0,
        startup_timeout: float = 180.0,
        netns: bool = False,
        cpu_quota: float | Sequence[float | None] | None = None,
    ) -> None:
        if not 1 <= n <= 200 or not 1 <= first_host <= 254 - n:
            raise ConfigError(f"LocalCluster: n={n} does not fit 127.0.0.{first_host}..254")
        modes: list[Mode] = [mode] * n if isinstance(mode, str) else list(mode)
        if len(modes) != n or any(m not in ("inprocess", "subprocess") for m in modes):
            raise ConfigError(
                f"mode must be 'inprocess', 'subprocess' or one of those per node, got {mode!r}"
            )
        quotas: list[float | None] = (
            [cpu_quota] * n if cpu_quota is None or isinstance(cpu_quota, int | float) else list(cpu_quota)
        )
        if len(quotas) != n:
            raise ConfigError(f"cpu_quota needs one value per node ({n}), got {len(quotas)}")
        for q, m in zip(quotas, modes, strict=True):
            if q is None:
                continue
            QuotaSpec(q)  # validates the fraction
            if m != "subprocess":
                raise ConfigError(
                    "cpu_quota applies to subprocess nodes only: in-process nodes share this process, whose "
                    "quota would slow every node and the harness; use mode='subprocess' for quota'd nodes"
                )
        if links and link is None:
            link = LinkSpec()
        self.lab: NetnsLab | None = None
        if netns:
            if any(m != "subprocess" for m in modes):
                raise ConfigError("netns=True runs every node as a subprocess inside its own namespace")
            if links or (link is not None and (link.delay or link.jitter or link.loss or link.reset)):
                raise ConfigError(
                    "in netns mode only the rate is emulated (tc tbf); per-pair specs, delay, jitter, loss "
                    "and resets need relays, i.e. in-process or loopback subprocess nodes"
                )
            if (reason := unavailable()) is not None:
                raise ConfigError(f"netns mode unavailable: {reason}")
            self.lab = NetnsLab(n, rate=link.rate if link is not None else None)
            link = None
        self._groups: dict[int, int] = {}
        self.n = n
        self.model, self.data_name, self.amount = model, data, amount
        self.secret = secret or secrets.token_urlsafe(24)
        self.membership = membership if membership is not None else MembershipConfig()
        self.cache_settings = cache_settings
        self.node_options = dict(node_options or {})
        self.split = split
        self.startup_timeout = startup_timeout
        self.network: Network | None = Network(link, seed=seed) if link is not None else None
        self._links = dict(links or {})
        self.nodes = [
            NodeHandle(
                i,
                f"{name_prefix}{i}",
                modes[i],
                self.lab.address(i) if self.lab is not None else f"127.0.0.{first_host + i}",
                _NETNS_PORT if self.lab is not None else 0,
                f"127.0.1.{first_host + i}" if link is not None else None,
                cpu_quota=quotas[i],
            )
            for i in range(n)
        ]
        self.sightings: list[Sighting] = []
        self._relays: dict[int, Relay] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> LocalCluster:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the relays, then every node at once; returns when every node listens."""
        if self._started:
            raise LocalError("LocalCluster already started")
        self._started = True
        self._tmp = tempfile.TemporaryDirectory(prefix="ccied-cluster-")
        if self.lab is not None:
            await asyncio.to_thread(self.lab.create)
        if self.split is None and any(h.mode == "inprocess" for h in self.nodes):
            self.split = await asyncio.to_thread(self._load_split)
        for h in self.nodes:
            if self.network is not None:
                assert h.relay_host is not None
                self.network.add_endpoint(h.index, h.host, forward_from=h.relay_host)
                for _ in range(_PORT_TRIES):  # a port free on the relay's address and on the node's
                    relay = Relay(
                        h.relay_host, 0, (h.host, 0), network=self.network, owner=h.index, name=h.name
                    )
                    await relay.start()
                    if _bindable(h.host, relay.port):
                        break
                    await relay.close()
                else:
                    raise LocalError(f"LocalCluster: no port free on both {h.relay_host} and {h.host}")
                h.port = relay.port
                relay.target = (h.host, h.port)
                self._relays[h.index] = relay
            elif self.lab is None:
                h.port = _free_port(h.host)
        if self.network is not None:
            for (a, b), spec in self._links.items():
                self.network.set_link(a, b, spec, both=False)
        await asyncio.gather(*(self._start_node(h) for h in self.nodes))

    async def close(self) -> None:
        """Heal, stop every node (gracefully), close the relays; idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(LocalError):
            self.heal()
        for h in self.nodes:
            if h.node is not None:
                try:
                    await h.node.close()
                except Exception:  # one node failing to close must not leave the others running
                    log.warning("closing %s failed", h.name, exc_info=True)
                h.node = None
        await asyncio.gather(*(self._stop_process(h) for h in self.nodes if h.process is not None))
        for h in self.nodes:
            await self._cancel_readers(h)
        for relay in self._relays.values():
            await relay.close()
        self._relays.clear()
        if self.lab is not None:
            await asyncio.to_thread(self.lab.destroy)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _load_split(self) -> SplitModel:
        import torch

        from ccied_p2p import datasets
        from ccied_p2p.presets import reference_parts

        torch.set_num_threads(1)
        return reference_parts(self.model, datasets.load(self.data_name), amount=self.amount, progress=False)

    # ------------------------------------------------------------------ views

    def node(self, i: int) -> Node:
        """The running in-process :class:`Node` at index ``i``."""
        h = self.nodes[i]
        if h.mode != "inprocess":
            raise LocalError(f"node {i} runs as a subprocess (pid {h.pid}); it has no in-process Node")
        if h.node is None:
            raise LocalError(f"node {i} is not running")
        return h.node

    @property
    def running(self) -> list[int]:
        return [h.index for h in self.nodes if h.running]

    @property
    def addresses(self) -> list[str]:
        return [h.address for h in self.nodes]

    def index_of(self, name: str) -> int:
        for h in self.nodes:
            if h.name == name:
                return h.index
        raise LocalError(f"no node called {name!r}")

    def relay(self, i: int) -> Relay:
        if i not in self._relays:
            raise LocalError("links are not emulated in this cluster (pass link=LinkSpec(...))")
        return self._relays[i]

    def join_config(self, name: str, host: str = "127.0.0.1", **options: Any) -> NodeConfig:
        """A NodeConfig for a node outside the cluster that joins it (same secret and membership timings).

        ``options`` are more NodeConfig fields, groups whole; the network group gets ``host`` and the seeds.
        """
        seeds = tuple(self.nodes[i].address for i in self.running)
        return self._config(name, options, host=host, seeds=seeds)

    def _config(self, name: str, options: Mapping[str, Any], **network: Any) -> NodeConfig:
        """``options`` (NodeConfig fields) with this cluster's secret, membership, cache settings and ``network``."""
        # Each node its own copy of every group: a group is mutable (``node.config.strategy.local_tail_ms``).
        fields: dict[str, Any] = {k: _copied(v) for k, v in options.items()}
        fields.setdefault("membership", self.membership)
        fields["network"] = replace(fields.get("network") or NetworkConfig(), mdns=False, **network)
        if self.cache_settings is not None:
            fields["cache"] = self.cache_settings.config(fields.get("cache"))
        return NodeConfig(name=name, secret=self.secret, **fields)

    def views(self) -> dict[str, dict[str, MemberState | None]]:
        """What each running node believes about every other slot: its state, or None if unknown."""
        out: dict[str, dict[str, MemberState | None]] = {}
        for h in self.nodes:
            if not h.running:
                continue
            out[h.name] = {o.name: self._belief(h, o) for o in self.nodes if o is not h}
        return out

    def _belief(self, observer: NodeHandle, other: NodeHandle) -> MemberState | None:
        want_id = other.node_id if other.running else None
        if observer.node is not None and observer.node.started:
            records = [m for m in observer.node.membership.members() if m.name == other.name]
            if want_id is not None:
                mine = [m for m in records if m.node_id.hex() == want_id]
                return mine[0].state if mine else None
            if not records:
                return None
            return min((m.state for m in records), key=_RANK.__getitem__)
        # A subprocess: replay its log lines about this member, newest last.
        state: MemberState | None = None
        for s in self.sightings:
            if s.observer != observer.name or s.member != other.name:
                continue
            if observer.killed_at is not None and s.at < observer.killed_at:
                continue
            if (
                want_id
                and s.member_id
                and not (want_id.startswith(s.member_id) or s.member_id.startswith(want_id))
            ):
                continue
            state = _STATE_OF_KIND[s.kind]
        return state

    def cut(self, a: int, b: int) -> bool:
        """True while a partition separates nodes ``a`` and ``b``."""
        if self.network is not None:
            return self.network.blocked(a, b) or self.network.blocked(b, a)
        ga, gb = self._groups.get(a), self._groups.get(b)
        return ga is not None and gb is not None and ga != gb

    def expected_views(self) -> dict[str, dict[str, bool]]:
        """For each running node, which other slots it should hold alive (running and not cut off)."""
        out: dict[str, dict[str, bool]] = {}
        for h in self.nodes:
            if not h.running:
                continue
            out[h.name] = {
                o.name: o.running and not self.cut(h.index, o.index) for o in self.nodes if o is not h
            }
        return out

    def converged(self) -> bool:
        """Every running node holds exactly the reachable running nodes alive and the rest dead or gone."""
        return not self._disagreements()

    def _disagreements(self) -> list[str]:
        views = self.views()
        bad = []
        for observer, expect in self.expected_views().items():
            for member, alive in expect.items():
                state = views[observer][member]
                ok = (
                    state is MemberState.ALIVE
                    if alive
                    else state in (None, MemberState.DEAD, MemberState.LEFT)
                )
                if not ok:
                    bad.append(f"{observer} holds {member} {state.value if state else 'unknown'}")
        return bad

    async def wait_converged(self, timeout: float = 10.0) -> float:
        """Wait until :meth:`converged`; returns the seconds it took (TimeoutError says who disagrees)."""
        start = time.monotonic()
        while True:
            bad = self._disagreements()
            if not bad:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"cluster not converged after {timeout} s: " + "; ".join(bad))
            await asyncio.sleep(0.02)

    async def wait_for(
        self, predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"
    ) -> float:
        """Poll ``predicate()`` every 20 ms; returns the seconds until it held."""
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{what} not met within {timeout} s")
            await asyncio.sleep(0.02)
        return time.monotonic() - start

    def detection_times(self, i: int) -> dict[str, float | None]:
        """Seconds from the last kill of node ``i`` to each running node's first ``dead`` (or ``left``) for it."""
        victim = self.nodes[i]
        if victim.killed_at is None:
            raise LocalError(f"node {i} was never killed")
        out: dict[str, float | None] = {}
        for h in self.nodes:
            if h is victim or not h.running:
                continue
            seen = [
                s.at
                for s in self.sightings
                if s.observer == h.name
                and s.member == victim.name
                and s.kind in ("dead", "left")
                and s.at >= victim.killed_at
            ]
            out[h.name] = min(seen) - victim.killed_at if seen else None
        return out

    # ------------------------------------------------------------------ faults

    async def kill(self, i: int) -> None:
        """Stop node ``i`` without a goodbye (SIGKILL, or an in-process crash stop)."""
        h = self.nodes[i]
        if not h.running:
            raise LocalError(f"node {i} is not running")
        h.killed_at = time.monotonic()
        if h.process is not None:
            h.process.send_signal(signal.SIGKILL)
            await h.process.wait()
            await self._release_quota(h)
            await self._cancel_readers(h)
        elif h.node is not None:
            node, h.node = h.node, None
            await node.abort()  # as a crash would: no Leave; peers see its connections drop
        log.info("killed %s", h.name)

    async def restart(self, i: int) -> None:
        """Start node ``i`` again under the same name and address (a new node id); kills it first if running."""
        h = self.nodes[i]
        if h.running:
            await self.kill(i)
        await self._start_node(h)

    def partition(self, *groups: Collection[int], reset: bool = False) -> None:
        """Cut the groups of node indices off from each other at the relays (``reset``: kill connections too).

        A node in no group keeps talking to every group (with relays; in netns mode every node must be in
        exactly one group, and packets across the cut are dropped by the kernel).
        """
        if self.lab is not None:
            self.lab.partition(*groups)
            self._groups = {i: g for g, group in enumerate(groups) for i in group}
            return
        if self.network is None:
            raise LocalError("partitions need link emulation: LocalCluster(..., link=LinkSpec())")
        self.network.partition(*groups, reset=reset)

    def heal(self) -> None:
        """Remove the partition."""
        if self.network is not None:
            self.network.heal()
        if self.lab is not None and self._groups:
            self.lab.heal()
        self._groups = {}

    def set_link(self, a: int, b: int, spec: LinkSpec, *, both: bool = True) -> None:
        """Bytes from node ``a`` to node ``b`` (and back unless ``both=False``) follow ``spec`` on connections
        opened from now on (open ones keep the spec they started with; ``partition`` acts on open ones too)."""
        if self.network is None:
            raise LocalError("link specs need link emulation: LocalCluster(..., link=LinkSpec())")
        self.network.set_link(a, b, spec, both=both)

    # ------------------------------------------------------------------ starting nodes

    def _seeds(self, h: NodeHandle) -> tuple[str, ...]:
        return tuple(o.address for o in self.nodes if o is not h)

    async def _start_node(self, h: NodeHandle) -> None:
        h.generation += 1
        if h.mode == "inprocess":
            await self._start_inprocess(h)
        else:
            await self._start_subprocess(h)
        log.info("started %s at %s (id %s)", h.name, h.address, h.node_id)

    async def _start_inprocess(self, h: NodeHandle) -> None:
        assert self.split is not None
        config = self._config(
            h.name,
            self.node_options,
            host=h.host,
            port=h.port,
            advertise_host=h.relay_host,
            seeds=self._seeds(h),
        )
        node = Node(self.split, config)
        node.observers.append(_Watcher(self.sightings))
        await node.start()
        h.node = node
        h.node_id = node.node_id.hex()

    def _serve_args(self, h: NodeHandle) -> list[str]:
        from ccied_p2p.launch import serve_argv

        return serve_argv(
            model=self.model,
            data=self.data_name,
            amount=self.amount,
            name=h.name,
            host=h.host,
            port=h.port,
            seeds=self._seeds(h),
            advertise_host=h.relay_host,
            quick_membership=self.membership != MembershipConfig(),
            cpu_quota=h.cpu_quota,  # reported in /status; the group is ours
            extra=self.cache_settings.as_args() if self.cache_settings is not None else (),
        )

    async def _start_subprocess(self, h: NodeHandle) -> None:
        assert self._tmp is not None
        h.log_path = Path(self._tmp.name) / f"{h.name}.{h.generation}.log"
        env = {**os.environ, "CCIED_SECRET": self.secret, "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "ccied_p2p.cli", *self._serve_args(h)]
        if self.lab is not None:
            argv = self.lab.command(h.index, argv)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
        )
        h.process = proc
        h.node_id = None
        if h.cpu_quota is not None:
            # Before the child is done importing: it finds itself under this quota and creates no group of its own.
            try:
                h.quota = CpuQuota(h.cpu_quota, proc.pid).apply()
            except BaseException:
                proc.kill()
                await proc.wait()
                raise
        ready: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        h._readers = [
            asyncio.ensure_future(self._read_stdout(h, proc, ready)),
            asyncio.ensure_future(self._read_stderr(h, proc, h.log_path)),
        ]
        try:
            async with asyncio.timeout(self.startup_timeout):
                words = await ready
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await self._release_quota(h)
            await self._cancel_readers(h)
            raise
        if len(words) >= 4:
            h.node_id = words[3]

    async def _read_stdout(
        self, h: NodeHandle, proc: asyncio.subprocess.Process, ready: asyncio.Future[list[str]]
    ) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            words = line.decode(errors="replace").split()
            if words[:1] == ["READY"] and not ready.done():
                ready.set_result(words)
        if not ready.done():
            await proc.wait()
            tail = h.log_path.read_text(errors="replace")[-2000:] if h.log_path else ""
            ready.set_exception(
                LocalError(f"{h.name} exited with {proc.returncode} before it was ready:\n{tail}")
            )

    async def _read_stderr(self, h: NodeHandle, proc: asyncio.subprocess.Process, path: Path) -> None:
        assert proc.stderr is not None
        with path.open("ab") as f:
            while line := await proc.stderr.readline():
                f.write(line)
                f.flush()
                match = _LOG_EVENT.search(line.decode(errors="replace"))
                if match is not None:
                    self.sightings.append(
                        Sighting(
                            time.monotonic(),
                            match["observer"],
                            match["member"],
                            match["kind"],
                            match["id"],
                        )
                    )

    async def _cancel_readers(self, h: NodeHandle) -> None:
        readers, h._readers = h._readers, []
        if not readers:
            return
        # Let them drain what the process wrote before it ended, then stop them.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(*readers, return_exceptions=True)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    async def _stop_process(self, h: NodeHandle) -> None:
        proc = h.process
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await self._release_quota(h)
        await self._cancel_readers(h)

    @staticmethod
    async def _release_quota(h: NodeHandle) -> None:
        quota, h.quota = h.quota, None
        if quota is not None:
            await asyncio.to_thread(quota.release)  # may wait a moment for the kernel to let go of the group

    def log_text(self, i: int) -> str:
        """What subprocess node ``i`` wrote to stderr in its current (or last) run."""
        path = self.nodes[i].log_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def __repr__(self) -> str:
        return f"LocalCluster({', '.join(f'{h.name}@{h.address}' for h in self.nodes)})"
