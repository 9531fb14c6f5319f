"""The one wait helper of the tests (:func:`ccied_p2p.testing.wait.until`): it sees a change when it happens."""

from __future__ import annotations

import asyncio

import pytest

from ccied_p2p.testing.wait import until


async def test_a_change_made_by_a_chain_of_callbacks_is_seen_at_once() -> None:
    loop = asyncio.get_running_loop()
    state = {"n": 0}

    def step() -> None:  # a state change several loop turns deep, then silence: no timer, no I/O
        state["n"] += 1
        if state["n"] < 5:
            loop.call_soon(step)

    loop.call_soon(step)
    took = await until(lambda: state["n"] == 5, 10.0, floor=10.0)  # no periodic check could have seen it
    assert took < 1.0


async def test_an_idle_loop_does_not_poll() -> None:
    loop = asyncio.get_running_loop()
    calls = 0
    done = asyncio.Event()
    loop.call_later(0.3, done.set)

    def cond() -> bool:
        nonlocal calls
        calls += 1
        return done.is_set()

    await until(cond, 10.0, floor=10.0)
    assert calls <= 3  # the first look, the timer's wake-up (and at most one more): a 20 ms poll makes 15


async def test_timeout_names_what_was_awaited() -> None:
    with pytest.raises(AssertionError, match=r"the sky falling not met within 0\.05 s"):
        await until(lambda: False, 0.05, "the sky falling")
