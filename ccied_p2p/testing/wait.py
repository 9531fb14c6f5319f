"""``await until(cond)``: wait for a condition that has no event of its own, without a polling period.

Tests wait on state that other tasks, sockets or processes change (a membership view, a metric, a log line).
Instead of sleeping a fixed 20 ms between checks, :func:`until` re-checks ``cond`` each time the event loop has
worked off everything that was ready after some activity (I/O, a timer, a wake-up from another thread): at the
moment a state change made by a callback becomes visible, and never while the loop idles. A check at least every
``floor`` seconds covers changes made by other threads or processes that do not wake the loop.

The hook wraps the ``select`` of a selector event loop (the default on Unix, the one pytest-asyncio makes); on
other loops :func:`until` falls back to checking every ``floor`` seconds.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["until"]


class _Idle:
    """Wakes waiters when the loop is about to block after activity: all ready callbacks have run."""

    def __init__(self, selector: Any) -> None:
        self.armed: set[asyncio.Future[None]] = set()  # wait for activity
        self.pending: set[asyncio.Future[None]] = set()  # activity seen: wake at the next idle point
        inner = selector.select

        def select(timeout: float | None = None) -> Any:
            if self.pending and timeout != 0:  # about to block: everything ready has run, let waiters look
                for fut in self.pending:
                    if not fut.done():
                        fut.set_result(None)
                self.pending.clear()
                timeout = 0
            events = inner(timeout)
            self.pending |= self.armed
            self.armed.clear()
            return events

        selector.select = select


_HOOKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Idle | None] = weakref.WeakKeyDictionary()


def _idle(loop: asyncio.AbstractEventLoop) -> _Idle | None:
    if loop not in _HOOKS:
        selector = getattr(loop, "_selector", None)
        _HOOKS[loop] = _Idle(selector) if selector is not None and hasattr(selector, "select") else None
    return _HOOKS[loop]


async def until(
    cond: Callable[[], object], timeout: float = 5.0, what: str = "condition", *, floor: float = 0.1
) -> float:
    """Return the seconds until ``cond()`` was truthy; raise AssertionError saying ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    hook = _idle(loop)
    start = time.monotonic()
    deadline = start + timeout
    while not cond():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what} not met within {timeout} s")
        fut: asyncio.Future[None] = loop.create_future()
        if hook is not None:
            hook.armed.add(fut)
        try:
            await asyncio.wait_for(fut, min(left, floor))
        except TimeoutError:
            pass
        finally:
            if hook is not None:
                hook.armed.discard(fut)
                hook.pending.discard(fut)
    return time.monotonic() - start
