"""Calibration: replay streams exactly as the cache would serve them and pick threshold, k, votes and gate.

:meth:`SemanticCache.calibrate <ccied_p2p.cache.SemanticCache.calibrate>` is :func:`calibrate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ccied_p2p.cache.arrays import FloatArray, IntMatrix, LabelsArg, StreamsArg, _unit
from ccied_p2p.cache.entries import _DEFAULT_GATES
from ccied_p2p.cache.results import Calibration
from ccied_p2p.errors import (
    ConfigError,
    LocalError,
)

if TYPE_CHECKING:
    from ccied_p2p.cache.semantic import SemanticCache


def _binomial_cdf(x: int, n: int, p: float) -> float:
    """P(X <= x) for X ~ Binomial(n, p), summed in log space."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if x >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(x + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _clopper_pearson_bisect(bad: int, n: int, confidence: float) -> float:
    """The Clopper-Pearson upper bound by bisection on the binomial CDF (when scipy is absent)."""
    lo, hi = bad / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _binomial_cdf(bad, n, mid) > 1.0 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def clopper_pearson_upper(bad: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) upper bound of a binomial rate ``bad / n``.

    The true rate is below it with probability at least ``confidence`` whatever the rate (Clopper and
    Pearson, Biometrika 1934): the largest ``p`` with ``P(X <= bad | n, p) >= 1 - confidence``, the
    ``confidence`` quantile of Beta(bad + 1, n - bad). No observations bound nothing (1.0);
    ``confidence <= 0`` gives the point estimate.
    """
    if n <= 0:
        return 1.0
    if confidence <= 0:
        return bad / n
    if bad >= n:
        return 1.0
    try:
        from scipy.stats import beta
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return _clopper_pearson_bisect(bad, n, confidence)
    return float(beta.ppf(confidence, bad + 1, n - bad))


# ------------------------------------------------------------------------------------ calibration replay


def _prior_neighbours(
    features: FloatArray, depth: int, chunk: int = 256
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Row ``i``: the ``depth`` earlier rows ``j < i`` nearest to ``i`` (indices, cosine distances, count),
    ascending, padded with -1 / inf."""
    n = len(features)
    depth = max(1, min(depth, n))
    idx = np.full((n, depth), -1, dtype=np.int64)
    dist = np.full((n, depth), np.inf, dtype=np.float32)
    count = np.minimum(np.arange(n), depth).astype(np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = features[start:stop] @ features[:stop].T
        block = sims[:, start:stop]
        block[np.triu_indices(stop - start)] = -np.inf
        m = min(depth, stop)
        top = np.argpartition(-sims, m - 1, axis=1)[:, :m] if m < stop else np.argsort(-sims, axis=1)
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_sims = np.take_along_axis(top_sims, order, axis=1)
        valid = np.isfinite(top_sims)
        idx[start:stop, :m] = np.where(valid, top, -1)
        dist[start:stop, :m] = np.where(valid, 1.0 - top_sims, np.inf)
    return idx, dist, count


MIN_RADIUS = 0.05
"""The smallest share of the threshold an entry answers within, whatever its confidence (see :func:`entry_radius`)."""


def check_radius(radius: Any) -> tuple[float, float]:
    """``radius`` as a float pair if it is one :func:`entry_radius` takes, else a ConfigError saying why."""
    try:
        lo, hi = (float(r) for r in radius)
    except (TypeError, ValueError):
        raise ConfigError(f"radius must be a pair (low, full), got {radius!r}") from None
    if not (lo == hi == 0.0 or 0.0 <= lo < hi <= 1.0):
        raise ConfigError(f"radius must be (0, 0) or (low, full) with 0 <= low < full <= 1, got {radius}")
    return lo, hi


def entry_radius(
    confidences: npt.NDArray[np.floating[Any]], radius: tuple[float, float]
) -> npt.NDArray[np.float64]:
    """The share of the threshold within which entries of these confidences answer.

    ``radius = (low, full)``: an entry whose answer had confidence ``full`` or more answers within the whole
    threshold, one of confidence ``c`` below it within ``(c - low) / (full - low)`` of it (at least
    :data:`MIN_RADIUS`); ``(0, 0)``: every entry within the whole threshold. Measured on the Lite0 camera
    streams: a stored answer of confidence 0.8-0.9 agreed with the split's answer on nearly every frame very
    near it (distance < 0.02) and less often further out, where answers of 0.97 and up still agreed.
    """
    lo, hi = radius
    c = np.asarray(confidences, dtype=np.float64)
    if hi <= 0.0:
        return np.ones(c.shape)
    return np.clip((c - lo) / (hi - lo), MIN_RADIUS, 1.0)


def _vote(labels: Sequence[int], votes: int) -> int:
    """The label when at least ``votes`` voters all agree on it, else -1."""
    if len(labels) < votes or not labels or any(lab != labels[0] for lab in labels):
        return -1
    return labels[0]


def _audit_due(uses: int, audit_from: int) -> bool:
    """Audit when an entry's use count reaches ``audit_from``, twice that, four times, ..."""
    if audit_from <= 0 or uses < audit_from or uses % audit_from:
        return False
    m = uses // audit_from
    return m & (m - 1) == 0


def _audit_due_many(uses: npt.NDArray[np.int64], audit_from: int) -> npt.NDArray[np.bool_]:
    if audit_from <= 0:
        return np.zeros(uses.shape, dtype=bool)
    m = uses // audit_from
    out: npt.NDArray[np.bool_] = (uses >= audit_from) & (uses % audit_from == 0) & ((m & (m - 1)) == 0)
    return out


def _replay(
    features: FloatArray,
    neighbours: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]],
    labels: npt.NDArray[np.int64],
    insertable: npt.NDArray[np.bool_],
    thresholds: npt.NDArray[np.float64],
    k: int,
    votes: int,
    audit_from: int,
    budget: float,
    elsewhere: int = 0,
    radius: npt.NDArray[np.float64] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Serve the stream as fresh unbounded caches would, one per threshold, in lockstep.

    Mirrors :meth:`SemanticCache.lookup`, ``insert`` and ``verify`` step for step (``radius``: per request,
    the share of the threshold its entry answers within, :func:`entry_radius`). Returns served hits,
    false hits, audits and which thresholds were followed to the end: one whose false hits exceed
    ``budget`` even if every remaining request (and ``elsewhere`` requests in other streams) were a clean
    hit is dropped early.
    """
    idx, dist, count = neighbours
    n, depth = idx.shape
    n_labels = int(labels.max()) + 1 if len(labels) else 1
    onehot = np.eye(n_labels, dtype=np.float32)
    th = thresholds.astype(np.float32)[:, None]
    n_t = len(thresholds)
    t_all = np.arange(n_t)
    inserted = np.zeros((n_t, n), dtype=bool)
    uses = np.zeros((n_t, n), dtype=np.int64)
    hits = np.zeros(n_t, dtype=np.int64)
    bad = np.zeros(n_t, dtype=np.int64)
    audits = np.zeros(n_t, dtype=np.int64)
    disputed = np.zeros((n_t, n), dtype=bool)
    active = np.ones(n_t, dtype=bool)
    for i in range(n):
        length = int(count[i])
        if length == 0 or dist[i, 0] > th[-1, 0]:
            inserted[:, i] = insertable[i] & active
            continue
        row = idx[i, :length]
        d = dist[i, :length]
        if radius is None:
            mask = inserted[:, row] & (d[None, :] <= th)
            sel = mask & (np.cumsum(mask, axis=1) <= k)
        else:  # the k nearest entries, each within its own share of the threshold
            mask = inserted[:, row]
            sel = mask & (np.cumsum(mask, axis=1) <= k) & (d[None, :] <= th * radius[row][None, :])
        counts = sel.astype(np.float32) @ onehot[labels[row]]
        deep: dict[int, npt.NDArray[np.int64]] = {}
        if length == depth:
            # Every listed neighbour may be within the threshold with too few cached: look further back.
            for t in np.flatnonzero(active & (sel.sum(axis=1) < k) & (d[-1] <= th[:, 0])).tolist():
                prior = np.flatnonzero(inserted[t, :i])
                d_all = 1.0 - features[prior] @ features[i]
                near = np.argsort(d_all, kind="stable")[:k]
                share = 1.0 if radius is None else radius[prior[near]]
                deep[t] = prior[near[d_all[near] <= th[t, 0] * share]]
                counts[t] = onehot[labels[deep[t]]].sum(axis=0)
        voters = counts.sum(axis=1)
        best = counts.argmax(axis=1)
        blocked: npt.NDArray[np.bool_] = np.any(sel & disputed[:, row], axis=1)
        for t in deep:
            blocked[t] = bool(disputed[t, deep[t]].any())
        hit = active & (voters >= votes) & (counts[t_all, best] == voters) & ~blocked
        shallow = hit.copy()
        shallow[list(deep)] = False
        ts, cols = np.nonzero(sel & shallow[:, None])
        uses[ts, row[cols]] += 1  # (t, j) pairs are distinct
        u = uses[t_all, row[sel.argmax(axis=1)]]
        audited = shallow & _audit_due_many(u, audit_from)
        for t in deep:
            if hit[t]:
                uses[t, deep[t]] += 1
                audited[t] = _audit_due(int(uses[t, deep[t][0]]), audit_from)
        served = hit & ~audited
        hits += served
        bad += served & (best != labels[i])
        audits += audited
        if insertable[i]:
            inserted[:, i] = active & ~hit
        failed = audited & (best != labels[i])
        if failed.any():
            inserted[failed, i] = True
            ts, cols = np.nonzero(sel & failed[:, None])
            disputed[ts, row[cols]] = True
            for t in deep:
                if failed[t]:
                    disputed[t, deep[t]] = True
        if i % 64 == 63:
            active &= bad <= budget * (hits + (n - 1 - i) + elsewhere)
    return hits, bad, audits, active


def _calibration_streams(
    self: SemanticCache,
    features: StreamsArg,
    reference_labels: LabelsArg,
    confidences: StreamsArg | None,
) -> list[tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
    if isinstance(features, np.ndarray):
        feat_list, label_list = [features], [reference_labels]
        conf_list = None if confidences is None else [confidences]
    else:
        feat_list, label_list = list(features), list(reference_labels)
        conf_list = None if confidences is None else list(confidences)
    if len(label_list) != len(feat_list) or (conf_list is not None and len(conf_list) != len(feat_list)):
        raise LocalError("features, reference_labels and confidences must hold the same streams")
    streams: list[tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.float64]]] = []
    for i, stream in enumerate(feat_list):
        arr = np.asarray(stream)
        feats = _unit(arr) if arr.ndim == 2 else self.features(arr)
        labs = np.asarray(label_list[i], dtype=np.int64).reshape(-1)
        if feats.shape[0] != len(labs):
            raise LocalError(f"{feats.shape[0]} features but {len(labs)} reference labels")
        if len(labs) == 0:
            raise LocalError("empty calibration stream")
        conf = np.ones(len(labs)) if conf_list is None else np.asarray(conf_list[i], dtype=np.float64)
        if conf.shape != labs.shape:
            raise LocalError(f"confidences must have shape {labs.shape}, got {conf.shape}")
        streams.append((feats, labs, conf))
    return streams


def _score(
    self: SemanticCache,
    streams: list[tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.float64]]],
    known_labels: npt.NDArray[np.int64],
    grid: npt.NDArray[np.float64],
    settings: list[tuple[float, int, int]],
    budget: float,
    depth: int,
    groups: list[int] | None,
) -> dict[tuple[float, int, int], tuple[IntMatrix, IntMatrix, IntMatrix, npt.NDArray[np.bool_]]]:
    """Per setting (gate, k, votes): hits, false hits and audits per stream and threshold, and which
    thresholds were replayed to the end (the others cannot meet ``budget``)."""
    n = sum(len(labs) for _, labs, _ in streams)
    neighbours = [_prior_neighbours(feats, depth) for feats, _, _ in streams]
    compact = [np.searchsorted(known_labels, labs).astype(np.int64) for _, labs, _ in streams]
    out = {}
    for gate, k, votes in settings:
        rows: tuple[list[IntMatrix], list[IntMatrix], list[IntMatrix]] = ([], [], [])
        full = np.ones(len(grid), dtype=bool)
        for i, ((feats, labs, conf), nb, comp) in enumerate(zip(streams, neighbours, compact, strict=True)):
            if groups is None:
                elsewhere = n - len(labs)
            else:
                elsewhere = sum(len(o[1]) for j, o in enumerate(streams) if groups[j] == groups[i] and j != i)
            radius = None if self.radius[1] <= 0 else entry_radius(conf, self.radius)
            s_hits, s_bad, s_audits, s_full = _replay(
                feats, nb, comp, conf >= gate, grid, k, votes, self.audit_from, budget, elsewhere, radius
            )
            for acc, value in zip(rows, (s_hits, s_bad, s_audits), strict=True):
                acc.append(value)
            full &= s_full
        hits, bad, audits = (np.stack(r) for r in rows)
        out[(gate, k, votes)] = (hits, bad, audits, full)
    return out


def calibrate(
    self: SemanticCache,
    features: StreamsArg,
    reference_labels: LabelsArg,
    max_false_hit_rate: float = 0.01,
    *,
    confidences: StreamsArg | None = None,
    thresholds: Sequence[float] | None = None,
    kv: Sequence[tuple[int, int]] = ((1, 1), (3, 1), (3, 2), (5, 2), (5, 3)),
    min_confidences: Sequence[float] | None = None,
    confidence: float = 0.95,
    apply: bool = True,
    depth: int = 256,
    holdout: tuple[StreamsArg, LabelsArg, StreamsArg | None] | None = None,
    per_stream: bool = False,
    groups: Sequence[int] | None = None,
    max_tests: int = 16,
) -> Calibration:
    """Choose ``threshold``, ``k``, ``votes`` (and ``min_confidence``) for the most hits within budget.

    ``features`` (or activations, reduced with this cache's reducer) are a calibration stream in
    arrival order, or a list of independent streams, and ``reference_labels`` what the uncached model
    predicts for each request (``confidences``, its confidences, enable the ``min_confidence`` insert
    gate, tried at ``min_confidences``, by default 0 to 0.95). Every candidate setting is scored by
    replaying each stream exactly as a fresh cache would serve it, audits included: look up; a served
    hit is false if its label differs from the reference; an audited hit is served by the model and,
    if the cache was wrong, inserts the reference answer; a miss inserts it (gated). A setting meets
    the budget when the one-sided Clopper-Pearson upper bound at ``confidence`` of its false-hit rate
    (false hits / hits, pooled over the streams; with ``per_stream``, of every stream on its own) is
    at most ``max_false_hit_rate``. Capacity is not simulated (keep each stream below it).

    Without ``holdout`` the winner has the most served hits among the settings that meet the budget
    on the streams it was chosen on: in-sample figures, optimistic for new images. ``holdout``
    (``(features, reference_labels, confidences)`` of streams drawn from other images than
    ``features``) makes the guarantee hold on unseen images, by learn-then-test (Angelopoulos et al.,
    2021) with Bonferroni's correction: of the settings that meet the budget on the selection
    streams, ``max_tests`` spread from the most hits to the fewest are tested on the held-out
    streams, each at confidence ``1 - (1 - confidence) / tests``; the winner has the most hits among
    those that pass. If the held-out hits behave as independent draws from the streams that will be
    served, every passed setting has a false-hit rate within the budget, all together with
    probability at least ``confidence``. The reported figures, and the bound at that level, are the
    held-out ones. (A fixed-sequence test, stopping at the first failure, certified nothing on one
    Fashion-MNIST halving in five: one lucky setting on the selection streams ends it.)

    ``per_stream`` makes the budget hold for each stream alone rather than pooled: streams without
    repeats (each image seen once), where false hits are several times as common as on camera
    streams, then cannot hide behind the cameras' many easy hits. ``groups`` (one number per stream)
    pools the streams of one group instead (say, all camera streams in one, the stream without
    repeats in another); the holdout streams are grouped alike, so they must be as many. A group
    needs at least 299 hits, all correct, for its bound to reach a 1% budget at 95%.
    """
    if not 0.0 <= max_false_hit_rate <= 1.0:
        raise ConfigError(f"max_false_hit_rate must be in [0, 1], got {max_false_hit_rate}")
    for k, votes in kv:
        self._check_vote(k, votes)
    if min_confidences is not None:
        gates = list(min_confidences)
    else:
        gates = [0.0] if confidences is None else list(_DEFAULT_GATES)
    if confidences is None and any(g > 0 for g in gates):
        raise LocalError("min_confidences need confidences")
    streams = _calibration_streams(self, features, reference_labels, confidences)
    held = None
    if holdout is not None:
        held = _calibration_streams(self, *holdout)
        if holdout[2] is None and any(g > 0 for g in gates):
            raise LocalError("min_confidences need confidences for the holdout streams too")
    n = sum(len(labs) for _, labs, _ in streams)
    group_of: list[int] | None = None
    if per_stream:
        group_of = list(range(len(streams))) if groups is None else [int(g) for g in groups]
        if len(group_of) != len(streams) or (held is not None and len(held) != len(streams)):
            raise LocalError("groups, streams and holdout streams must be as many")
    elif groups is not None:
        raise LocalError("groups need per_stream=True")
    if thresholds is None:
        first = np.concatenate([_prior_neighbours(f, 1)[1][:, 0] for f, _, _ in streams])
        nearest = first[np.isfinite(first)].astype(np.float64)
        qs = np.quantile(nearest, np.linspace(0.01, 0.995, 48)) if len(nearest) else np.zeros(0)
        thresholds = [float(t) for t in qs]
    grid = np.unique(np.maximum(np.asarray(thresholds, dtype=np.float64), 0.0))
    everything = streams + (held or [])
    known_labels = np.unique(np.concatenate([labs for _, labs, _ in everything]))
    settings = [(float(g), k, votes) for g in gates for k, votes in kv]
    budget = max_false_hit_rate
    scores = _score(self, streams, known_labels, grid, settings, budget, depth, group_of)

    def bounds(
        hits: IntMatrix, bad: IntMatrix, t: int, confidence: float = confidence
    ) -> tuple[float, tuple[float, ...]]:
        member = np.array(group_of if group_of is not None else range(len(hits)))
        group_ids = sorted(set(member.tolist()))
        per = tuple(
            clopper_pearson_upper(int(bad[member == g, t].sum()), int(hits[member == g, t].sum()), confidence)
            for g in group_ids
        )
        pooled = clopper_pearson_upper(int(bad[:, t].sum()), int(hits[:, t].sum()), confidence)
        return (max(per) if per_stream else pooled), per

    # Every setting within budget on the selection streams: (bound, -hits, setting, threshold index).
    passed: list[tuple[float, int, tuple[float, int, int], int]] = []
    for setting, (hits, bad, _, full) in scores.items():
        for t in np.flatnonzero(full & (hits.sum(axis=0) > 0)).tolist():
            bound, _ = bounds(hits, bad, t)
            if bound <= budget:
                passed.append((bound, -int(hits[:, t].sum()), setting, t))
    candidates = len(settings) * len(grid)

    def result(
        setting: tuple[float, int, int],
        t: int,
        src: tuple[IntMatrix, IntMatrix, IntMatrix],
        m: int,
        level: float = confidence,
    ) -> Calibration:
        hits, bad, audits = src
        h, b = int(hits[:, t].sum()), int(bad[:, t].sum())
        bound, per = bounds(hits, bad, t, level)
        sel_hits, sel_bad = scores[setting][0], scores[setting][1]
        return Calibration(
            threshold=float(grid[t]),
            k=setting[1],
            votes=setting[2],
            min_confidence=setting[0],
            requests=m,
            hits=h,
            false_hits=b,
            hit_rate=h / m,
            false_hit_rate=b / h if h else 0.0,
            false_hit_bound=bound,
            budget=budget,
            confidence=confidence,
            candidates=candidates,
            audits=int(audits[:, t].sum()),
            held_out=held is not None,
            per_stream=per_stream,
            stream_bounds=per,
            in_sample_requests=n,
            in_sample_hits=int(sel_hits[:, t].sum()),
            in_sample_false_hits=int(sel_bad[:, t].sum()),
        )

    best: Calibration | None = None
    if held is None:
        if passed:
            _, _, setting, t = min(passed, key=lambda p: (p[1], int(scores[p[2]][1][:, p[3]].sum())))
            best = result(setting, t, scores[setting][:3], n)
    elif passed:
        # Up to max_tests of them, spread from the most hits to the fewest, each tested on the
        # holdout at the Bonferroni level: all that pass are within budget together.
        passed.sort(key=lambda p: (p[1], p[0]))
        step = len(passed) / min(max_tests, len(passed))
        chosen = [passed[int(i * step)] for i in range(min(max_tests, len(passed)))]
        level = 1.0 - (1.0 - confidence) / len(chosen) if confidence > 0 else 0.0
        m = sum(len(labs) for _, labs, _ in held)
        tested = _score(
            self, held, known_labels, grid, sorted({p[2] for p in chosen}), budget, depth, group_of
        )
        certified: list[Calibration] = []
        for _, _, setting, t in chosen:
            hits, bad, audits, full = tested[setting]
            if full[t] and hits[:, t].sum() > 0 and bounds(hits, bad, t, level)[0] <= budget:
                certified.append(result(setting, t, (hits, bad, audits), m, level))
        if certified:
            best = max(certified, key=lambda c: (c.hits + c.in_sample_hits, -c.false_hits))
            best = Calibration(**{**_asdict(best), "certified": len(certified), "tested": len(chosen)})
    if best is None:
        m = n if held is None else sum(len(labs) for _, labs, _ in held)
        best = Calibration(
            -1.0, 1, 1, 0.0, m, 0, 0, 0.0, 0.0, 0.0, budget, confidence, candidates,
            held_out=held is not None, per_stream=per_stream, in_sample_requests=n,
        )  # fmt: skip
    if apply:
        self.threshold, self.k, self.votes, self.min_confidence = (
            best.threshold,
            best.k,
            best.votes,
            best.min_confidence,
        )
    return best


def _asdict(c: Calibration) -> dict[str, Any]:
    return {f: getattr(c, f) for f in Calibration.__dataclass_fields__}
