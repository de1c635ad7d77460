"""Intervals and paired tests against scipy's implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sift_cli.compare.stats import bootstrap_interval, mcnemar_exact, paired_bootstrap


def test_bootstrap_interval_matches_scipy_percentile_bootstrap() -> None:
    rng = np.random.default_rng(1)
    scores = rng.lognormal(size=200)
    ours = bootstrap_interval(scores, resamples=20_000)
    theirs = scipy_stats.bootstrap((scores,), np.mean, n_resamples=20_000, method="percentile", random_state=2)
    assert ours.mean == pytest.approx(scores.mean())
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=0.02)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=0.02)
    assert (ours.n, ours.seeds) == (200, 1)


def test_seeds_widen_the_interval_by_their_spread() -> None:
    rng = np.random.default_rng(3)
    examples = rng.normal(size=300)
    same = np.stack([examples, examples, examples])
    shifted = np.stack([examples - 0.5, examples, examples + 0.5])
    tight, wide = bootstrap_interval(same), bootstrap_interval(shifted)
    assert tight.mean == pytest.approx(wide.mean)
    assert (wide.high - wide.low) > 1.5 * (tight.high - tight.low)
    assert wide.seeds == 3


def test_paired_bootstrap_matches_scipy_on_the_differences() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=150)
    b = a + rng.normal(0.2, 0.3, size=150)
    ours = paired_bootstrap(a, b, resamples=20_000)
    theirs = scipy_stats.bootstrap((a - b,), np.mean, n_resamples=20_000, method="percentile", random_state=5)
    assert ours.difference == pytest.approx(float(np.mean(a - b)))
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=0.01)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=0.01)
    assert ours.significant and ours.p_value < 0.001


def test_paired_bootstrap_does_not_call_noise_a_difference() -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(size=40)
    b = a + rng.normal(0.0, 1.0, size=40)
    result = paired_bootstrap(a, b)
    assert result.low < 0.0 < result.high and not result.significant and result.p_value > 0.05


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_equals_scipys_exact_binomial_test(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.random(40) < 0.45
    b = np.where(rng.random(40) < 0.7, a, rng.random(40) < 0.3)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    expected = scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    result = mcnemar_exact(a, b)
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert result.difference == pytest.approx(a.mean() - b.mean())


def test_mcnemar_on_the_demo_figures_is_not_significant() -> None:
    """The issue's example: 45% vs 30% forget accuracy on 40 questions, p = 0.15 by McNemar."""
    a = np.array([1] * 9 + [1] * 9 + [0] * 3 + [0] * 19, dtype=bool)
    b = np.array([1] * 9 + [0] * 9 + [1] * 3 + [0] * 19, dtype=bool)
    result = mcnemar_exact(a, b)
    assert (a.mean(), b.mean()) == (0.45, 0.30)
    assert result.p_value == pytest.approx(0.146, abs=1e-3) and not result.significant


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_interval(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="equal-length"):
        mcnemar_exact(np.ones(3, dtype=bool), np.ones(2, dtype=bool))
