"""The suite's own configuration: a test that times out ends the run instead of hanging on its threads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HANGING = """
import asyncio
import time

import pytest


@pytest.mark.timeout(2)
async def test_waits_on_a_thread_past_its_timeout() -> None:
    await asyncio.to_thread(time.sleep, 600)
"""


def test_a_timed_out_test_with_a_busy_executor_thread_ends_the_run(tmp_path: Path) -> None:
    """With pytest-timeout's signal method the event loop's shutdown joins the thread: 10 minutes here (and
    half an hour once, training). The configured thread method dumps the stacks and ends the process."""
    test = tmp_path / "test_hang.py"
    test.write_text(HANGING)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), str(test)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode != 0
    assert "Timeout" in run.stdout + run.stderr
