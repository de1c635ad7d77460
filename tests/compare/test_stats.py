"""The comparison's statistics: exact against enumeration, equal to the libraries they come from, and
calibrated by simulation (methods truly equal: how often is a difference marked; do intervals cover)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from sift_cli.apps.base import CompareMetrics, Metric
from sift_cli.compare.report import paired_tests
from sift_cli.compare.stats import Sample, holm, mean_interval, newcombe_paired, noninferiority, paired_difference, seed_sign_flip


@pytest.mark.parametrize("n", [2, 3, 6, 10])
def test_sign_flip_equals_enumeration(n: int) -> None:
    """Two-sided p = share of the 2^n sign vectors whose |mean| reaches the observed one; never below
    2 / 2^n (the issue's example: n=3 differences .01, .02, .03 give 0.25, not 0)."""
    rng = np.random.default_rng(n)
    d = rng.normal(0.3, 1.0, size=n) if n != 3 else np.array([0.01, 0.02, 0.03])
    flips = np.array(list(itertools.product([1.0, -1.0], repeat=n)))
    expected = np.mean(np.abs((flips * d).mean(axis=1)) >= abs(d.mean()) - 1e-12)
    p, floor = seed_sign_flip(d)
    assert p == pytest.approx(expected) and floor == pytest.approx(2 / 2**n) and p >= floor
    if n == 3:
        assert p == pytest.approx(0.25)


def test_holm_equals_statsmodels() -> None:
    rng = np.random.default_rng(5)
    for size in (1, 2, 7, 16):
        p = rng.uniform(0, 0.2, size=size).tolist()
        p[0] = p[-1]  # a tie
        expected = multipletests(p, method="holm")[1]
        assert holm([*p, None]) == pytest.approx([*expected, None])


def test_one_seed_gets_no_test() -> None:
    a = Sample(np.array([[1.0, 2.0, 3.0]]), np.arange(3))
    b = Sample(np.array([[0.0, 0.0, 0.0]]), np.arange(3))
    result = paired_difference(a, b)
    assert result.p_value is None and not result.significant and result.difference == pytest.approx(2.0)


def test_rates_get_clopper_pearson_and_paired_newcombe() -> None:
    """0 of 20 is [0, 0.168], not [0, 0]; Newcombe's paired interval is not degenerate without discordant pairs."""
    interval = mean_interval(Sample(np.zeros(20), np.arange(20), binary=True))
    assert (interval.low, interval.high) == pytest.approx(proportion_confint(0, 20, alpha=0.05, method="beta"))
    assert interval.high == pytest.approx(0.1684, abs=1e-4)
    low, high = newcombe_paired(np.zeros(20, dtype=bool), np.zeros(20, dtype=bool))
    assert low < 0.0 < high


def test_newcombe_covers_by_enumeration() -> None:
    """Exact coverage of the paired interval over every 2x2 table of n=15 pairs (multinomial weights)."""
    n, cells = 15, np.array([0.3, 0.15, 0.05, 0.5])  # both, only a, only b, neither
    truth = cells[1] - cells[2]
    coverage = 0.0
    for both in range(n + 1):
        for only_a in range(n + 1 - both):
            for only_b in range(n + 1 - both - only_a):
                counts = [both, only_a, only_b, n - both - only_a - only_b]
                a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * counts[3], dtype=bool)
                b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * counts[3], dtype=bool)
                low, high = newcombe_paired(a, b)
                if low <= truth <= high:
                    coverage += scipy_stats.multinomial.pmf(counts, n, cells)
    assert 0.93 <= coverage <= 0.99


def test_cluster_bootstrap_of_independent_examples_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    scores = rng.lognormal(size=200)
    ours = mean_interval(Sample(scores, np.arange(200)))
    theirs = scipy_stats.bootstrap((scores,), np.mean, n_resamples=10_000, method="BCa", rng=np.random.default_rng(2))
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=0.02)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=0.02)
    assert ours.method == "cluster bootstrap (BCa)"


def test_clusters_widen_the_interval() -> None:
    """50 passages of 6 correlated responses: resampling responses as if independent is too narrow."""
    rng = np.random.default_rng(3)
    clusters = np.repeat(np.arange(50), 6)
    scores = rng.normal(size=50)[clusters] + 0.3 * rng.normal(size=300)
    clustered = mean_interval(Sample(scores, clusters))
    naive = mean_interval(Sample(scores, np.arange(300)))
    assert (clustered.high - clustered.low) > 1.8 * (naive.high - naive.low) and clustered.clusters == 50


def test_noninferiority_over_seeds() -> None:
    """Utility within the margin on every one of 6 seeds is shown non-inferior (p = 1/64); worse by more
    than the margin is not."""
    rng = np.random.default_rng(4)
    base = rng.normal(3.0, 0.1, size=(6, 40))
    assert noninferiority(Sample(base + 0.01, np.arange(40)), Sample(base, np.arange(40)), margin=0.1) == pytest.approx(1 / 64)
    assert noninferiority(Sample(base + 0.2, np.arange(40)), Sample(base, np.arange(40)), margin=0.1) == pytest.approx(1.0)
    assert noninferiority(Sample(base[:1], np.arange(40)), Sample(base[:1], np.arange(40)), margin=0.1) is None


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same seeds and examples"):
        paired_difference(Sample(np.ones(3), np.arange(3)), Sample(np.ones(4), np.arange(4)))
    with pytest.raises(ValueError, match="NaN"):
        mean_interval(Sample(np.array([1.0, np.nan]), np.arange(2)))
    with pytest.raises(ValueError, match="cluster labels"):
        Sample(np.ones(3), np.arange(2))


