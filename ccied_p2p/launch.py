"""The command line that starts one ``ccied-p2p serve`` node: what launchers (LocalCluster, demos) pass.

Kept apart from :mod:`ccied_p2p.cli` so the test harness can build it without importing the command (which
imports the benches, which use the harness). ``tests`` parse its output with ``cli.build_parser``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["serve_argv"]


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
