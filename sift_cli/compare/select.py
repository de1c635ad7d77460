"""The stated rule that picks each method's learning rate, on validation scores only.

Rule: among a method's learning rates, keep those whose validation utility (mean retain NLL over seeds
and texts) stays within log(1 + tolerance) of the base model's, i.e. retain perplexity at most
`tolerance` worse; of those, take the one with the highest validation constraint (forget NLL). When no
rate qualifies, take the one with the best utility and say so: the method could not forget without
hurting utility beyond the tolerance on this budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

UTILITY = "retain_nll"
CONSTRAINT = "forget_nll"


@dataclass(frozen=True)
class Choice:
    method: str
    lr: float
    utility: float
    constraint: float
    qualified: bool


def validation_means(scores: list[dict[str, dict[str, list[float]]]]) -> tuple[float, float]:
    """(utility, constraint) on validation, averaged over the seeds' scores and the texts."""
    utility = float(np.mean([np.mean(seed["validation"][UTILITY]) for seed in scores]))
    constraint = float(np.mean([np.mean(seed["validation"][CONSTRAINT]) for seed in scores]))
    return utility, constraint


def choose(
    method: str, by_lr: dict[float, list[dict[str, dict[str, list[float]]]]], base_utility: float, tolerance: float
) -> Choice:
    """The learning rate the rule picks for `method` from its runs' scores, keyed by lr."""
    limit = base_utility + math.log1p(tolerance)
    candidates = []
    for lr, scores in sorted(by_lr.items()):
        utility, constraint = validation_means(scores)
        candidates.append(Choice(method, lr, utility, constraint, utility <= limit))
    qualified = [choice for choice in candidates if choice.qualified]
    if qualified:
        return max(qualified, key=lambda choice: (choice.constraint, -choice.lr))
    return min(candidates, key=lambda choice: (choice.utility, choice.lr))
