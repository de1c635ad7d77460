"""The statistics a comparison reports: intervals that carry seed and example variance, exact paired tests
over training seeds, multiplicity control and non-inferiority.

The unit of a claim about methods is the training run. A configuration's scores come as a (seeds,
examples) array, every seed scored on the same examples, with a cluster code per example (examples of one
source passage, article or question are not independent). Two configurations are paired by seed (seed s
of both shares its data order and initialization) and by example.

- Tests: the exact paired sign-flip test on the per-seed mean differences (scipy's `permutation_test`,
  enumerated). Under "the two methods are equal" the two runs of a seed are exchangeable, so the test
  holds its level whatever the seed and example noise are; its smallest two-sided p is 2 / 2^seeds, so
  nothing can be called a difference below 6 seeds, and one seed gets no test at all (its numbers are
  conditional on one training run).
- Intervals, one seed: a cluster bootstrap (scipy's `bootstrap`, BCa) of the token- or example-weighted
  mean; Clopper-Pearson (statsmodels) for a rate of independent 1/0 outcomes, Newcombe's hybrid score
  interval for a paired difference of such rates.
- Intervals, several seeds: a two-stage percentile bootstrap (seeds, then clusters, the cluster draw
  shared by every seed because they were scored on the same examples). scipy has no hierarchical
  bootstrap, so this one is written here; `tests/compare/test_calibration.py` measures its coverage.
- Multiplicity: the app's primary test first, then Holm over every other test, gated by the primary
  (`compare/report.py`), so the whole table's family-wise error stays at 5%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

LEVEL = 0.95
ALPHA = 1.0 - LEVEL
RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class Sample:
    """One metric of one configuration: `scores[seed, example]`, `clusters[example]` (any labels; equal
    labels are one cluster) and whether the scores are 1/0 outcomes."""

    scores: np.ndarray
    clusters: np.ndarray
    binary: bool = False

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim == 1:
            scores = scores[None, :]
        if scores.ndim != 2 or scores.shape[1] == 0:
            raise ValueError(f"scores of shape {scores.shape}: expected (examples,) or (seeds, examples) with examples > 0")
        if not np.isfinite(scores).all():
            raise ValueError("scores hold NaN or infinite values")
        clusters = np.asarray(self.clusters)
        if clusters.shape != (scores.shape[1],):
            raise ValueError(f"{clusters.shape[0] if clusters.ndim else 0} cluster labels for {scores.shape[1]} examples")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "clusters", np.unique(clusters, return_inverse=True)[1].ravel())

    @property
    def seeds(self) -> int:
        return self.scores.shape[0]

    @property
    def n(self) -> int:
        return self.scores.shape[1]

    @property
    def n_clusters(self) -> int:
        return int(self.clusters.max()) + 1

    def cluster_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(seeds, clusters) sums of scores and (clusters,) sizes."""
        sums = np.zeros((self.seeds, self.n_clusters))
        np.add.at(sums, (slice(None), self.clusters), self.scores)
        return sums, np.bincount(self.clusters).astype(np.float64)


@dataclass(frozen=True)
class Interval:
    """A mean with its interval; n: examples, clusters: independent units among them, seeds: runs."""

    mean: float
    low: float
    high: float
    n: int
    clusters: int
    seeds: int
    method: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over shared seeds and examples, its interval, and the exact test over seeds.

    `p_value` is None where no test is possible (one seed); `p_floor` is the smallest p the test can
    give at this number of seeds; `p_adjusted` is Holm's (or the raw p for the primary comparison)."""

    difference: float
    low: float
    high: float
    p_value: float | None
    p_floor: float | None
    n: int
    clusters: int
    seeds: int
    test: str
    interval_method: str
    relative: float | None = None
    p_adjusted: float | None = None

    @property
    def significant(self) -> bool:
        """Adjusted p below 5% and an interval that excludes zero: a difference is only called one when
        both say so."""
        return self.p_adjusted is not None and self.p_adjusted < ALPHA and (self.low > 0.0 or self.high < 0.0)


