"""A weak device for real: run a process under a CPU quota with the kernel's cgroup ``cpu`` controller.

``with CpuQuota(0.25):`` puts this process (or ``pid=``, e.g. a child right after spawn) into a fresh cgroup
allowed 25% of one core, and on exit moves it back and removes the group. cgroup v1 (``cpu.cfs_period_us``,
``cpu.cfs_quota_us``) and v2 (``cpu.max``) are both supported; v1 is preferred where both are mounted, since a
v2 hierarchy often lacks the cpu controller (it can only be bound to one of them).

The period defaults to 10 ms. The kernel refills the quota once per period, so anything shorter than a period
runs at full speed: with the default 100 ms a 30 ms head ran unthrottled half the time (25% quota: 29 ms min,
82 ms p50), while at 10 ms the same head is a steady ~3.9x slower. The kernel's smallest quota is 1 ms, so at a
10 ms period the smallest fraction is 0.10.

Groups are named ``ccied-p2p-<owner pid>-<pid>-<n>`` at the top of the hierarchy. A process forked inside a
group stays in it: spawn helper processes before entering the quota. Groups whose owner died without cleaning
up are removed by the next :class:`CpuQuota` that starts (once empty). Where no writable controller exists a
:class:`CgroupUnavailableError` says why and what is needed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ccied_p2p.errors import ConfigError

__all__ = [
    "DEFAULT_PERIOD_US",
    "CgroupUnavailableError",
    "Controller",
    "CpuQuota",
    "QuotaSpec",
    "current_quota",
    "find_controller",
    "parse_proc_cgroup",
    "quota_or_null",
]

DEFAULT_PERIOD_US = 10_000
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller cfs quota
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")
PREFIX = "ccied-p2p-"
_V1_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
_GROUP = re.compile(rf"^{re.escape(PREFIX)}(?P<owner>\d+)-\d+-\d+$")
_seq = itertools.count()


class CgroupUnavailableError(ConfigError):
    """No writable cgroup cpu controller on this machine, so no CPU quota; the message says what is needed."""


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    """A fraction of one core, enforced per ``period_us`` microseconds."""

    fraction: float
    period_us: int = DEFAULT_PERIOD_US

    def __post_init__(self) -> None:
        if not 1_000 <= self.period_us <= 1_000_000:
            raise ConfigError(f"cpu quota period must be 1000..1000000 us, got {self.period_us}")
        if not (self.fraction > 0 and self.fraction <= 1024):
            raise ConfigError(f"cpu quota must be a fraction of one core > 0, got {self.fraction}")
        if self.quota_us < MIN_QUOTA_US:
            raise ConfigError(
                f"cpu quota {self.fraction:g} of a {self.period_us} us period is {self.quota_us} us, below the "
                f"kernel's {MIN_QUOTA_US} us minimum; use a longer period or a larger fraction"
            )

    @property
    def quota_us(self) -> int:
        return round(self.fraction * self.period_us)


@dataclass(frozen=True, slots=True)
class Controller:
    """A mounted, writable cpu controller: cgroup ``version`` 1 or 2, and the hierarchy's root directory."""

    version: Literal[1, 2]
    root: Path


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def find_controller(root: Path = CGROUP_ROOT) -> Controller:
    """The cpu controller under ``root`` (v1 ``<root>/cpu`` first, then v2 at ``root`` or ``<root>/unified``)."""
    reasons: list[str] = []
    for name in _V1_DIRS:
        path = root / name
        if (path / "cpu.cfs_quota_us").exists() and (path / "cpu.cfs_period_us").exists():
            if _writable(path):
                return Controller(1, path)
            reasons.append(f"{path} is not writable (needs root or a delegated cgroup)")
    for path in (root, root / "unified"):
        controllers = path / "cgroup.controllers"
        if not controllers.exists():
            continue
        if "cpu" not in controllers.read_text().split():
            reasons.append(
                f"the cgroup v2 hierarchy at {path} has no cpu controller (it is bound to v1 or off)"
            )
        elif not _writable(path):
            reasons.append(f"{path} is not writable (needs root or a delegated cgroup)")
        else:
            return Controller(2, path)
    why = "; ".join(reasons) or f"no cgroup cpu controller is mounted under {root}"
    raise CgroupUnavailableError(
        f"cannot apply a CPU quota: {why}. Needed: a writable cgroup v1 cpu controller "
        f"({root}/cpu with cpu.cfs_quota_us) or cgroup v2 with the cpu controller ({root}/cgroup.controllers "
        "listing cpu), e.g. as root on Linux"
    )


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as {controller: group path}; the v2 entry is under the key ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def _group_of(controller: Controller, pid: int, proc: Path) -> Path:
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError as exc:
        raise ConfigError(f"no process {pid}: {exc}") from exc
    groups = parse_proc_cgroup(text)
    rel = groups.get("cpu" if controller.version == 1 else "", "/")
    return controller.root / rel.lstrip("/")


