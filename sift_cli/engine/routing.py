"""Which update each trained parameter takes: spectral (SIFT / Muon) or AdamW, and which gated blocks it holds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .config import OptimizerConfig, RowSplits

RouteKind = Literal["spectral", "adamw"]


@dataclass(frozen=True)
class Block:
    """One gated unit of a spectral parameter: the whole matrix, or a row slice of a fused one.

    suffix: "" for a whole matrix, "[label]" for a slice; it tells apart the slices' state in the
    parameter's optimizer state (subspace caches)."""

    name: str
    rows: slice
    shape: tuple[int, int]
    suffix: str = ""


@dataclass(frozen=True)
class Route:
    """kind: the update family; candidate: the block may take the SIFT branch when its objectives
    conflict; splits: row slices that are gated, orthogonalized and reported as separate blocks."""

    name: str
    shape: tuple[int, ...]
    kind: RouteKind
    candidate: bool
    splits: RowSplits = ()

    def blocks(self) -> list[Block]:
        """The blocks the gate sees: `name` itself, or `name[label]` per row slice."""
        if not self.splits:
            return [Block(self.name, slice(None), (self.shape[0], self.shape[-1]))]
        blocks, start = [], 0
        for label, rows in self.splits:
            suffix = f"[{label}]"
            blocks.append(Block(self.name + suffix, slice(start, start + rows), (rows, self.shape[-1]), suffix))
            start += rows
        return blocks


def route_parameters(named_params: list[tuple[str, nn.Parameter]], cfg: OptimizerConfig) -> list[Route]:
    """Route every trained parameter by its shape and name, whatever cfg.method is.

    Only hidden 2-D matrices are spectral: embeddings and lm_head rows are looked up independently and
    norms/biases are not matrices, so an orthogonalized update means nothing for them. Candidates are
    the spectral blocks whose name matches cfg.sift_regex. The method decides what a route means: under
    "muon" no block takes the SIFT branch, under "adamw" and "blur" spectral blocks take AdamW too (they
    keep the "spectral" param group and its lr, so logs and schedules see the same blocks). A spectral
    parameter matching a cfg.block_splits pattern is split into row blocks, which must cover its rows.
    """
    adamw_pattern = re.compile(cfg.adamw_regex)
    sift_pattern = re.compile(cfg.sift_regex)
    split_patterns = [(re.compile(pattern), tuple(splits)) for pattern, splits in cfg.block_splits.items()]
    routes = []
    for name, p in named_params:
        spectral = p.ndim == 2 and adamw_pattern.search(name) is None
        candidate = spectral and sift_pattern.search(name) is not None
        splits: RowSplits = ()
        if spectral:
            splits = next((s for pattern, s in split_patterns if pattern.search(name)), ())
        if splits and sum(rows for _, rows in splits) != p.shape[0]:
            raise ValueError(
                f"block_splits {[label for label, _ in splits]} of {name} cover "
                f"{sum(rows for _, rows in splits)} rows but the matrix has {p.shape[0]}"
            )
        routes.append(Route(name, tuple(p.shape), "spectral" if spectral else "adamw", candidate, splits))
    return routes
