"""CPU quotas through the cgroup cpu controller: a weak device is really slower; groups never outlive it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ccied_p2p.errors import ConfigError, LocalError
from ccied_p2p.runtime.quota import (
    PREFIX,
    CgroupUnavailableError,
    CpuQuota,
    QuotaSpec,
    current_quota,
    find_controller,
    parse_proc_cgroup,
)
from ccied_p2p.testing.cluster import LocalCluster


def _unavailable() -> str | None:
    try:
        find_controller()
    except CgroupUnavailableError as exc:
        return str(exc)
    return None


needs_cgroup = pytest.mark.skipif(_unavailable() is not None, reason=f"no CPU quota here: {_unavailable()}")

# A fixed torch workload on one thread; prints wall and CPU seconds once told to start (so the quota is in place).
WORKLOAD = """
import sys, time, torch
torch.set_num_threads(1)
a = torch.randn(192, 192)
for _ in range(20): a @ a
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
t, c = time.perf_counter(), time.process_time()
for _ in range(300): a @ a
print(time.perf_counter() - t, time.process_time() - c)
"""


# ---------------------------------------------------------------- pure parsing and validation


def test_no_controller_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CgroupUnavailableError, match="no cgroup cpu controller is mounted") as info:
        find_controller(tmp_path)
    assert isinstance(info.value, ConfigError)
    assert "cpu.cfs_quota_us" in str(info.value)  # says what is needed


def test_v2_without_the_cpu_controller_says_so(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    with pytest.raises(CgroupUnavailableError, match="has no cpu controller"):
        find_controller(tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert find_controller(tmp_path).version == 2


def test_v1_controller_is_found_before_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("cpu\n")
    found = find_controller(tmp_path)
    assert (found.version, found.root) == (1, v1)


def test_proc_cgroup_parsing() -> None:
    text = "4:memory:/a/b\n1:cpu,cpuacct:/ccied-p2p-1-2-0\n0::/user.slice\nbroken\n"
    assert parse_proc_cgroup(text) == {
        "memory": "/a/b",
        "cpu": "/ccied-p2p-1-2-0",
        "cpuacct": "/ccied-p2p-1-2-0",
        "": "/user.slice",
    }


def test_quota_spec_validation() -> None:
    assert QuotaSpec(0.25).quota_us == 2500
    assert QuotaSpec(0.1).quota_us == 1000  # the kernel's minimum at a 10 ms period
    with pytest.raises(ConfigError, match="minimum"):
        QuotaSpec(0.05)
    assert QuotaSpec(0.05, period_us=100_000).quota_us == 5000
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError):
            QuotaSpec(bad)
    with pytest.raises(ConfigError, match="period"):
        QuotaSpec(0.5, period_us=10)


def test_cluster_refuses_a_quota_on_an_in_process_node() -> None:
    with pytest.raises(ConfigError, match="subprocess nodes only"):
        LocalCluster(2, mode=["subprocess", "inprocess"], cpu_quota=0.25)
    with pytest.raises(ConfigError, match="one value per node"):
        LocalCluster(2, mode="subprocess", cpu_quota=[0.25])
    LocalCluster(2, mode=["subprocess", "inprocess"], cpu_quota=[0.25, None])  # only the subprocess: fine


# ---------------------------------------------------------------- the real controller


def _our_groups() -> list[str]:
    root = find_controller().root
    return [p.name for p in root.iterdir() if p.name.startswith(f"{PREFIX}{os.getpid()}-")]


async def _run_workload(fraction: float) -> tuple[float, float, Path | None]:
    """Run WORKLOAD in a child on ``fraction`` of a core (1.0: unthrottled, the workload has one thread).

    The group claims a core as if the device owned it (high cpu.shares), so that neighbours on a busy machine do
    not slow the unthrottled run as much as the quota slows the other.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKLOAD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    quota = CpuQuota(fraction, proc.pid, shares=65_536)
    try:
        assert (await proc.stdout.readline()).strip() == b"ready"
        quota.apply()
        assert current_quota(proc.pid) == QuotaSpec(fraction)
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        wall, cpu = map(float, (await proc.stdout.readline()).split())
        await proc.wait()
        group = quota.group
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        quota.release()
    return wall, cpu, group