METRICS = CompareMetrics(utility=Metric("retain_nll", "retain NLL", False), constraint=Metric("forget_nll", "forget NLL", True))


def simulated(rng: np.random.Generator, seeds: int, n: int, cluster_size: int) -> tuple[dict[str, list], dict[str, float]]:
    """Scores of sift, muon and adamw, truly equal methods: shared example effects (correlated within a
    cluster), a per-run offset (seed noise) and per-run example noise, skewed; the true mean is known."""
    k = n // cluster_size
    clusters = np.repeat(np.arange(k), cluster_size)
    ids = [f"e{i}" for i in range(n)]
    methods: dict[str, list] = {}
    effects = {name: rng.normal(size=k)[clusters] * 0.7 + rng.normal(size=n) * 0.7 for name in ("retain_nll", "forget_nll")}
    for method in ("sift", "muon", "adamw"):
        per_seed = []
        for _ in range(seeds):
            run = {}
            for name, effect in effects.items():
                score = effect + rng.normal() * 0.5 + rng.lognormal(0.0, 0.75, size=n) - np.exp(0.75**2 / 2)
                run[name] = {"id": ids, "cluster": clusters.tolist(), "score": score.tolist()}
            per_seed.append({"test": run})
        methods[method] = per_seed
    return methods, {"retain_nll": 0.0, "forget_nll": 0.0}


@pytest.mark.parametrize("seeds", [1, 3, 5, 8])
@pytest.mark.parametrize("n,cluster_size", [(6, 1), (20, 1), (200, 1), (200, 5)])
def test_equal_methods_are_marked_at_most_at_the_nominal_rate(seeds: int, n: int, cluster_size: int) -> None:
    """The whole reporting pipeline (paired tests, Holm, primary) on truly equal methods: the share of
    comparisons with any mark stays within 5% plus three Monte Carlo standard errors. The previous
    bootstrap marked 92% of such comparisons with one seed."""
    rng = np.random.default_rng(seeds * 1000 + n + cluster_size)
    repeats = 200
    marked = 0
    for _ in range(repeats):
        chosen, _ = simulated(rng, seeds, n, cluster_size)
        tests = paired_tests(chosen, "muon", METRICS, tolerance=0.1, resamples=500)
        marked += any(test.significant for found in tests.differences.values() for test in found.values())
    assert marked / repeats <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / repeats), f"{marked} of {repeats} marked"


@pytest.mark.parametrize("seeds,n,cluster_size,least", [(1, 200, 5, 0.90), (1, 20, 1, 0.85), (3, 200, 5, 0.82), (5, 200, 5, 0.84), (8, 200, 5, 0.90)])
def test_intervals_cover_the_mean_they_claim(seeds: int, n: int, cluster_size: int, least: float) -> None:
    """Coverage of a method's 95% interval, measured: one seed covers the mean of that run's examples'
    population (seed noise held fixed: its numbers are conditional on the run); several seeds cover the
    mean over seeds and examples. Few seeds undercover (measured with 300 repeats: 0.87 at 3 seeds, 0.89
    at 5, 0.95 at 8); the floors are those less Monte Carlo error, and the README states them."""
    rng = np.random.default_rng(seeds * 7 + n)
    repeats, covered = 150, 0
    for _ in range(repeats):
        k = n // cluster_size
        clusters = np.repeat(np.arange(k), cluster_size)
        offsets = rng.normal(size=(seeds, 1)) * (0.0 if seeds == 1 else 0.5)
        effect = rng.normal(size=k)[clusters] * 0.7 + rng.normal(size=n) * 0.7
        scores = effect + offsets + rng.lognormal(0.0, 0.75, size=(seeds, n)) - np.exp(0.75**2 / 2)
        interval = mean_interval(Sample(scores, clusters), resamples=2000)
        covered += interval.low <= 0.0 <= interval.high
    assert covered / repeats >= least


def test_secondary_tests_are_gated_by_the_primary() -> None:
    """AdamW far ahead of Muon on 8 seeds is only called a difference once SIFT's primary one is."""
    rng = np.random.default_rng(9)
    chosen, _ = simulated(rng, 8, 40, 1)
    for seed in chosen["adamw"]:
        seed["test"]["forget_nll"]["score"] = [value + 5.0 for value in seed["test"]["forget_nll"]["score"]]
    gated = paired_tests(chosen, "muon", METRICS, tolerance=0.1, resamples=500)
    primary = gated.differences["sift"]["forget_nll"]
    adamw = gated.differences["adamw"]["forget_nll"]
    assert adamw.p_value == pytest.approx(2 / 256) and adamw.p_adjusted >= primary.p_value
    assert adamw.significant == (primary.p_value < 0.05)
    for seed in chosen["sift"]:
        seed["test"]["forget_nll"]["score"] = [value + 5.0 for value in seed["test"]["forget_nll"]["score"]]
    opened = paired_tests(chosen, "muon", METRICS, tolerance=0.1, resamples=500)
    assert opened.differences["sift"]["forget_nll"].significant and opened.differences["adamw"]["forget_nll"].significant
