"""What a comparison runs: every (method, learning rate, seed) as an ordinary run directory.

Each cell of the grid is a run under `<compare dir>/runs/<method>-lr<lr>-seed<seed>`, trained by the same
`sift train` code (so an interrupted comparison resumes each unfinished run from its checkpoint), or,
for `muon+pome`, the POME edit of the Muon run of the same lr and seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sift_cli.spec import RunSpec, set_path, validate_spec

METHODS = ("sift", "muon", "adamw", "blur", "muon+pome")
POME = "muon+pome"


class CompareOptions(BaseModel):
    """The comparison's own settings (the base spec says everything else)."""

    model_config = ConfigDict(extra="forbid")

    grid: dict[str, list[float]] = Field(description="method -> learning rates to try")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    steps: int | None = Field(None, ge=1, description="optimizer steps per run (null: the base spec's)")
    utility_tolerance: float = Field(
        0.10, ge=0.0, description="a learning rate qualifies while validation utility perplexity stays within this share of the base model's"
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
        return grid


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    method: str
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-lr{self.lr:g}-seed{self.seed}"

    @property
    def config(self) -> tuple[str, float]:
        """The configuration this run is one seed of."""
        return self.method, self.lr


def cells(options: CompareOptions) -> list[Cell]:
    """Every run, Muon runs before their POME edits."""
    order = sorted(options.grid, key=lambda method: method == POME)
    return [Cell(method, lr, seed) for method in order for lr in options.grid[method] for seed in options.seeds]


def cell_spec(base: RunSpec, cell: Cell, runs_dir: Path, steps: int | None) -> RunSpec:
    """The base spec with this cell's method, lr, seed and output (the Muon run's for a POME edit)."""
    tree: dict[str, Any] = base.model_dump(mode="json")
    trained = Cell("muon", cell.lr, cell.seed) if cell.method == POME else cell
    set_path(tree, "optim.method", trained.method)
    set_path(tree, "optim.lr", cell.lr)
    set_path(tree, "train.seed", cell.seed)
    set_path(tree, "output", str((runs_dir / trained.name).resolve()))
    if steps is not None:
        set_path(tree, "train.steps", steps)
    return validate_spec(tree)
