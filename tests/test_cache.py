from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccied_p2p import cache as cache_module
from ccied_p2p.cache import (
    AutoIndex,
    BruteForceIndex,
    FeatureReducer,
    GlobalAvgPool,
    GridPool,
    Hit,
    LFUPolicy,
    LRUPolicy,
    Miss,
    SemanticCache,
    SLRUPolicy,
    USearchIndex,
    entry_size,
    make_index,
    make_policy,
    make_reducer,
)
from ccied_p2p.codec.messages import CacheEntry, CacheSummary
from ccied_p2p.errors import ConfigError, LocalError

FP = "f" * 16
OTHER = "0" * 16


def _unit(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return unit


def _vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return _unit(np.random.default_rng(seed).random((n, d)).astype(np.float32) + 0.01)


# -------------------------------------------------------------------------------------------- reducers


def test_gap_reducer_pools_space_and_normalises() -> None:
    act = np.zeros((2, 4, 3, 3), np.float32)
    act[0, 1] = 2.0
    act[1, 2, 0, 0] = 9.0
    act[1, 3] = 1.0
    f = GlobalAvgPool()(act)
    assert f.shape == (2, 4)
    assert f.dtype == np.float32
    assert np.allclose(f[0], [0, 1, 0, 0])
    assert np.allclose(np.linalg.norm(f, axis=1), 1.0)
    assert np.allclose(f[1], _unit(np.array([0, 0, 1.0, 1.0])))


@pytest.mark.parametrize("reducer", [GlobalAvgPool(), GridPool(2)], ids=["gap", "grid"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_an_activation_that_is_not_finite_has_no_finite_key(reducer: FeatureReducer, bad: float) -> None:
    act = np.ones((3, 4, 4, 4), np.float32)
    act[1, 2, 3, 3] = bad  # one value in the middle row
    act[2] = 0.0  # a dead activation keeps its zero key
    f = reducer(act)
    assert np.all(np.isfinite(f[0]))
    assert np.allclose(np.linalg.norm(f[0]), 1.0)
    assert not np.any(np.isfinite(f[1]))
    assert np.array_equal(f[2], np.zeros_like(f[2]))


def test_dropping_pruned_channels_keeps_distances() -> None:
    rng = np.random.default_rng(0)
    act = rng.random((5, 8, 7, 7)).astype(np.float32)
    act[:, [0, 2, 3, 5, 6, 7]] = 0.0  # pruned channels are always zero
    full, live = GlobalAvgPool()(act), GlobalAvgPool(channels=[1, 4])(act)
    assert live.shape == (5, 2)
    assert np.allclose(full @ full.T, live @ live.T, atol=1e-6)


def test_grid_reducer_keeps_layout() -> None:
    left = np.zeros((1, 1, 4, 4), np.float32)
    left[..., :, :2] = 1
    right = np.zeros((1, 1, 4, 4), np.float32)
    right[..., :, 2:] = 1
    g = GridPool(2)
    assert g(left).shape == (1, 4)
    assert np.allclose(GlobalAvgPool()(left), GlobalAvgPool()(right))
    assert float(g(left)[0] @ g(right)[0]) == pytest.approx(0.0)


def test_reducer_configs_round_trip() -> None:
    for r in (GlobalAvgPool(), GlobalAvgPool([1, 3]), GridPool(3, [0])):
        again = make_reducer(r.config())
        assert type(again) is type(r)
        assert again.config() == r.config()
    with pytest.raises(ConfigError):
        make_reducer("nope")
    with pytest.raises(ConfigError):
        make_reducer({"name": "gap", "bogus": 1})


# --------------------------------------------------------------------------------------------- indexes


@given(n=st.integers(1, 300), k=st.integers(1, 8), seed=st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_brute_force_matches_usearch_nearest(n: int, k: int, seed: int) -> None:
    vecs = _vectors(n, 8, seed)
    brute, hnsw = BruteForceIndex(8), USearchIndex(8)
    for i, v in enumerate(vecs):
        brute.add(i + 1, v)
        hnsw.add(i + 1, v)
    q = _vectors(1, 8, seed + 1)[0]
    bk, bd = brute.search(q, k)
    uk, ud = hnsw.search(q, k)
    assert len(bk) == len(uk) == min(n, k)
    assert np.all(np.diff(bd) >= -1e-6)
    expected = 1 - vecs @ q
    assert bd[0] == pytest.approx(expected.min(), abs=1e-5)
    assert ud[0] == pytest.approx(expected.min(), abs=1e-5)  # small graphs are searched exactly


def test_brute_force_remove_swaps_rows_correctly() -> None:
    vecs = _vectors(50)
    idx = BruteForceIndex(16, initial=4)
    for i, v in enumerate(vecs):
        idx.add(i, v)
    for i in range(0, 50, 3):
        idx.remove(i)
    idx.remove(999)  # absent: no-op
    assert len(idx) == 50 - 17
    for i in range(50):
        keys, dist = idx.search(vecs[i], 1)
        if i % 3:
            assert keys[0] == i
            assert dist[0] == pytest.approx(0.0, abs=1e-6)
        else:
            assert keys[0] != i
    with pytest.raises(LocalError):
        idx.add(1, vecs[1])


def test_usearch_removal_is_real() -> None:
    vecs = _vectors(100)
    idx = USearchIndex(16)
    idx.add_many(np.arange(100, dtype=np.int64), vecs)
    for i in range(50):
        idx.remove(i)
    assert len(idx) == 50
    keys, _ = idx.search(vecs[3], 10)
    assert not set(keys.tolist()) & set(range(50))


def test_usearch_removals_are_batched_but_never_answer() -> None:
    vecs = _vectors(300)
    idx = USearchIndex(16, remove_batch=16)
    idx.add_many(np.arange(300, dtype=np.int64), vecs)
    for i in range(0, 300, 2):
        idx.remove(i)
        idx.remove(i)  # twice: still one removal
        assert len(idx) == 300 - (i // 2 + 1)
        keys, _ = idx.search(vecs[i], 3)
        assert i not in keys.tolist()
        assert len(keys) == 3
    assert len(idx._dead) < 16
    assert not idx.contains(0)
    assert idx.contains(1)
    idx.add(1000, vecs[0])
    assert idx.search(vecs[0], 1)[0].tolist() == [1000]
    blob = idx.dump()
    assert blob is not None
    assert not idx._dead  # flushed before saving


def test_auto_index_moves_to_usearch_gradually_and_agrees() -> None:
    vecs = _vectors(400)
    auto = AutoIndex(16, crossover=200, step=2)
    brute = BruteForceIndex(16)
    for i, v in enumerate(vecs):
        auto.add(i, v)
        brute.add(i, v)
        if i == 50:
            auto.remove(10)
            brute.remove(10)
        assert auto.backend == ("numpy" if len(brute) < 200 else "usearch")
        assert len(auto) == len(brute)
    for q in _vectors(20, seed=9):
        assert auto.search(q, 1)[0][0] == brute.search(q, 1)[0][0]
    assert auto.dump() is not None


def test_auto_crossover_shrinks_with_width() -> None:
    assert cache_module.auto_crossover(16) == 10_000
    assert cache_module.auto_crossover(64) == 5_000
    assert cache_module.auto_crossover(256) == 2_500
    assert AutoIndex(64).crossover == 5_000


def test_auto_index_stays_brute_force_when_capacity_is_small() -> None:
    auto = AutoIndex(16, capacity=150, crossover=200)
    for i, v in enumerate(_vectors(300)):
        auto.add(i, v)
    assert auto.backend == "numpy"
    assert auto.dump() is None


def test_make_index_and_policy_names() -> None:
    assert isinstance(make_index("numpy")(4, 10), BruteForceIndex)
    assert isinstance(make_index("usearch")(4, 10), USearchIndex)
    assert isinstance(make_index("auto")(4, 10), AutoIndex)
    with pytest.raises(ConfigError):
        make_index("faiss")
    assert isinstance(make_policy("lru"), LRUPolicy)
    with pytest.raises(ConfigError):
        make_policy("random")


# -------------------------------------------------------------------------------------------- eviction


def test_lru_evicts_least_recently_used() -> None:
    p = LRUPolicy()
    for k in (1, 2, 3):
        p.add(k)
    p.touch(1)
    assert p.victim() == 2
    p.discard(2)
    assert p.victim() == 3


def test_lfu_evicts_least_used_then_oldest() -> None:
    p = LFUPolicy()
    for k in (1, 2, 3):
        p.add(k)
    p.touch(1)
    p.touch(1)
    p.touch(2)
    assert p.victim() == 3
    p.discard(3)
    assert p.victim() == 2
    for _ in range(500):  # the lazy heap stays bounded
        p.touch(2)
    assert len(p._heap) < 200
    assert p.victim() == 1


def test_slru_protects_entries_that_answered() -> None:
    p = SLRUPolicy(protected=0.5)
    for k in range(1, 7):
        p.add(k)
    p.touch(1)
    p.touch(2)
    for k in range(7, 20):  # a burst of one-off inputs only displaces one-offs
        while len(p) >= 6:
            p.discard(p.victim())
        p.add(k)
    assert 1 in p._protected
    assert 2 in p._protected


def test_slru_demotes_old_favourites() -> None:
    p = SLRUPolicy(protected=0.5)
    for k in range(1, 5):
        p.add(k)
    for k in range(1, 5):
        p.touch(k)
    assert len(p._protected) == 2  # overflow demoted to probation
    assert p.victim() in (1, 2)


# ------------------------------------------------------------------------------------- lookup / insert


def test_empty_cache_misses() -> None:
    c = SemanticCache(b"n")
    r = c.lookup(_vectors(1)[0], FP, 0.0)
    assert isinstance(r, Miss)
    assert r.distance == float("inf")
    assert c.stats().misses == 1


def test_hit_needs_threshold_and_vote() -> None:
    v = _vectors(3)
    c = SemanticCache(b"n", threshold=0.01, k=3, votes=2, index="numpy")
    c.insert(v[0], 4, 0.9, FP, now=1.0)
    assert isinstance(c.lookup(v[0], FP, 2.0), Miss)  # one voter, two needed
    c.insert(_unit(v[0] + 0.001), 4, 0.7, FP, now=1.0)
    hit = c.lookup(v[0], FP, 2.0)
    assert isinstance(hit, Hit)
    assert (hit.label, hit.votes) == (4, 2)
    assert hit.confidence == pytest.approx(0.8)
    assert not hit.audit
    assert hit.distance == pytest.approx(0.0, abs=1e-6)
    far = _unit(np.r_[np.zeros(15), 1.0])
    miss = c.lookup(far, FP, 2.0)
    assert isinstance(miss, Miss)
    assert miss.distance > 0.01


def test_any_dissent_misses() -> None:
    v = _vectors(1)[0]
    c = SemanticCache(b"n", threshold=0.01, k=3, votes=1, index="numpy")
    c.insert(v, 1, 0.9, FP, 0.0)
    assert isinstance(c.lookup(v, FP, 0.0), Hit)
    c.insert(_unit(v + 1e-4), 2, 0.9, FP, 0.0)
    c.insert(_unit(v + 2e-4), 2, 0.9, FP, 0.0)
    r = c.lookup(v, FP, 0.0)
    assert isinstance(r, Miss)  # two say 2, one says 1: a decision boundary
    assert r.votes == 3
    far = SemanticCache(b"n", threshold=0.01, k=1, votes=1, index="numpy")
    far.insert(v, 1, 0.9, FP, 0.0)
    far.insert(_unit(np.r_[np.ones(8), np.zeros(8)]), 2, 0.9, FP, 0.0)
    assert isinstance(far.lookup(v, FP, 0.0), Hit)  # a neighbour beyond the threshold has no say


def test_audits_follow_the_schedule_and_dissent_stops_answers() -> None:
    v = _vectors(1)[0]
    c = SemanticCache(b"n", threshold=0.01, k=3, votes=1, audit_from=4, index="numpy")
    c.insert(v, 1, 0.9, FP, 0.0)
    audited = []
    for i in range(1, 17):
        r = c.lookup(v, FP, float(i))
        assert isinstance(r, Hit)
        if r.audit:
            audited.append(i)
            assert c.verify(v, r, 1, 0.9, FP, float(i))  # the model agrees: nothing changes
    assert audited == [4, 8, 16]
    assert c.stats().audits == 3
    assert c.stats().hits == 13
    assert len(c) == 1
    for i in range(17, 40):
        r = c.lookup(v, FP, float(i))
        if isinstance(r, Hit) and r.audit:
            assert not c.verify(v, r, 7, 0.3, FP, float(i))  # the model disagrees, even unsure
            break
    assert c.stats().audit_failures == 1
    assert len(c) == 2
    assert isinstance(c.lookup(v, FP, 50.0), Miss)


def test_a_failed_audit_disputes_the_voters_even_with_k_1() -> None:
    v = _vectors(2)
    other = _unit(v[0] + 1e-3)
    c = SemanticCache(b"n", threshold=0.01, k=1, votes=1, audit_from=1, index="numpy")
    c.insert(v[0], 1, 0.9, FP, 0.0)
    c.insert(v[1], 2, 0.9, FP, 0.0)
    r = c.lookup(v[0], FP, 1.0)
    assert isinstance(r, Hit)
    assert r.audit
    assert len(r.keys) == 1
    assert not c.verify(other, r, 3, 0.2, FP, 1.0)
    # The disputed entry never answers again, even as the only voter; the model's answer does.
    assert isinstance(c.lookup(v[0], FP, 2.0), Miss)
    r = c.lookup(other, FP, 2.0)
    assert isinstance(r, Hit)
    assert r.label == 3
    assert [e.label for e in c.entries_since({}, 10**9)] == [2, 3]  # disputed entries stay home


def test_audits_can_be_disabled() -> None:
    v = _vectors(1)[0]
    c = SemanticCache(b"n", threshold=0.01, k=1, votes=1, audit_from=0, index="numpy")
    c.insert(v, 1, 0.9, FP, 0.0)
    assert not any(c.lookup(v, FP, 0.0).audit for _ in range(100))  # type: ignore[union-attr]
    with pytest.raises(ConfigError):
        SemanticCache(b"n", audit_from=-1)


def test_other_fingerprint_never_answers() -> None:
    v = _vectors(1)[0]
    c = SemanticCache(b"n", threshold=0.5, k=1, votes=1)
    c.insert(v, 3, 0.9, OTHER, 0.0)
    assert isinstance(c.lookup(v, FP, 0.0), Miss)
    c.insert(v, 5, 0.9, FP, 0.0)
    r = c.lookup(v, FP, 0.0)
    assert isinstance(r, Hit)
    assert r.label == 5
    assert sorted(c.fingerprints()) == sorted([FP, OTHER])


def test_activation_in_feature_out() -> None:
    act = np.random.default_rng(0).random((1, 8, 7, 7)).astype(np.float32)
    c = SemanticCache(b"n", threshold=1e-4, k=1, votes=1)
    c.insert(act, 2, 0.9, FP, 0.0)
    r = c.lookup(GlobalAvgPool()(act)[0], FP, 0.0)
    assert isinstance(r, Hit)
    assert r.label == 2
    with pytest.raises(LocalError):
        c.lookup(np.zeros((2, 8, 7, 7), np.float32) + 1, FP, 0.0)  # a batch, not one input
    with pytest.raises(LocalError):
        c.lookup(np.ones(5, np.float32), FP, 0.0)  # wrong width for this model


def test_insert_refuses_bad_values() -> None:
    c = SemanticCache(b"n", min_confidence=0.5)
    v = _vectors(1)[0]
    assert c.insert(v, 1, 0.4, FP, 0.0) is None  # below the gate: not cached
    with pytest.raises(LocalError):
        c.insert(v, -1, 0.9, FP, 0.0)
    with pytest.raises(LocalError):
        c.insert(v, 1, 1.5, FP, 0.0)
    with pytest.raises(LocalError):
        c.insert(np.zeros(16, np.float32), 1, 0.9, FP, 0.0)
    with pytest.raises(LocalError):
        c.insert(np.full(16, np.nan, np.float32), 1, 0.9, FP, 0.0)
    assert len(c) == 0


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"k": 0}, {"k": 2, "votes": 3}, {"window": 0}])
def test_bad_settings(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        SemanticCache(b"n", **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ capacity/eviction


@pytest.mark.parametrize("index", ["numpy", "usearch", "auto"])
@pytest.mark.parametrize("policy", ["lru", "lfu", "slru"])
def test_capacity_is_kept_and_evicted_entries_never_answer(index: str, policy: str) -> None:
    vecs = _vectors(60, seed=3)
    c = SemanticCache(b"n", capacity=20, threshold=1e-4, k=1, votes=1, index=index, eviction=policy)
    for i, v in enumerate(vecs):
        c.insert(v, i % 10, 0.9, FP, float(i))
        assert len(c) <= 20
    assert c.stats().evictions == 40
    present = [i for i, v in enumerate(vecs) if isinstance(c.lookup(v, FP, 100.0), Hit)]
    assert len(present) == 20
    if policy == "lru":
        assert present == list(range(40, 60))


def test_lru_keeps_what_keeps_hitting() -> None:
    vecs = _vectors(30, seed=4)
    c = SemanticCache(b"n", capacity=10, threshold=1e-4, k=1, votes=1, eviction="lru", index="numpy")
    c.insert(vecs[0], 0, 0.9, FP, 0.0)
    for i in range(1, 30):
        assert isinstance(c.lookup(vecs[0], FP, float(i)), Hit)
        c.insert(vecs[i], 1, 0.9, FP, float(i))
    assert isinstance(c.lookup(vecs[0], FP, 99.0), Hit)


def test_insert_many_is_insert_in_bulk() -> None:
    vecs = _vectors(300, seed=8)
    labels = np.arange(300) % 7
    confs = np.where(np.arange(300) % 10 == 0, 0.2, 0.9)
    bulk = SemanticCache(b"n", capacity=250, threshold=1e-4, k=1, votes=1, min_confidence=0.5, eviction="lru")
    assert bulk.insert_many(vecs, labels, confs, FP, 0.0) == 250  # the last 250 confident ones kept
    assert len(bulk) == 250
    kept = [i for i in range(300) if confs[i] >= 0.5][-250:]
    for i in kept[::25]:
        r = bulk.lookup(vecs[i], FP, 1.0)
        assert isinstance(r, Hit)
        assert r.label == labels[i]
    big = SemanticCache(b"n", threshold=1e-4, k=1, votes=1, index=lambda d, c: AutoIndex(d, c, crossover=100))
    big.insert_many(vecs, labels, np.full(300, 0.9), FP, 0.0)
    assert big.index_backend(FP) == "usearch"
    assert [e.version for e in big.entries_since({}, 10**9)][:3] == [1, 2, 3]
    with pytest.raises(LocalError):
        big.insert_many(vecs, labels[:5], confs, FP, 0.0)


# -------------------------------------------------------------------------------- summary / anti-entropy


def test_summary_counts_digest_and_hit_rate() -> None:
    vecs = _vectors(10)
    a = SemanticCache(b"a", threshold=1e-4, k=1, votes=1, window=4)
    for i, v in enumerate(vecs):
        a.insert(v, i % 3, 0.9, FP, 0.0)
    a.insert(vecs[0], 7, 0.9, OTHER, 0.0)
    s = a.summary(FP)
    assert isinstance(s, CacheSummary)
    assert s.entries == 10
    assert s.label_counts == {0: 4, 1: 3, 2: 3}
    assert a.summary().entries == 11
    assert len(s.digest) == 8
    for v in vecs[:3]:
        a.lookup(v, FP, 1.0)
    a.lookup(_unit(np.r_[np.ones(8), np.zeros(8)]), FP, 1.0)
    assert a.summary().hit_rate == pytest.approx(0.75)
    for _ in range(4):
        a.lookup(_unit(np.r_[np.ones(8), np.zeros(8)]), FP, 1.0)
    assert a.summary().hit_rate == 0.0  # a window of recent lookups, not all time


def test_entries_since_and_merge_converge() -> None:
    vecs = _vectors(40, seed=5)
    a, b = SemanticCache(b"a" * 16), SemanticCache(b"b" * 16)
    for i, v in enumerate(vecs[:25]):
        a.insert(v, i % 10, 0.8, FP, float(i))
    for i, v in enumerate(vecs[25:]):
        b.insert(v, i % 10, 0.8, FP, float(i))
    assert a.summary(FP).digest != b.summary(FP).digest
    # b pulls from a in two small rounds, then a pulls from b.
    budget = 10 * entry_size(16, FP, b"a" * 16)
    first = a.entries_since(b.known(), budget)
    assert len(first) == 10
    assert [e.version for e in first] == list(range(1, 11))
    assert b.merge(first, FP, 50.0).accepted == 10
    rest = a.entries_since(b.known(), 10**9)
    assert [e.version for e in rest] == list(range(11, 26))
    b.merge(rest, FP, 50.0)
    a.merge(b.entries_since(a.known(), 10**9), FP, 50.0)
    assert a.summary(FP).digest == b.summary(FP).digest
    assert a.summary(FP).label_counts == b.summary(FP).label_counts
    assert a.entries_since(b.known(), 10**9) == []
    again = b.merge(a.entries_since({}, 10**9), FP, 60.0)
    assert again.accepted == 0
    assert again.duplicates == 40
    e = next(x for x in a.entries_since({}, 10**9) if x.origin == b"b" * 16)
    assert isinstance(e, CacheEntry)
    assert e.fingerprint == FP
    assert e.created < 50.0


def test_merge_refuses_other_fingerprints_and_bad_entries() -> None:
    c = SemanticCache(b"c" * 16, threshold=0.5, k=1, votes=1)
    v = _vectors(1)[0]
    good = CacheEntry(v, 1, 0.9, FP, b"x" * 16, 1, 0.0)
    bad = [
        CacheEntry(v, 1, 0.9, OTHER, b"x" * 16, 2, 0.0),
        CacheEntry(v.astype(np.float64), 1, 0.9, FP, b"x" * 16, 3, 0.0),
        CacheEntry(np.full(16, np.inf, np.float32), 1, 0.9, FP, b"x" * 16, 4, 0.0),
        CacheEntry(np.zeros(16, np.float32), 1, 0.9, FP, b"x" * 16, 5, 0.0),
        CacheEntry(v[:8], 1, 0.9, FP, b"x" * 16, 6, 0.0),
        CacheEntry(v, -2, 0.9, FP, b"x" * 16, 7, 0.0),
        CacheEntry(v, 1, 1.9, FP, b"x" * 16, 8, 0.0),
        CacheEntry(v, 1, 0.9, FP, b"x" * 16, 0, 0.0),
    ]
    r = c.merge([good, *bad], FP, 1.0)
    assert (r.accepted, r.wrong_fingerprint, r.invalid) == (1, 1, 7)
    assert isinstance(c.lookup(v, OTHER, 1.0), Miss)
    assert c.stats().rejected == 8
    assert c.stats().merged == 1
    assert c.known() == {b"x" * 16: 1}


def test_clear_keeps_counters() -> None:
    c = SemanticCache(b"n")
    for i, v in enumerate(_vectors(5)):
        c.insert(v, i, 0.9, FP, 0.0)
    c.clear()
    assert len(c) == 0
    assert c.stats().inserts == 5
    assert c.summary().entries == 0
    c.insert(_vectors(1)[0], 1, 0.9, FP, 0.0)
    assert c.known()[b"n"] == 6


def test_radius_shrinks_the_reach_of_unsure_entries() -> None:
    from ccied_p2p.cache import entry_radius

    v = _vectors(1)[0]
    near = _unit(v + 0.1 * _unit(np.r_[1.0, np.zeros(15)]))
    d = 1.0 - float(near @ v)
    assert 0.0 < d < 0.01
    sure = SemanticCache(b"n", threshold=0.01, k=1, votes=1, radius=(0.7, 0.97), index="numpy")
    sure.insert(v, 3, 0.99, FP, 0.0)  # from 0.97: the whole threshold
    assert isinstance(sure.lookup(near, FP, 1.0), Hit)
    unsure = SemanticCache(b"n", threshold=0.01, k=1, votes=1, radius=(0.7, 0.97), index="numpy")
    unsure.insert(v, 3, 0.72, FP, 0.0)  # (0.72 - 0.7) / 0.27 of it: under the distance
    assert 0.01 * entry_radius(np.array([0.72]), (0.7, 0.97))[0] < d
    assert isinstance(unsure.lookup(near, FP, 1.0), Miss)
    assert isinstance(unsure.lookup(v, FP, 1.0), Hit)  # but it still answers its own input
    np.testing.assert_allclose(
        entry_radius(np.array([0.5, 0.8, 0.97, 1.0]), (0.7, 0.97)), [0.05, 0.1 / 0.27, 1, 1]
    )
    np.testing.assert_allclose(entry_radius(np.array([0.1, 0.9]), (0.0, 0.0)), [1, 1])  # the default
    for bad in ((0.9, 0.8), (-0.1, 0.5), (0.5, 1.5), (0.0, -1.0)):
        with pytest.raises(ConfigError):
            SemanticCache(b"n", radius=bad)
