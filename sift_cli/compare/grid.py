"""What a comparison runs: every configuration of every method, on selection seeds, then the chosen one of
each method on report seeds, each as an ordinary run directory.

A configuration is a method, a learning rate and the values of the method's own axes (any spec key:
Muon's and AdamW's `optim.lam`, SIFT's `optim.eps` and `optim.k`, BLUR's `optim.blur_alpha`), because a
comparison at one fixed value of a method's trade-off knob compares one point of its front. Each run is
`<compare dir>/runs/<method>-lr<lr>[-<key><value>...]-seed<seed>`, trained by the same `sift train` code
(an interrupted comparison resumes each unfinished run from its checkpoint), or, for `muon+pome`, the
POME edit of the Muon run of the same configuration and seed.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sift_cli.spec import RunSpec, set_path, validate_spec

METHODS = ("sift", "muon", "adamw", "blur", "muon+pome")
POME = "muon+pome"
FIXED_KEYS = ("optim.method", "optim.lr", "train.seed", "output", "train.steps")
"""Set by the comparison itself, so never an axis."""


class CompareOptions(BaseModel):
    """The comparison's own settings (the base spec says everything else)."""

    model_config = ConfigDict(extra="forbid")

    grid: dict[str, list[float]] = Field(description="method -> learning rates to try")
    axes: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict, description="method -> {spec key: values}: the method's own knobs, crossed with its learning rates"
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="selection seeds: every configuration is trained on them")
    report_seeds: list[int] | None = Field(
        None, description="seeds the chosen configurations are reported on (null: the selection seeds, which biases the report upward)"
    )
    steps: int | None = Field(None, ge=1, description="optimizer steps per run (null: the base spec's)")
    utility_tolerance: float = Field(
        0.10, ge=0.0, description="a configuration qualifies while validation utility perplexity stays within this share of the base model's"
    )
    reference: str = Field("muon", description="the method every other is tested against, pairwise")
    pome_rank_fraction: float = Field(0.5, gt=0.0, le=1.0)

    @field_validator("grid")
    @classmethod
    def _known_methods(cls, grid: dict[str, list[float]]) -> dict[str, list[float]]:
        unknown = [method for method in grid if method not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        if not grid:
            raise ValueError("no method to compare; pass --method NAME=LR[,LR...]")
        for method, rates in grid.items():
            if not rates or any(not rate > 0 for rate in rates):
                raise ValueError(f"{method}: learning rates must be positive numbers, got {rates}")
            if len(set(rates)) != len(rates):
                raise ValueError(f"{method}: learning rate listed twice in {rates}")
        return grid

    @model_validator(mode="after")
    def _axes_and_seeds(self) -> CompareOptions:
        for method, axes in self.axes.items():
            if method not in self.grid:
                raise ValueError(f"--axis {method}:...: {method} has no learning rates; add --method {method}=LR")
            for key, values in axes.items():
                if key in FIXED_KEYS:
                    raise ValueError(f"--axis {method}:{key}: the comparison sets {key} itself; use --method or --seeds")
                if not values or len({repr(v) for v in values}) != len(values):
                    raise ValueError(f"--axis {method}:{key} needs distinct values, got {values}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds lists a seed twice: {self.seeds}")
        if self.report_seeds is not None:
            if not self.report_seeds or len(set(self.report_seeds)) != len(self.report_seeds):
                raise ValueError(f"--report-seeds needs distinct seeds, got {self.report_seeds}")
            shared = sorted(set(self.seeds) & set(self.report_seeds))
            if shared:
                raise ValueError(f"seed {shared[0]} is both a selection and a report seed; report seeds must take no part in choosing")
        return self

    @property
    def reported_on(self) -> list[int]:
        return self.report_seeds if self.report_seeds is not None else self.seeds


@dataclass(frozen=True)
class Config:
    """One configuration of a method: its learning rate and the values of its axes."""

    method: str
    lr: float
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.method}-lr{self.lr:g}" + "".join(f"-{_short(key)}{_value(value)}" for key, value in self.settings)

    @property
    def label(self) -> str:
        return ", ".join([f"lr {self.lr:g}", *(f"{key.split('.')[-1]} {_value(value)}" for key, value in self.settings)])

    def trained(self) -> Config:
        """The configuration whose run is trained: a POME edit's Muon run."""
        return Config("muon", self.lr, self.settings) if self.method == POME else self


@dataclass(frozen=True)
class Cell:
    """One run: a configuration on one seed."""

    config: Config
    seed: int

    @property
    def name(self) -> str:
        return f"{self.config.name}-seed{self.seed}"

    @property
    def method(self) -> str:
        return self.config.method


def _short(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "", key.split(".")[-1])


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else re.sub(r"[^A-Za-z0-9_.+-]", "", str(value))


def configs(options: CompareOptions, method: str) -> list[Config]:
    """Every configuration of `method`: its learning rates crossed with its axes."""
    axes = options.axes.get(method, {})
    keys = sorted(axes)
    return [Config(method, lr, tuple(zip(keys, values))) for lr in options.grid[method] for values in itertools.product(*(axes[k] for k in keys))]


def selection_cells(options: CompareOptions) -> list[Cell]:
    """Every configuration on every selection seed, Muon runs before their POME edits."""
    order = sorted(options.grid, key=lambda method: method == POME)
    return [Cell(config, seed) for method in order for config in configs(options, method) for seed in options.seeds]


def report_cells(options: CompareOptions, chosen: dict[str, Config]) -> list[Cell]:
    """The chosen configuration of each method on each report seed (none when reporting on selection seeds)."""
    if options.report_seeds is None:
        return []
    order = sorted(chosen, key=lambda method: method == POME)
    return [Cell(chosen[method], seed) for method in order for seed in options.report_seeds]


def grid_sizes(options: CompareOptions) -> dict[str, int]:
    return {method: len(configs(options, method)) for method in options.grid}


def on_edge(config: Config, options: CompareOptions) -> list[str]:
    """The axes (lr included) along which the chosen configuration sits at the end of its grid: the
    method's front may continue past it, so its grid should be extended."""
    axes = {"lr": sorted(options.grid[config.method]), **options.axes.get(config.method, {})}
    current = {"lr": config.lr, **dict(config.settings)}
    edges = []
    for key, values in axes.items():
        if len(values) < 2:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ends = (min(values), max(values)) if numeric else (values[0], values[-1])
        if current[key] in ends:
            edges.append(key.split(".")[-1])
    return edges


def cell_spec(base: RunSpec, cell: Cell, runs_dir: Path, steps: int | None) -> RunSpec:
    """The base spec with this cell's method, lr, axis values, seed and output (the Muon run's for a
    POME edit)."""
    tree: dict[str, Any] = base.model_dump(mode="json")
    trained = Cell(cell.config.trained(), cell.seed)
    set_path(tree, "optim.method", trained.method)
    set_path(tree, "optim.lr", cell.config.lr)
    for key, value in cell.config.settings:
        set_path(tree, key, value)
    set_path(tree, "train.seed", cell.seed)
    set_path(tree, "output", str((runs_dir / trained.name).resolve()))
    if steps is not None:
        set_path(tree, "train.steps", steps)
    return validate_spec(tree)