def current_quota(pid: int | None = None, *, root: Path = CGROUP_ROOT, proc: Path = PROC) -> QuotaSpec | None:
    """The CPU quota the cgroup of ``pid`` (default: this process) enforces, or None when unlimited."""
    controller = find_controller(root)
    group = _group_of(controller, os.getpid() if pid is None else pid, proc)
    try:
        if controller.version == 1:
            quota = int((group / "cpu.cfs_quota_us").read_text())
            period = int((group / "cpu.cfs_period_us").read_text())
        else:
            raw_quota, raw_period = (group / "cpu.max").read_text().split()
            if raw_quota == "max":
                return None
            quota, period = int(raw_quota), int(raw_period)
    except (OSError, ValueError):
        return None
    if quota <= 0:
        return None
    return QuotaSpec(quota / period, period)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmdir(path: Path, attempts: int = 50) -> None:
    # A process that just exited can keep its group busy for a moment while the kernel finishes with it.
    for i in range(attempts):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if i == attempts - 1:
                raise
            time.sleep(0.02)


def _sweep(controller: Controller) -> None:
    """Remove empty groups left by owners that died without cleaning up."""
    for path in controller.root.iterdir():
        match = _GROUP.match(path.name)
        if match is None or _alive(int(match["owner"])):
            continue
        with contextlib.suppress(OSError):
            if not (path / "cgroup.procs").read_text().strip():
                path.rmdir()


class CpuQuota:
    """``with CpuQuota(0.25, pid):`` -- ``pid`` (default: this process) runs on a quarter of one core inside.

    :meth:`apply` and :meth:`release` do the work (``async with`` works too; the file writes take
    microseconds). If ``pid`` is already in a group enforcing exactly this quota (a parent applied it right after
    spawning it), nothing is created and nothing removed. :meth:`release` moves a live process back to the group
    it came from and removes the group; it is idempotent. ``shares`` (cgroup v1 ``cpu.shares``, 1024 being one
    ordinary process; v2 ``cpu.weight`` scaled alike) raises the group's claim when other processes compete for
    the cores: a benchmark of a device that owns its core should not measure its neighbours.
    """

    def __init__(
        self,
        fraction: float,
        pid: int | None = None,
        *,
        period_us: int = DEFAULT_PERIOD_US,
        shares: int | None = None,
        root: Path = CGROUP_ROOT,
        proc: Path = PROC,
    ) -> None:
        self.spec = QuotaSpec(fraction, period_us)
        if shares is not None and not 2 <= shares <= 262_144:
            raise ConfigError(f"cpu shares must be 2..262144, got {shares}")
        self.shares = shares
        self.pid = os.getpid() if pid is None else pid
        self._root = root
        self._proc = proc
        self.group: Path | None = None  # the group this object created, until released
        self._origin: Path | None = None
        self._controller: Controller | None = None
        self.inherited = False  # the process already ran under this quota

    @property
    def fraction(self) -> float:
        return self.spec.fraction

    def apply(self) -> CpuQuota:
        """Create the group, set the quota, move the process in. Raises :class:`CgroupUnavailableError`."""
        if self.group is not None:
            return self
        controller = find_controller(self._root)
        origin = _group_of(controller, self.pid, self._proc)
        now = current_quota(self.pid, root=self._root, proc=self._proc)
        if now is not None and (now.quota_us, now.period_us) == (self.spec.quota_us, self.spec.period_us):
            self.inherited = True
            return self
        _sweep(controller)
        group = controller.root / f"{PREFIX}{os.getpid()}-{self.pid}-{next(_seq)}"
        if controller.version == 2:
            control = controller.root / "cgroup.subtree_control"
            if "cpu" not in control.read_text().split():
                control.write_text("+cpu")
        group.mkdir()
        try:
            if controller.version == 1:
                (group / "cpu.cfs_period_us").write_text(str(self.spec.period_us))
                (group / "cpu.cfs_quota_us").write_text(str(self.spec.quota_us))
                if self.shares is not None:
                    (group / "cpu.shares").write_text(str(self.shares))
            else:
                (group / "cpu.max").write_text(f"{self.spec.quota_us} {self.spec.period_us}")
                if self.shares is not None:
                    weight = min(max(round(self.shares * 100 / 1024), 1), 10_000)
                    (group / "cpu.weight").write_text(str(weight))
            (group / "cgroup.procs").write_text(str(self.pid))
        except OSError as exc:
            _rmdir(group)
            raise CgroupUnavailableError(
                f"cannot put process {self.pid} under a CPU quota in {group}: {exc}"
            ) from exc
        self.group, self._origin, self._controller = group, origin, controller
        return self

    def release(self) -> None:
        """Move the process (if alive) back where it was, and remove the group."""
        group, self.group = self.group, None
        if group is None:
            return
        assert self._origin is not None
        if _alive(self.pid):
            with contextlib.suppress(OSError):
                procs = (group / "cgroup.procs").read_text().split()
                if str(self.pid) in procs:
                    (self._origin / "cgroup.procs").write_text(str(self.pid))
        _rmdir(group)

    def __enter__(self) -> CpuQuota:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> CpuQuota:
        return self.apply()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"CpuQuota({self.spec.fraction:g}, pid={self.pid}, period_us={self.spec.period_us})"


def quota_or_null(fraction: float | None) -> contextlib.AbstractContextManager[object]:
    """A :class:`CpuQuota` on this process for ``fraction``, or a context that does nothing for None."""
    return contextlib.nullcontext() if fraction is None else CpuQuota(fraction)
