"""The stated rule that picks each method's configuration (learning rate and axis values), on validation
scores of the selection seeds only.

Rule: among a method's configurations, keep those whose validation utility (the app's per-token NLL,
averaged over seeds and examples) stays within log(1 + tolerance) of the base model's, i.e. utility
perplexity at most `tolerance` worse; of those, take the one with the best validation constraint (the
highest or the lowest, as the app declares its direction). When no rate qualifies, take the one with
the best utility and say so: the method could not move the constraint without hurting utility beyond
the tolerance on this budget. Ties go to the configuration listed first (the smaller learning rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sift_cli.apps.base import CompareMetrics
from sift_cli.compare.grid import Config
from sift_cli.compare.scores import Scored

SeedScores = list[dict[str, dict[str, Scored]]]
"""One configuration's scores, one {split: {metric: scored}} per seed."""


@dataclass(frozen=True)
class Choice:
    config: Config
    utility: float
    constraint: float
    qualified: bool
    edges: tuple[str, ...] = ()
    """Axes along which the choice sits at the end of its grid (its front may go on)."""

    @property
    def method(self) -> str:
        return self.config.method


def validation_means(scores: SeedScores, metrics: CompareMetrics) -> tuple[float, float]:
    """(utility, constraint) on validation, averaged over the seeds' scores and the examples."""
    utility = float(np.mean([np.mean(seed["validation"][metrics.utility.name]["score"]) for seed in scores]))
    constraint = float(np.mean([np.mean(seed["validation"][metrics.constraint.name]["score"]) for seed in scores]))
    return utility, constraint


def choose(by_config: dict[Config, SeedScores], base_utility: float, tolerance: float, metrics: CompareMetrics) -> Choice:
    """The configuration the rule picks from one method's runs' scores (keyed in grid order)."""
    limit = base_utility + math.log1p(tolerance)
    sign = 1.0 if metrics.constraint.higher_is_better else -1.0
    candidates = []
    for config, scores in by_config.items():
        utility, constraint = validation_means(scores, metrics)
        candidates.append(Choice(config, utility, constraint, utility <= limit))
    qualified = [choice for choice in candidates if choice.qualified]
    if qualified:
        return max(qualified, key=lambda choice: sign * choice.constraint)
    return min(candidates, key=lambda choice: choice.utility)


def rule_text(metrics: CompareMetrics, tolerance: float, base_utility: float) -> str:
    """The rule in words, with the numbers it used, for compare.json."""
    best = "highest" if metrics.constraint.higher_is_better else "lowest"
    return (
        f"per method, the configuration with the {best} validation {metrics.constraint.name} among those whose validation "
        f"{metrics.utility.name} is within log(1 + {tolerance}) of the base model's ({base_utility:.4g}); "
        f"else the configuration with the lowest {metrics.utility.name}"
    )