@needs_cgroup
async def test_a_quotad_process_is_measurably_slower_and_its_group_is_removed() -> None:
    free_wall, free_cpu, _ = await _run_workload(1.0)
    wall, cpu, group = await _run_workload(0.25)
    share = cpu / wall
    print(
        f"free: {free_wall * 1e3:.0f} ms wall, {free_cpu * 1e3:.0f} ms CPU; 25% quota: {wall * 1e3:.0f} ms wall "
        f"({wall / free_wall:.1f}x), {share:.2f} of a core"
    )
    # The kernel's guarantee, whatever else runs: at most a quarter of a core (and a period or two of slack).
    assert share <= 0.25 * 1.5
    # Loose bounds against the same work unthrottled (ideal: 4x).
    assert wall / free_wall > 2.0
    assert wall / free_cpu > 2.0
    assert group is not None
    assert not group.exists()
    assert _our_groups() == []


@needs_cgroup
def test_this_process_under_a_quota_and_back() -> None:
    before = current_quota()
    with CpuQuota(0.5) as quota:
        assert quota.group is not None
        assert quota.group.is_dir()
        assert current_quota() == QuotaSpec(0.5)
        assert str(os.getpid()) in (quota.group / "cgroup.procs").read_text().split()
        t = time.process_time()
        while time.process_time() - t < 0.05:  # some work inside the group
            pass
    assert current_quota() == before
    assert _our_groups() == []
    quota.release()  # idempotent


@needs_cgroup
def test_a_child_spawned_under_its_quota_creates_no_group_of_its_own() -> None:
    with CpuQuota(0.5) as outer:
        inner = CpuQuota(0.5).apply()  # what `serve --cpu-quota` does inside a quota'd LocalCluster child
        assert inner.inherited
        assert inner.group is None
        inner.release()
        assert outer.group is not None
        assert outer.group.is_dir()
    assert _our_groups() == []


@needs_cgroup
async def test_stale_groups_of_dead_owners_are_swept() -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()  # a pid that no longer runs: the "owner" that died without cleaning up
    stale = find_controller().root / f"{PREFIX}{proc.pid}-{proc.pid}-0"
    stale.mkdir()
    try:
        with CpuQuota(0.5):
            assert not stale.exists()
    finally:
        if stale.exists():
            stale.rmdir()


@needs_cgroup
@pytest.mark.slow
@pytest.mark.network  # the `serve` subprocesses load the runtime weights (trained once before the first test)
async def test_cluster_subprocess_quota_is_reported_in_status() -> None:
    def status(address: str) -> dict[str, object]:
        with urllib.request.urlopen(f"http://{address}/status", timeout=10) as r:
            doc: dict[str, object] = json.loads(r.read())["node"]
            return doc

    async with LocalCluster(2, mode="subprocess", cpu_quota=[0.5, None]) as cluster:
        quota = cluster.nodes[0].quota
        assert quota is not None
        assert quota.group is not None
        assert current_quota(cluster.nodes[0].pid) == QuotaSpec(0.5)
        assert current_quota(cluster.nodes[1].pid) is None
        slow, fast = await asyncio.gather(
            asyncio.to_thread(status, cluster.nodes[0].address),
            asyncio.to_thread(status, cluster.nodes[1].address),
        )
        assert slow["cpu_quota"] == 0.5
        assert fast["cpu_quota"] is None
        group = quota.group
    assert not group.exists()
    assert _our_groups() == []


def test_cpu_quota_is_validated_in_node_config() -> None:
    from ccied_p2p.runtime.node import NodeConfig

    with pytest.raises(LocalError, match="cpu_quota"):
        NodeConfig(secret="x" * 12, cpu_quota=0.0).validate()
    NodeConfig(secret="x" * 12, cpu_quota=0.25).validate()
