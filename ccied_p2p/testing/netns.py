"""Optional real-namespace mode: one network namespace per node, veth pairs into a bridge, ``tc tbf`` for rate.

Needs root and ``ip netns`` (iproute2); :func:`unavailable` says why not, so tests skip cleanly elsewhere.
The kernel here has no ``netem``, so delay cannot come from ``tc``: use a user-space
:class:`~ccied_p2p.testing.relay.Relay` whose sockets live inside a namespace (``socket_factory=lab.socket_factory(i)``).

Layout of a :class:`NetnsLab` of n endpoints (names carry this process's pid, so parallel runs never clash)::

    ns <prefix>-<i>:  veth "eth0" 10.231.0.(10+i)/16, tbf on egress (upload)   <-- node i runs here
    ns <prefix>-sw:   bridges br0 (and br1.. during a partition), port "p<i>" per endpoint, tbf on egress
                      (node i's download)

A partition moves each group's ports onto a bridge of its own: packets across the cut are dropped by the
kernel, as on a real network (TCP retransmits until the heal). Everything is removed on exit.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from ccied_p2p.errors import ConfigError, LocalError

__all__ = ["NetnsLab", "unavailable"]

log = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None if they can): not root, no ``ip``, no ``tc``, no netns."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"ccied-probe-{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True, timeout=10)
    return None


def _run(*argv: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0:
        raise LocalError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


def _in_netns(name: str, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` on a fresh thread that has entered namespace ``name`` (sockets it makes stay there)."""
    out: list[_T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{name}") as f:
                if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
            out.append(fn())
        except BaseException as exc:  # re-raised on the caller's thread
            err.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{name}")
    thread.start()
    thread.join()
    if err:
        raise err[0]
    return out[0]


class NetnsLab:
    """``with NetnsLab(3, rate=1.25e6) as lab:`` namespaces, veths, a bridge and tbf; removed on exit.

    ``rate`` bytes/s for every endpoint's upload and download (None: unshaped); ``burst`` tbf bucket bytes.
    """

    def __init__(
        self, n: int, *, rate: float | None = None, burst: int = 16 << 10, prefix: str | None = None
    ) -> None:
        if not 1 <= n <= 200:
            raise ConfigError("NetnsLab: 1 <= n <= 200")
        if rate is not None and rate <= 0:
            raise ConfigError("NetnsLab: rate must be > 0 bytes/s")
        self.n = n
        self.rate = rate
        self.burst = burst
        self.prefix = prefix or f"cc{os.getpid() % 100000}"
        self.switch = f"{self.prefix}-sw"
        self._created: list[str] = []
        self._bridges = 1

    def ns(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def address(self, i: int) -> str:
        return f"10.231.0.{10 + i}"

    def __enter__(self) -> NetnsLab:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        """Build the namespaces, veths, bridge and qdiscs."""
        _run("ip", "netns", "add", self.switch)
        self._created.append(self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        _run("ip", "-n", self.switch, "link", "set", "lo", "up")
        for i in range(self.n):
            ns = self.ns(i)
            _run("ip", "netns", "add", ns)
            self._created.append(ns)
            _run(
                "ip",
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                f"p{i}",
                "netns",
                self.switch,
            )
            _run("ip", "-n", self.switch, "link", "set", f"p{i}", "master", "br0")
            _run("ip", "-n", self.switch, "link", "set", f"p{i}", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/16", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            if self.rate is not None:
                self.set_rate(i, self.rate)

    def destroy(self) -> None:
        """Delete every namespace this lab made (their interfaces go with them); idempotent."""
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)
        self._created.clear()

    def set_rate(self, i: int, rate: float | None, burst: int | None = None) -> None:
        """Shape endpoint ``i``'s upload and download to ``rate`` bytes/s with ``tc tbf`` (None: unshaped)."""
        burst = burst or self.burst
        for ns, dev in ((self.ns(i), "eth0"), (self.switch, f"p{i}")):
            if rate is None:
                subprocess.run(
                    ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                    capture_output=True,
                    check=False,
                )
                continue
            _run(
                "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                "rate", f"{int(rate * 8)}bit", "burst", str(burst), "latency", "200ms",
            )  # fmt: skip

    def partition(self, *groups: Collection[int]) -> None:
        """Put each group's ports on a bridge of its own (every endpoint must be in exactly one group)."""
        seen = [i for g in groups for i in g]
        if sorted(seen) != list(range(self.n)):
            raise ConfigError("in a namespace lab every endpoint must be in exactly one partition group")
        for b in range(self._bridges, len(groups)):
            _run("ip", "-n", self.switch, "link", "add", f"br{b}", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", f"br{b}", "up")
        self._bridges = max(self._bridges, len(groups))
        for b, group in enumerate(groups):
            for i in group:
                _run("ip", "-n", self.switch, "link", "set", f"p{i}", "master", f"br{b}")

    def heal(self) -> None:
        """Every port back on br0."""
        for i in range(self.n):
            _run("ip", "-n", self.switch, "link", "set", f"p{i}", "master", "br0")

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside endpoint ``i``'s namespace."""
        return ["ip", "netns", "exec", self.ns(i), *argv]

    def socket_factory(self, i: int) -> Callable[[], socket.socket]:
        """A factory of TCP sockets that live in endpoint ``i``'s namespace (for relays and test clients)."""

        def make() -> socket.socket:
            return _in_netns(self.ns(i), lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))

        return make

    async def open_connection(
        self, i: int, host: str, port: int, **kw: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection made from inside endpoint ``i``'s namespace."""
        sock = self.socket_factory(i)()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, **kw)

    async def start_server(
        self,
        i: int,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        host: str,
        port: int,
    ) -> asyncio.Server:
        """An asyncio server listening inside endpoint ``i``'s namespace."""
        sock = self.socket_factory(i)()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return await asyncio.start_server(handler, sock=sock)

    def __repr__(self) -> str:
        return f"NetnsLab({self.prefix}, n={self.n}, rate={self.rate})"
