"""The shape every application module has, and the objective pair the training loop consumes.

An app module exposes, at module level:
- `Options`: a pydantic model of the app's own spec section (`objective:` in the YAML), extra keys forbidden;
- `DEFAULT_TRAINABLE`: regex of the parameters the app trains by default (the spec may override it);
- `EVAL_TABLES`: the prepared tables its `evaluate` reads (a run copies them, so it is self-contained);
- `build_objectives(model, tokenizer, spec, data) -> Objectives`;
- `evaluate(model, tokenizer, spec, run, options) -> dict` (metrics, also written under run/eval/);
- for `sift compare`: `COMPARE_METRICS` (its per-example metrics, which one is the utility and which
  the constraint, and their directions), `COMPARE_GRID` (default learning rates per method around its
  CPU preset), `compare_examples(spec, data) -> {group: rows}` (the held-out examples, which compare
  splits into validation and test), `compare_scores(model, tokenizer, spec, groups, batch_size)
  -> {metric: (rows scored, their scores)}` and optionally `compare_cluster(row) -> str` (rows that are
  not independent, e.g. responses to one passage, share a cluster: they are split and resampled together).
`prepare` functions are app-specific (their sources differ) and are called by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, TypeVar

import torch
from pydantic import BaseModel
from torch import nn

if TYPE_CHECKING:
    from sift_cli.spec import RunSpec
    from sift_cli.store.prepared import PreparedData
    from sift_cli.store.rundir import RunDir

Batch = dict[str, torch.Tensor]
BaseModelT = TypeVar("BaseModelT", bound=BaseModel)
Loss = Callable[[nn.Module, Batch], torch.Tensor]
ScoredRows = tuple[list[Any], list[float]]
"""The held-out rows a metric scored and their per-row scores, aligned (a metric may skip rows it has
nothing to score on, e.g. a response without a hallucinated token)."""


@dataclass(frozen=True)
class Fit:
    """How one objective's examples fit `data.max_length`: of `total`, `dropped` lost everything the
    objective trains on and `cut` lost their end (an answer's last tokens, its end-of-turn token)."""

    total: int
    dropped: int = 0
    cut: int = 0


@dataclass
class Objectives:
    """Two datasets, two collators and two losses: f (keep utility) and g (the constraint).

    The training loop draws `f_data`/`g_data` examples by index (deterministically from the seed and
    the step, so a resumed run sees the same batches), collates them, moves the tensors to the
    device and calls the losses; the losses return a scalar mean over the batch.
    """

    f_data: Sequence[Any]
    g_data: Sequence[Any]
    collate_f: Callable[[list[Any]], Batch]
    collate_g: Callable[[list[Any]], Batch]
    loss_f: Loss
    loss_g: Loss
    modules: list[nn.Module] = field(default_factory=list)
    """Extra modules the losses use (e.g. a frozen reference model) that must follow the model's device."""
    notes: list[str] = field(default_factory=list)
    """One-line facts about how the objectives were built (e.g. what a memory saving saved), printed at start."""
    fits: dict[str, Fit] = field(default_factory=dict)
    """Per objective ("f", "g"), what `data.max_length` dropped or cut; training prints it and refuses a
    run that drops more than `data.max_dropped` of an objective's examples."""


@dataclass(frozen=True)
class Metric:
    """One per-example score a comparison reports.

    `binary` scores are 1.0/0.0 outcomes (answered right, refused): a single run's rate gets a
    Clopper-Pearson interval and a paired difference Newcombe's; the others (per-example NLLs) a cluster
    bootstrap."""

    name: str
    label: str
    higher_is_better: bool
    binary: bool = False

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


@dataclass(frozen=True)
class CompareMetrics:
    """What `sift compare` chooses learning rates by: the constraint to push, subject to the utility.

    The utility is a per-token NLL (lower is better), because the rule's tolerance is a perplexity
    ratio: a rate qualifies while exp(utility) stays within (1 + tolerance) of the base model's.
    `extra` metrics are reported with intervals and paired tests but take no part in the choice.
    The app's primary comparison, tested first and not adjusted, is SIFT against the reference method
    on the constraint; every other method x metric test is Holm-adjusted and gated by it."""

    utility: Metric
    constraint: Metric
    extra: tuple[Metric, ...] = ()

    def __post_init__(self) -> None:
        if self.utility.higher_is_better or self.utility.binary:
            raise ValueError(f"the utility {self.utility.name} must be a per-token NLL (lower is better)")

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (self.utility, self.constraint, *self.extra)


@dataclass
class EvalOptions:
    """What `sift evaluate` asks of an app."""

    tasks: list[str] | None = None
    limit: int | None = None
    batch_size: int = 8
    progress: bool = True
    """Draw lm-eval's per-request progress bars (off where a caller prints its own summary, e.g. the demo)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def objective(self, options: type[BaseModelT], spec: RunSpec) -> BaseModelT:
        """The app's `objective:` options of `spec`, with those of `extra` that the app knows overriding
        them for this evaluation (e.g. another judge); only overrides need validating again."""
        overrides = {key: value for key, value in self.extra.items() if key in options.model_fields}
        if not overrides:
            return spec.options(options)
        return options.model_validate({**spec.objective, **overrides})


class App(Protocol):
    Options: type[BaseModel]
    DEFAULT_TRAINABLE: str
    EVAL_TABLES: tuple[str, ...]
    COMPARE_METRICS: CompareMetrics
    COMPARE_GRID: dict[str, list[float]]

    def build_objectives(self, model: nn.Module, tokenizer: Any, spec: RunSpec, data: PreparedData) -> Objectives: ...

    def evaluate(
        self, model: nn.Module, tokenizer: Any, spec: RunSpec, run: RunDir | None, options: EvalOptions
    ) -> dict: ...

    def compare_examples(self, spec: RunSpec, data: PreparedData) -> dict[str, list[Any]]: ...

    def compare_scores(
        self, model: nn.Module, tokenizer: Any, spec: RunSpec, groups: dict[str, list[Any]], batch_size: int
    ) -> dict[str, ScoredRows]: ...
