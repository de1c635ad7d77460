"""The statistics a comparison reports: intervals over examples (and seeds) and paired tests.

Plain numpy, seeded, so a comparison's numbers are reproducible. Per-example scores come as an array of
shape (examples,) for one run or (seeds, examples) for several seeds of one configuration evaluated on
the same examples; two configurations compared pairwise must share the example axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile-bootstrap interval; n: examples, seeds: runs averaged."""

    mean: float
    low: float
    high: float
    n: int
    seeds: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over shared examples, its interval, and a two-sided p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    n: int
    test: str

    @property
    def significant(self) -> bool:
        """p < 1 - LEVEL and the interval excludes zero: a difference is only called one when both the
        test and the interval say so."""
        return self.p_value < 1.0 - LEVEL and (self.low > 0.0 or self.high < 0.0)


def _as_seeds(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores of shape {scores.shape}: expected (examples,) or (seeds, examples) with examples > 0")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values")
    return scores


def resampled_means(scores: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Bootstrap means of a (seeds, examples) array: seeds and examples are each drawn with replacement
    (a two-level bootstrap), so the interval covers both the example sample and seed-to-seed variation."""
    scores = _as_seeds(scores)
    rng = np.random.default_rng(seed)
    seeds, examples = scores.shape
    seed_draw = rng.integers(0, seeds, size=(resamples, seeds)) if seeds > 1 else np.zeros((resamples, 1), dtype=np.int64)
    example_draw = rng.integers(0, examples, size=(resamples, examples))
    per_seed = scores[seed_draw[:, :, None], example_draw[:, None, :]]
    return per_seed.mean(axis=(1, 2))


def bootstrap_interval(scores: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Mean and percentile-bootstrap interval of per-example scores (averaged over seeds)."""
    scores = _as_seeds(scores)
    means = resampled_means(scores, resamples, seed)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(scores.mean()), float(low), float(high), scores.shape[1], scores.shape[0])


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> PairedDifference:
    """Difference of means of two configurations on the same examples, resampling examples jointly.

    The p-value is the two-sided bootstrap p: twice the share of resampled differences on the other side
    of zero from the observed one (capped at 1)."""
    a, b = _as_seeds(a), _as_seeds(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired scores need the same examples: {a.shape[1]} vs {b.shape[1]}")
    rng = np.random.default_rng(seed)
    examples = a.shape[1]
    draw = rng.integers(0, examples, size=(resamples, examples))
    seeds_a = rng.integers(0, a.shape[0], size=(resamples, a.shape[0])) if a.shape[0] > 1 else np.zeros((resamples, 1), dtype=np.int64)
    seeds_b = rng.integers(0, b.shape[0], size=(resamples, b.shape[0])) if b.shape[0] > 1 else np.zeros((resamples, 1), dtype=np.int64)
    diffs = a[seeds_a[:, :, None], draw[:, None, :]].mean(axis=(1, 2)) - b[seeds_b[:, :, None], draw[:, None, :]].mean(axis=(1, 2))
    observed = float(a.mean() - b.mean())
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    other_side = np.mean(diffs <= 0.0) if observed > 0 else np.mean(diffs >= 0.0)
    p_value = 1.0 if observed == 0.0 else min(1.0, 2.0 * float(other_side))
    return PairedDifference(observed, float(low), float(high), p_value, examples, "paired bootstrap")


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> PairedDifference:
    """McNemar's exact test on paired right/wrong outcomes (one seed each), with the accuracy difference.

    Only discordant pairs carry information: under the null each is equally likely to favour either
    side, so the two-sided p-value is a binomial tail of the smaller discordant count. The interval is
    the Wald interval of a difference of paired proportions (reported for scale, not used by the test)."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"McNemar needs two equal-length 1-D outcome vectors, got {a.shape} and {b.shape}")
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else min(1.0, 2.0 * _binomial_cdf(min(only_a, only_b), discordant))
    n = a.size
    difference = (only_a - only_b) / n
    spread = math.sqrt(max(0.0, discordant / n - difference**2) / n)
    z = 1.959963984540054
    return PairedDifference(difference, difference - z * spread, difference + z * spread, p_value, n, "McNemar exact")


def _binomial_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, then one division)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n
