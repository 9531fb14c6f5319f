"""Starting ``ccied-p2p serve`` nodes as processes: the command line, and the one launcher demos and benches use.

Kept apart from :mod:`ccied_p2p.cli` so the test harness can build the command line without importing the
command (which imports the benches, which use the harness). ``tests`` parse :func:`serve_argv`'s output with
``cli.build_parser``. :class:`~ccied_p2p.testing.LocalCluster` builds its command lines here too and runs the
processes itself (it also applies CPU quotas, network namespaces and collects each node's log).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

__all__ = ["READY", "serve_argv", "start_serve", "stop_serve"]

READY = "READY"
"""The first word of the line ``serve`` prints once it listens: ``READY <address> <fingerprint> <node id>``."""


def serve_argv(
    *,
    model: str,
    data: str,
    amount: float,
    name: str,
    host: str,
    port: int,
    seeds: Sequence[str] = (),
    advertise_host: str | None = None,
    quick_membership: bool = False,
    cpu_quota: float | None = None,
    extra: Sequence[str] = (),
    log_level: str = "INFO",
) -> list[str]:
    """The arguments of ``ccied-p2p`` that start one ``serve`` node without mDNS: what a launcher passes.

    ``extra`` are more ``serve`` options (e.g. :meth:`~ccied_p2p.presets.CacheSettings.as_args`).
    """
    args = [
        "--log-level", log_level, "serve",
        "--model", model, "--data", data, "--amount", repr(amount),
        "--name", name, "--no-mdns", "--host", host, "--port", str(port),
        "--seeds", ",".join(seeds),
    ]  # fmt: skip
    if advertise_host is not None:
        args += ["--advertise-host", advertise_host]
    if quick_membership:
        args += ["--membership", "quick"]
    if cpu_quota is not None:
        args += ["--cpu-quota", repr(cpu_quota)]
    return [*args, *extra]


async def start_serve(
    args: Sequence[str], env: dict[str, str], timeout: float = 300.0
) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``ccied-p2p <args>`` (a ``serve``) and wait for its READY line; returns it and its address.

    If the process exits first, or ``timeout`` passes, or the wait is cancelled, the process is killed before
    the error propagates: a failed start leaves nothing running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ccied_p2p.cli", *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(
                        f"node process {list(args)} exited with {await proc.wait()} before it was ready"
                    )
                if line.startswith(READY):
                    return proc, line.split()[1]
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise


async def stop_serve(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM (the node leaves gracefully), then SIGKILL after ``grace`` seconds."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
