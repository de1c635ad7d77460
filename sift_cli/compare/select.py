"""The stated rule that picks each method's learning rate, on validation scores only.

Rule: among a method's learning rates, keep those whose validation utility (the app's per-token NLL,
averaged over seeds and examples) stays within log(1 + tolerance) of the base model's, i.e. utility
perplexity at most `tolerance` worse; of those, take the one with the best validation constraint (the
highest or the lowest, as the app declares its direction). When no rate qualifies, take the one with
the best utility and say so: the method could not move the constraint without hurting utility beyond
the tolerance on this budget. Ties go to the smaller learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sift_cli.apps.base import CompareMetrics


@dataclass(frozen=True)
class Choice:
    method: str
    lr: float
    utility: float
    constraint: float
    qualified: bool


def validation_means(scores: list[dict[str, dict[str, list[float]]]], metrics: CompareMetrics) -> tuple[float, float]:
    """(utility, constraint) on validation, averaged over the seeds' scores and the examples."""
    utility = float(np.mean([np.mean(seed["validation"][metrics.utility.name]) for seed in scores]))
    constraint = float(np.mean([np.mean(seed["validation"][metrics.constraint.name]) for seed in scores]))
    return utility, constraint


def choose(
    method: str,
    by_lr: dict[float, list[dict[str, dict[str, list[float]]]]],
    base_utility: float,
    tolerance: float,
    metrics: CompareMetrics,
) -> Choice:
    """The learning rate the rule picks for `method` from its runs' scores, keyed by lr."""
    limit = base_utility + math.log1p(tolerance)
    sign = 1.0 if metrics.constraint.higher_is_better else -1.0
    candidates = []
    for lr, scores in sorted(by_lr.items()):
        utility, constraint = validation_means(scores, metrics)
        candidates.append(Choice(method, lr, utility, constraint, utility <= limit))
    qualified = [choice for choice in candidates if choice.qualified]
    if qualified:
        return max(qualified, key=lambda choice: (sign * choice.constraint, -choice.lr))
    return min(candidates, key=lambda choice: (choice.utility, choice.lr))


def rule_text(metrics: CompareMetrics, tolerance: float, base_utility: float) -> str:
    """The rule in words, with the numbers it used, for compare.json."""
    best = "highest" if metrics.constraint.higher_is_better else "lowest"
    return (
        f"per method, the lr with the {best} validation {metrics.constraint.name} among those whose validation "
        f"{metrics.utility.name} is within log(1 + {tolerance}) of the base model's ({base_utility:.4g}); "
        f"else the lr with the lowest {metrics.utility.name}"
    )
