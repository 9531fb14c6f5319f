"""The member state machine: the table agrees with its precedence rule, and merging is order-free."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from ccied_p2p.codec.messages import MemberState
from ccied_p2p.gossip.states import TRANSITIONS, Event, classify, merge, rank, transition

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
LOCAL = {Event.PROBE_ACK, Event.PROBE_TIMEOUT, Event.SUSPECT_TIMEOUT}
HELD: list[MemberState | None] = [None, *MemberState]


def test_local_events() -> None:
    assert transition(ALIVE, Event.PROBE_TIMEOUT) is SUSPECT
    assert transition(ALIVE, Event.PROBE_ACK) is ALIVE
    assert transition(SUSPECT, Event.SUSPECT_TIMEOUT) is DEAD
    # an ack does not clear a suspicion: only the member's own refutation does
    assert transition(SUSPECT, Event.PROBE_ACK) is None
    assert transition(SUSPECT, Event.PROBE_TIMEOUT) is None
    for event in LOCAL:
        assert transition(None, event) is None
        assert transition(DEAD, event) is None
        assert transition(LEFT, event) is None


def test_classify() -> None:
    assert classify(ALIVE, 3, None) is Event.ALIVE_NEWER
    assert classify(ALIVE, 3, 2) is Event.ALIVE_NEWER
    assert classify(SUSPECT, 3, 3) is Event.SUSPECT_SAME
    assert classify(DEAD, 1, 3) is Event.DEAD_OLDER
    assert classify(LEFT, 0, 5) is Event.LEFT_OLDER


def test_table_mentions_only_known_states_and_events() -> None:
    for (held, event), new in TRANSITIONS.items():
        assert held is None or isinstance(held, MemberState)
        assert isinstance(event, Event)
        assert isinstance(new, MemberState)


def test_heard_news_follows_rank_exactly() -> None:
    """For every held belief and every piece of news: accepted iff it ranks higher, and taken whole."""
    for held_state, held_inc, heard_state, heard_inc in itertools.product(
        HELD, range(3), MemberState, range(3)
    ):
        held = None if held_state is None else (held_state, held_inc)
        event = classify(heard_state, heard_inc, None if held is None else held_inc)
        new = transition(held_state, event)
        higher = held is None or rank((heard_state, heard_inc)) > rank(held)
        if higher:
            assert new is heard_state, (held, heard_state, heard_inc)
            assert merge(held, (heard_state, heard_inc)) == (heard_state, heard_inc)
        else:
            assert new is None or (new, heard_inc) == held, (held, heard_state, heard_inc)
            assert merge(held, (heard_state, heard_inc)) is None


def test_precedence_examples() -> None:
    assert merge((ALIVE, 2), (SUSPECT, 2)) == (SUSPECT, 2)  # equal incarnation: worse state wins
    assert merge((SUSPECT, 2), (ALIVE, 2)) is None
    assert merge((SUSPECT, 2), (ALIVE, 3)) == (ALIVE, 3)  # refutation
    assert merge((DEAD, 2), (ALIVE, 3)) == (ALIVE, 3)  # a wrongly declared death is refuted too
    assert merge((ALIVE, 5), (DEAD, 4)) is None  # stale verdicts are ignored
    assert merge((LEFT, 1), (ALIVE, 9)) is None  # left is final
    assert merge((ALIVE, 5), (LEFT, 1)) == (LEFT, 1)
    assert merge(None, (DEAD, 0)) == (DEAD, 0)  # a tombstone


beliefs = st.tuples(st.sampled_from(list(MemberState)), st.integers(min_value=0, max_value=4))


@given(st.lists(beliefs, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_merging_is_order_free(news: list[tuple[MemberState, int]], rnd: object) -> None:
    """Any delivery order ends in the same belief: the highest-ranked one (so views converge)."""

    def fold(items: list[tuple[MemberState, int]]) -> tuple[MemberState, int] | None:
        held: tuple[MemberState, int] | None = None
        for item in items:
            new = merge(held, item)
            if new is not None:
                assert held is None or rank(new) > rank(held)
                held = new
        return held

    shuffled = list(news)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert fold(news) == fold(shuffled) == max(news, key=rank)


@given(st.lists(st.sampled_from(sorted(LOCAL)), max_size=10), beliefs)
def test_local_events_only_move_up(events: list[Event], start: tuple[MemberState, int]) -> None:
    state, inc = start
    for event in events:
        new = transition(state, event)
        if new is not None:
            assert rank((new, inc)) >= rank((state, inc))
            state = new
