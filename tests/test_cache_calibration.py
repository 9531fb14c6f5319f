"""Calibration honesty: what calibrate() promises on one stream must hold when serving another."""

from __future__ import annotations

import numpy as np
import pytest

from ccied_p2p.cache import (
    Calibration,
    Hit,
    SemanticCache,
    clopper_pearson_upper,
    serve_stream,
)
from ccied_p2p.cache.calibration import _clopper_pearson_bisect, _prior_neighbours
from ccied_p2p.errors import ConfigError, LocalError

FP = "c" * 16


class World:
    """A toy model over 16-d features: class centroids, items scattered around them, and a nearest-centroid
    "model" whose prediction on a noisy capture of a borderline item flips, like a real one."""

    def __init__(self, seed: int = 0, items: int = 2000, spread: float = 0.35) -> None:
        rng = np.random.default_rng(seed)
        self.centroids = rng.random((10, 16)).astype(np.float32)
        cls = rng.integers(0, 10, items)
        self.items = np.clip(self.centroids[cls] + rng.normal(0, spread, (items, 16)), 0, None).astype(
            np.float32
        )

    def stream(
        self, n: int, seed: int, pool: int = 300, noise: float = 0.05
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        members = rng.choice(len(self.items), pool, replace=False)
        p = 1 / np.arange(1, pool + 1)
        chosen = members[rng.choice(pool, n, p=p / p.sum())]
        x = np.clip(self.items[chosen] + rng.normal(0, noise, (n, 16)), 0, None).astype(np.float32)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        cn = self.centroids / np.linalg.norm(self.centroids, axis=1, keepdims=True)
        logits = 30 * xn @ cn.T
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        return x, prob.argmax(axis=1), prob.max(axis=1)


def serve(cache: SemanticCache, x: np.ndarray, pred: np.ndarray, conf: np.ndarray) -> tuple[int, int]:
    """Serve a stream as the runtime does: cached answer on a hit; the model on a miss or an audit."""
    hits = bad = 0
    for i, (f, p, c) in enumerate(zip(x, pred, conf, strict=True)):
        r = cache.lookup(f, FP, float(i))
        if isinstance(r, Hit) and not r.audit:
            hits += 1
            bad += r.label != p
        elif isinstance(r, Hit):
            cache.verify(f, r, int(p), float(c), FP, float(i))
        else:
            cache.insert(f, int(p), float(c), FP, float(i))
    return hits, bad


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def test_replay_is_exactly_what_the_cache_does(world: World) -> None:
    x, pred, conf = world.stream(2000, seed=1)
    cache = SemanticCache(b"n", index="numpy")
    cal = cache.calibrate(x, pred, 0.02, confidences=conf, min_confidences=[0.0, 0.9])
    assert cal.hits > 0
    assert cal.candidates > 100
    assert (cache.threshold, cache.k, cache.votes, cache.min_confidence) == (
        cal.threshold,
        cal.k,
        cal.votes,
        cal.min_confidence,
    )
    assert serve(cache, x, pred, conf) == (cal.hits, cal.false_hits)
    assert cal.false_hit_rate <= 0.02


def test_shallow_neighbour_lists_fall_back_to_exact_search(world: World) -> None:
    x, pred, _ = world.stream(1200, seed=2)
    deep = SemanticCache(b"n").calibrate(x, pred, 0.05, depth=256, apply=False)
    shallow = SemanticCache(b"n").calibrate(x, pred, 0.05, depth=3, apply=False)
    assert deep == shallow


def test_prior_neighbours_are_the_nearest_earlier_rows() -> None:
    rng = np.random.default_rng(0)
    f = rng.random((300, 8)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    idx, dist, count = _prior_neighbours(f, depth=5, chunk=64)
    for i in (0, 1, 4, 63, 64, 65, 299):
        assert count[i] == min(i, 5)
        if i == 0:
            continue
        d = 1 - f[:i] @ f[i]
        assert np.all(idx[i, : count[i]] < i)
        assert np.allclose(np.sort(d)[: count[i]], dist[i, : count[i]], atol=1e-6)


@pytest.mark.parametrize("budget", [0.01, 0.05])
def test_false_hit_rate_holds_on_held_out_streams(world: World, budget: float) -> None:
    """Calibrate on one camera (one pool of items), serve eight others: the false-hit rate pooled over the
    held-out streams stays near the budget and the cache still answers a good share of requests. (One
    camera alone can exceed it: a popular item the model is unsure of dominates its false hits.)"""
    x, pred, _ = world.stream(3000, seed=1)
    cal = SemanticCache(b"n").calibrate(x, pred, budget, confidence=0.0, apply=False)
    assert cal.false_hit_rate <= budget
    hits = bad = total = 0
    for seed in range(2, 10):  # every seed tried, none left out
        cache = SemanticCache(b"n", threshold=cal.threshold, k=cal.k, votes=cal.votes, index="numpy")
        x2, p2, c2 = world.stream(2000, seed=seed)
        h, b = serve(cache, x2, p2, c2)
        hits, bad, total = hits + h, bad + b, total + len(p2)
    assert hits / total > 0.2
    assert bad / hits <= 1.5 * budget


def test_several_streams_are_replayed_separately_and_pooled(world: World) -> None:
    streams = [world.stream(800, seed=s) for s in (1, 2)]
    grid = [0.001, 0.003, 0.01]
    joint = SemanticCache(b"n").calibrate(
        [x for x, _, _ in streams], [p for _, p, _ in streams], 1.0, thresholds=grid, kv=[(1, 1)], apply=False
    )
    alone = [
        SemanticCache(b"n").calibrate(x, p, 1.0, thresholds=[joint.threshold], kv=[(1, 1)], apply=False)
        for x, p, _ in streams
    ]
    assert joint.requests == 1600
    assert joint.hits == sum(c.hits for c in alone)
    assert joint.false_hits == sum(c.false_hits for c in alone)
    with pytest.raises(LocalError):
        SemanticCache(b"n").calibrate([streams[0][0]], [streams[0][1], streams[1][1]])


def test_confidence_bound_is_more_conservative(world: World) -> None:
    x, pred, _ = world.stream(2000, seed=1)
    point = SemanticCache(b"n").calibrate(x, pred, 0.02, confidence=0.0, apply=False)
    bound = SemanticCache(b"n").calibrate(x, pred, 0.02, apply=False)  # the default: 95% upper bound
    assert bound.false_hit_bound <= 0.02
    assert bound.false_hit_bound >= bound.false_hit_rate
    assert bound.hits <= point.hits


def test_insert_gate_is_chosen_when_it_helps(world: World) -> None:
    x, pred, conf = world.stream(2000, seed=1)
    gated = SemanticCache(b"n").calibrate(x, pred, 0.002, confidences=conf, min_confidences=[0.0, 0.8, 0.95])
    plain = SemanticCache(b"n").calibrate(x, pred, 0.002)
    assert gated.hits >= plain.hits
    assert gated.false_hit_rate <= 0.002


def test_impossible_budget_disables_the_cache() -> None:
    rng = np.random.default_rng(0)
    x = np.repeat(rng.random((1, 8)).astype(np.float32), 50, axis=0) + rng.normal(0, 1e-3, (50, 8)).astype(
        np.float32
    )
    labels = np.arange(50)  # the "model" answers differently on every capture of the same thing
    cache = SemanticCache(b"n")
    cal = cache.calibrate(x, labels, 0.0)
    assert isinstance(cal, Calibration)
    assert cal.threshold < 0
    assert cal.hits == 0
    cache.insert(x[0], 0, 0.9, FP, 0.0)
    assert not isinstance(cache.lookup(x[0], FP, 0.0), Hit)


def test_calibrate_checks_its_inputs() -> None:
    x = np.random.default_rng(0).random((10, 4)).astype(np.float32)
    c = SemanticCache(b"n")
    with pytest.raises(LocalError):
        c.calibrate(x, np.zeros(9, int))
    with pytest.raises(LocalError):
        c.calibrate(x[:0], np.zeros(0, int))
    with pytest.raises(ConfigError):
        c.calibrate(x, np.zeros(10, int), 1.5)
    with pytest.raises(ConfigError):
        c.calibrate(x, np.zeros(10, int), kv=[(2, 3)])
    with pytest.raises(LocalError):
        c.calibrate(x, np.zeros(10, int), min_confidences=[0.5])
    with pytest.raises(LocalError):
        c.calibrate(x, np.zeros(10, int), confidences=np.ones(3))


def test_activations_are_reduced_before_calibration() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((5, 4, 3, 3)).astype(np.float32)
    acts = np.repeat(base, 20, axis=0) + rng.normal(0, 1e-3, (100, 4, 3, 3)).astype(np.float32)
    labels = np.repeat(np.arange(5), 20)
    cal = SemanticCache(b"n").calibrate(acts, labels, 0.0, confidence=0.0, apply=False)
    assert cal.hit_rate > 0.5
    assert cal.false_hits == 0


def test_clopper_pearson_matches_the_beta_quantile_and_the_fallback() -> None:
    from scipy.stats import beta

    for bad, n in ((0, 300), (3, 1000), (12, 900), (49, 50)):
        exact = float(beta.ppf(0.95, bad + 1, n - bad))
        assert clopper_pearson_upper(bad, n, 0.95) == pytest.approx(exact, rel=1e-9)
        assert _clopper_pearson_bisect(bad, n, 0.95) == pytest.approx(exact, rel=1e-6)
    assert clopper_pearson_upper(0, 298) > 0.01 > clopper_pearson_upper(0, 299)  # 299 clean hits reach 1%
    assert clopper_pearson_upper(0, 0) == 1.0
    assert clopper_pearson_upper(5, 5) == 1.0
    assert clopper_pearson_upper(3, 100, 0.0) == 0.03


def test_clopper_pearson_covers_the_true_rate() -> None:
    rng = np.random.default_rng(0)
    p, n = 0.01, 400
    bad = rng.binomial(n, p, size=2000)
    covered = np.mean([clopper_pearson_upper(int(b), n, 0.95) >= p for b in bad])
    assert covered >= 0.95


def _serve_all(cal: Calibration, streams: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[int, int]:
    hits = bad = 0
    for x, pred, conf in streams:
        cache = SemanticCache(
            b"n", threshold=cal.threshold, k=cal.k, votes=cal.votes, min_confidence=cal.min_confidence
        )
        served, hit = serve_stream(cache, x, pred, conf, FP)
        hits += int(hit.sum())
        bad += int(np.sum(served[hit] != pred[hit]))
    return hits, bad


def test_holdout_certifies_on_streams_the_choice_never_saw(world: World) -> None:
    chosen = [world.stream(1200, seed=s) for s in (1, 2)]
    held = [world.stream(1200, seed=s) for s in (3, 4)]
    cache = SemanticCache(b"n")
    cal = cache.calibrate(
        [x for x, _, _ in chosen],
        [p for _, p, _ in chosen],
        0.02,
        confidences=[c for _, _, c in chosen],
        holdout=([x for x, _, _ in held], [p for _, p, _ in held], [c for _, _, c in held]),
    )
    assert cal.held_out
    assert cal.certified >= 1
    assert cal.requests == 2400
    assert cal.in_sample_requests == 2400
    assert cal.false_hit_bound <= 0.02
    assert 1 <= cal.certified <= cal.tested <= 16
    level = 1 - 0.05 / cal.tested  # Bonferroni over the settings tested on the holdout
    assert cal.false_hit_bound == pytest.approx(clopper_pearson_upper(cal.false_hits, cal.hits, level))
    # The reported figures are what a fresh cache with that setting does on the held-out streams.
    assert _serve_all(cal, held) == (cal.hits, cal.false_hits)
    assert _serve_all(cal, chosen) == (cal.in_sample_hits, cal.in_sample_false_hits)
    assert (cache.threshold, cache.k, cache.votes) == (cal.threshold, cal.k, cal.votes)


def test_per_stream_bounds_every_stream_alone(world: World) -> None:
    streams = [world.stream(1500, seed=s) for s in (1, 2, 3)]
    held = [world.stream(1500, seed=s) for s in (4, 5, 6)]
    args = ([x for x, _, _ in streams], [p for _, p, _ in streams], 0.03)
    holdout = ([x for x, _, _ in held], [p for _, p, _ in held], None)
    pooled = SemanticCache(b"n").calibrate(*args, holdout=holdout, apply=False)
    alone = SemanticCache(b"n").calibrate(*args, holdout=holdout, per_stream=True, apply=False)
    assert alone.per_stream
    assert len(alone.stream_bounds) == 3
    assert alone.hits > 0
    assert max(alone.stream_bounds) == alone.false_hit_bound <= 0.03
    assert pooled.false_hit_bound <= 0.03
    assert alone.hits <= pooled.hits  # a stricter test passes fewer settings
    grouped = SemanticCache(b"n").calibrate(
        *args, holdout=holdout, per_stream=True, groups=[0, 0, 1], apply=False
    )
    assert len(grouped.stream_bounds) == 2
    assert max(grouped.stream_bounds) == grouped.false_hit_bound <= 0.03
    with pytest.raises(LocalError):
        SemanticCache(b"n").calibrate(*args, holdout=holdout, per_stream=True, groups=[0, 1])
    with pytest.raises(LocalError):
        SemanticCache(b"n").calibrate(*args, groups=[0, 0, 1])


def test_a_holdout_that_disagrees_certifies_nothing(world: World) -> None:
    x, pred, conf = world.stream(2000, seed=1)
    hx, hpred, hconf = world.stream(2000, seed=2)
    scrambled = np.random.default_rng(0).integers(0, 10, len(hpred))  # a "model" that answers at random
    cache = SemanticCache(b"n")
    cal = cache.calibrate(x, pred, 0.02, confidences=conf, holdout=(hx, scrambled, hconf))
    assert cal.held_out
    assert cal.threshold < 0
    assert cal.certified == 0
    cache.insert(x[0], 0, 0.99, FP, 0.0)
    assert not isinstance(cache.lookup(x[0], FP, 0.0), Hit)


def test_serve_stream_follows_the_node_contract(world: World) -> None:
    x, pred, conf = world.stream(1500, seed=1)
    cal = SemanticCache(b"n").calibrate(x, pred, 0.02, confidences=conf, apply=False)
    a = SemanticCache(
        b"n", threshold=cal.threshold, k=cal.k, votes=cal.votes, min_confidence=cal.min_confidence
    )
    b = SemanticCache(
        b"n", threshold=cal.threshold, k=cal.k, votes=cal.votes, min_confidence=cal.min_confidence
    )
    served, hit = serve_stream(a, x, pred, conf, FP)
    assert (int(hit.sum()), int(np.sum(served[hit] != pred[hit]))) == serve(b, x, pred, conf)
    assert np.array_equal(served[~hit], pred[~hit])  # misses and audits are answered by the model
    assert a.stats().audits > 0
    assert len(a) == len(b)
    with pytest.raises(LocalError):
        serve_stream(a, x, pred[:-1], conf, FP)


def test_replay_with_a_radius_is_exactly_what_the_cache_does(world: World) -> None:
    x, pred, conf = world.stream(2000, seed=1)
    cache = SemanticCache(b"n", index="numpy", radius=(0.5, 0.99))
    cal = cache.calibrate(x, pred, 0.02, confidences=conf, min_confidences=[0.0, 0.9])
    assert cal.hits > 0
    assert serve(cache, x, pred, conf) == (cal.hits, cal.false_hits)
    plain = SemanticCache(b"n", index="numpy").calibrate(
        x, pred, 0.02, confidences=conf, min_confidences=[0.0, 0.9], apply=False
    )
    assert cal != plain  # the radius changed what the replay served
