"""What the cache answers: lookup results, statistics, merge results and calibrations."""

from __future__ import annotations

import math
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Hit:
    """The cache answers: ``votes`` neighbours within the threshold, all agreeing on ``label``.

    ``distance`` is the nearest one's cosine distance; ``confidence`` their mean tail confidence; ``keys``
    the voters' entry keys. When ``audit`` is set the cache asks to be checked: run the model for this
    request, serve its answer, and report it with :meth:`SemanticCache.verify`.
    """

    label: int
    distance: float
    votes: int
    confidence: float
    audit: bool = False
    keys: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Miss:
    """No answer; ``distance`` is the nearest entry's cosine distance (``inf`` when none)."""

    distance: float = math.inf
    votes: int = 0


LookupResult = Hit | Miss


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was created (or loaded)."""

    entries: int
    hits: int
    misses: int
    inserts: int
    evictions: int
    merged: int
    rejected: int
    audits: int = 0
    audit_failures: int = 0


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What :meth:`SemanticCache.merge` did with a batch of peer entries."""

    accepted: int = 0
    duplicates: int = 0
    wrong_fingerprint: int = 0
    invalid: int = 0


@dataclass(frozen=True, slots=True)
class Calibration:
    """The setting :meth:`SemanticCache.calibrate` chose and what it measured.

    ``false_hit_rate`` is false hits / hits (a false hit answers a label the uncached model would not
    have); ``false_hit_bound`` is its one-sided Clopper-Pearson upper bound at ``confidence`` (the point
    estimate when ``confidence`` is 0), the figure held to the budget; with ``per_stream`` the largest of
    the bounds of each stream (or group of streams) in ``stream_bounds``. With ``held_out`` these figures
    come from the held-out streams, which chose nothing: they describe images the selection never saw,
    and the bound is at the Bonferroni level of the held-out test; the ``in_sample_*`` figures are those
    of the selection streams; ``tested`` settings were tested on the held-out streams
    and ``certified`` passed. ``threshold < 0`` means no setting met the budget and the cache never
    answers.
    """

    threshold: float
    k: int
    votes: int
    min_confidence: float
    requests: int
    hits: int
    false_hits: int
    hit_rate: float
    false_hit_rate: float
    false_hit_bound: float
    budget: float
    confidence: float
    candidates: int
    audits: int = 0
    held_out: bool = False
    per_stream: bool = False
    stream_bounds: tuple[float, ...] = ()
    in_sample_requests: int = 0
    in_sample_hits: int = 0
    in_sample_false_hits: int = 0
    certified: int = 0
    tested: int = 0