def mean_interval(sample: Sample, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The configuration's mean over seeds and examples with its 95% interval (see the module docstring)."""
    mean = float(sample.scores.mean())
    if sample.seeds > 1:
        low, high = _two_stage(sample, resamples, seed)
        method = "two-stage bootstrap (seeds, clusters)"
    elif sample.binary and sample.n_clusters == sample.n:
        count = int(round(sample.scores.sum()))
        low, high = proportion_confint(count, sample.n, alpha=ALPHA, method="beta")
        method = "Clopper-Pearson"
    else:
        low, high, method = _cluster_bootstrap(sample, resamples, seed)
    return Interval(mean, float(low), float(high), sample.n, sample.n_clusters, sample.seeds, method)


def paired_difference(a: Sample, b: Sample, resamples: int = RESAMPLES, seed: int = SEED) -> PairedDifference:
    """a - b on the same seeds and examples: interval, relative effect (to b's mean) and the exact test."""
    if a.scores.shape != b.scores.shape:
        raise ValueError(f"paired scores need the same seeds and examples: {a.scores.shape} vs {b.scores.shape}")
    if not np.array_equal(a.clusters, b.clusters):
        raise ValueError("paired scores need the same clusters")
    diff = Sample(a.scores - b.scores, a.clusters, binary=False)
    difference = float(diff.scores.mean())
    reference = float(b.scores.mean())
    relative = difference / abs(reference) if reference != 0.0 else None
    if a.seeds > 1:
        low, high = _two_stage(diff, resamples, seed)
        interval_method = "two-stage bootstrap (seeds, clusters)"
    elif a.binary and b.binary and a.n_clusters == a.n:
        low, high = newcombe_paired(a.scores[0].astype(bool), b.scores[0].astype(bool))
        interval_method = "Newcombe hybrid score (paired)"
    else:
        low, high, interval_method = _cluster_bootstrap(diff, resamples, seed)
    p_value, floor = seed_sign_flip(diff.scores.mean(axis=1))
    test = "exact sign-flip over seeds" if p_value is not None else "none (one seed)"
    return PairedDifference(difference, float(low), float(high), p_value, floor, a.n, a.n_clusters, a.seeds, test,
                            interval_method, relative)  # fmt: skip


def seed_sign_flip(per_seed: np.ndarray, alternative: str = "two-sided") -> tuple[float | None, float | None]:
    """Exact paired sign-flip p of per-seed mean differences, and the smallest p this many seeds allow;
    (None, None) with one seed."""
    per_seed = np.asarray(per_seed, dtype=np.float64)
    if per_seed.size < 2:
        return None, None
    if np.all(per_seed == 0.0):
        return 1.0, _floor(per_seed.size, alternative)
    result = scipy_stats.permutation_test(
        (per_seed,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative=alternative, vectorized=True
    )
    return float(result.pvalue), _floor(per_seed.size, alternative)


def _floor(seeds: int, alternative: str) -> float:
    return (2.0 if alternative == "two-sided" else 1.0) / 2.0**seeds


def noninferiority(a: Sample, b: Sample, margin: float) -> float | None:
    """One-sided exact p that a's lower-is-better metric exceeds b's by less than `margin` (the H1 of
    "a keeps b's utility"): a sign-flip over seeds of the per-seed (a - b - margin). None with one seed."""
    per_seed = (a.scores - b.scores).mean(axis=1) - margin
    return seed_sign_flip(per_seed, alternative="less")[0]


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values; None (no test) stays None and takes no part.

    Written here rather than called from statsmodels' `multipletests`, which runs a full `gc.collect()`
    on every call (0.5 s in a process that has imported torch); `tests/compare/test_stats.py` checks
    the two agree."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def newcombe_paired(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Newcombe's (1998, method 10) hybrid score interval for p_a - p_b from paired 1/0 outcomes: the
    marginal Wilson intervals (statsmodels), combined with the phi correlation of the 2x2 table. Unlike
    the Wald interval it is not degenerate when no pair is discordant."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired outcomes need two equal-length 1-D vectors, got {a.shape} and {b.shape}")
    n = a.size
    both, only_a, only_b, neither = (int(np.sum(x)) for x in (a & b, a & ~b, ~a & b, ~a & ~b))
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    l_a, u_a = proportion_confint(both + only_a, n, alpha=1 - level, method="wilson")
    l_b, u_b = proportion_confint(both + only_b, n, alpha=1 - level, method="wilson")
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = float(both * neither - only_a * only_b)
    if cross > 0.0:
        cross = max(cross - n / 2.0, 0.0)  # Newcombe's continuity correction
    phi = cross / math.sqrt(margins) if margins else 0.0
    delta = math.sqrt(max((p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2, 0.0))
    epsilon = math.sqrt(max((u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2, 0.0))
    return p_a - p_b - delta, p_a - p_b + epsilon


def _cluster_bootstrap(sample: Sample, resamples: int, seed: int) -> tuple[float, float, str]:
    """One seed: BCa over clusters of the ratio (sum of scores) / (examples); percentile where BCa is
    undefined (every cluster mean equal, or too few clusters for its jackknife)."""
    sums, sizes = sample.cluster_sums()
    if sample.n_clusters < 2 or np.ptp(sums[0] / sizes) == 0.0:
        mean = float(sample.scores.mean())
        return mean, mean, "no spread across clusters"

    def ratio(total: np.ndarray, count: np.ndarray, axis: int = -1) -> np.ndarray:
        return total.sum(axis=axis) / count.sum(axis=axis)

    for method in ("BCa", "percentile"):
        result = scipy_stats.bootstrap((sums[0], sizes), ratio, paired=True, vectorized=True, n_resamples=resamples,
                                       confidence_level=LEVEL, method=method, rng=np.random.default_rng(seed))  # fmt: skip
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high), f"cluster bootstrap ({method})"
    raise ValueError("the cluster bootstrap gave no finite interval")


def _two_stage(sample: Sample, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean: clusters drawn with replacement (one draw for all seeds: they
    share the examples), then seeds with replacement. A bootstrap over S seeds shrinks their spread by
    (S - 1) / S, so each resample's seed deviation is scaled back by sqrt(S / (S - 1))."""
    rng = np.random.default_rng(seed)
    seeds, n_clusters = sample.seeds, sample.n_clusters
    sums, sizes = sample.cluster_sums()
    cluster_draw = rng.integers(0, n_clusters, size=(resamples, n_clusters))
    seed_draw = rng.integers(0, seeds, size=(resamples, seeds))
    every_seed = sums[:, cluster_draw].sum(axis=2).T / sizes[cluster_draw].sum(axis=1)[:, None]
    centre = every_seed.mean(axis=1)
    drawn = np.take_along_axis(every_seed, seed_draw, axis=1).mean(axis=1)
    means = centre + (drawn - centre) * np.sqrt(seeds / (seeds - 1))
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)
