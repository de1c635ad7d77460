"""`sift train --dry-run`: what would be trained, how, and what the optimizer state costs, without weights.

The model is instantiated on the meta device from its config, so a 7B model's plan prints in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from sift_cli.errors import SiftError, first_line
from sift_cli.hf.loading import resolve_model_path
from sift_cli.spec import RunSpec
from sift_cli.train import plan_routes, select_trainable, trainable_regex

FP32_BYTES = 4


@dataclass(frozen=True)
class PlanRow:
    name: str
    shape: tuple[int, ...]
    route: str
    candidate: bool
    blocks: tuple[tuple[str, tuple[int, int]], ...] = ()
    """(label, shape) of the row slices a fused matrix is gated as; empty when the matrix is one block."""


def meta_model(spec: RunSpec) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model_path(spec.model)
    try:
        config = AutoConfig.from_pretrained(
            source, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code
        )
    except Exception as exc:
        reason = first_line(exc, None)
        raise SiftError(f"cannot read the config of model {source!r}: {reason[:200]}; check the id or path") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=spec.model.trust_remote_code)


def plan(spec: RunSpec, model: torch.nn.Module) -> list[PlanRow]:
    """Every parameter with its route: spectral (Muon/SIFT), AdamW, or frozen."""
    named = select_trainable(model, trainable_regex(spec))
    routes = {route.name: route for route in plan_routes(named, spec.optim, getattr(model, "config", None))}
    rows = []
    for name, param in model.named_parameters():
        route = routes.get(name)
        kind = "frozen" if route is None else ("adamw" if spec.optim.method in ("adamw", "blur") else route.kind)
        candidate = bool(route and route.kind == "spectral" and route.candidate and spec.optim.method == "sift")
        blocks = ()
        if kind == "spectral" and route.splits:
            blocks = tuple((label, block.shape) for (label, _), block in zip(route.splits, route.blocks()))
        rows.append(PlanRow(name, tuple(param.shape), kind, candidate, blocks))
    return rows


def state_bytes(rows: list[PlanRow], k: int | None) -> dict[str, int]:
    """fp32 optimizer state: two gradient accumulators for every trained tensor, then per route
    two momenta plus (SIFT candidates) two cached bases of K columns, or AdamW's two moments."""
    totals = {"gradient accumulators": 0, "momenta": 0, "subspace caches": 0, "adamw moments": 0}
    for row in rows:
        if row.route == "frozen":
            continue
        numel = int(torch.Size(row.shape).numel())
        totals["gradient accumulators"] += 2 * numel * FP32_BYTES
        if row.route == "spectral":
            totals["momenta"] += 2 * numel * FP32_BYTES
            if row.candidate:
                for m, n in [shape for _, shape in row.blocks] or [row.shape]:
                    rank = min(m, n) if k is None else min(k, m, n)
                    totals["subspace caches"] += 2 * (m + n) * rank * FP32_BYTES
        else:
            totals["adamw moments"] += 2 * numel * FP32_BYTES
    return totals


def print_dry_run(spec: RunSpec, console: Console) -> None:
    console.rule("resolved spec")
    console.print(spec.to_yaml(), markup=False, highlight=False)
    rows = plan(spec, meta_model(spec))
    table = Table(title=f"routing ({spec.optim.method}, trainable = {trainable_regex(spec)!r})")
    for column in ("parameter", "shape", "route", "SIFT candidate"):
        table.add_column(column)
    for row in rows:
        style = "dim" if row.route == "frozen" else None
        route = row.route + (f" ({' | '.join(label for label, _ in row.blocks)} gated apart)" if row.blocks else "")
        table.add_row(row.name, "x".join(map(str, row.shape)), route, "yes" if row.candidate else "", style=style)
    console.print(table)
    trained = [row for row in rows if row.route != "frozen"]
    counts = {kind: sum(row.route == kind for row in rows) for kind in ("spectral", "adamw", "frozen")}
    console.print(
        f"{len(trained)} trained tensors ({sum(torch.Size(r.shape).numel() for r in trained):,} parameters): "
        f"{counts['spectral']} spectral, {counts['adamw']} AdamW, {counts['frozen']} frozen; "
        f"{sum(r.candidate for r in rows)} SIFT candidates"
    )
    totals = state_bytes(rows, spec.optim.k)
    memory = Table(title="optimizer state estimate (fp32)")
    memory.add_column("part")
    memory.add_column("MiB", justify="right")
    for part, size in totals.items():
        memory.add_row(part, f"{size / 2**20:,.1f}")
    memory.add_row("total", f"{sum(totals.values()) / 2**20:,.1f}", style="bold")
    console.print(memory)

