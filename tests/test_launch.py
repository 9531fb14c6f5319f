"""The serve launcher demos and benches use: a failed or timed-out start leaves no process behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ccied_p2p.launch import start_serve


def _children() -> list[int]:
    """Live (not zombie) processes whose parent is this test process and that run ``ccied_p2p.cli``."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == me and state != "Z" and b"ccied_p2p.cli" in cmdline:
            found.append(int(entry.name))
    return found


async def test_a_start_that_times_out_kills_the_process() -> None:
    assert _children() == []
    # Importing the command alone takes longer than 50 ms: the timeout fires while the child is still starting.
    with pytest.raises(TimeoutError):
        await start_serve(
            ["serve", "--model", "lenet", "--insecure", "--no-mdns"], dict(os.environ), timeout=0.05
        )
    assert _children() == []


async def test_a_process_that_exits_before_ready_is_reported_with_its_exit_code() -> None:
    with pytest.raises(RuntimeError, match="exited with 2 before it was ready"):
        await start_serve(["serve", "--no-such-option"], dict(os.environ), timeout=120)
    assert _children() == []
