"""The plan of a run, shared by `sift train` and `sift train --dry-run`: which parameters are trained,
how each is routed (SIFT/Muon or AdamW, fused matrices split into blocks), the engine config, and what
memory the run needs per device (sift_cli.memory reads this plan).

A dry run instantiates the model on the meta device from its config, so a 7B model's plan prints in
seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from sift_cli.apps import get_app
from sift_cli.engine import OptimizerConfig, Route, route_parameters
from sift_cli.errors import SiftError, first_line
from sift_cli.hf import fused_qkv
from sift_cli.hf.loading import DTYPES, resolve_model_path
from sift_cli.hf.lora import ADAPTER_PARAMETERS, add_adapters
from sift_cli.spec import OptimSpec, RunSpec


def optimizer_config(optim: OptimSpec, model_config: Any = None, rank: int | None = None) -> OptimizerConfig:
    """The engine's config of a spec's optim section; a fused query_key_value matrix of `model_config`
    (GLM) is split into its Q, K and V row blocks unless optim.split_fused_qkv is false (splits given in
    optim.block_splits win over the detected ones). `rank`: a LoRA run's factor rank, which caps K (a
    factor has no more than `rank` singular directions)."""
    settings = {item.name: getattr(optim, item.name) for item in fields(OptimizerConfig)}
    detected = fused_qkv.block_splits(model_config) if optim.split_fused_qkv and model_config is not None else {}
    settings["block_splits"] = {**{pattern: tuple(rows) for pattern, rows in detected.items()}, **optim.block_splits}
    if rank is not None and settings["k"] is not None:
        settings["k"] = min(settings["k"], rank)
    return OptimizerConfig(**settings)


def run_optimizer_config(spec: RunSpec, model: nn.Module) -> OptimizerConfig:
    """The engine's config of a run on `model` (its fused matrices, its LoRA rank)."""
    return optimizer_config(spec.optim, getattr(model, "config", None), lora_rank(spec))


def lora_rank(spec: RunSpec) -> int | None:
    return spec.train.lora.rank if spec.train.lora is not None else None


def trainable_regex(spec: RunSpec) -> str:
    return spec.train.trainable or get_app(spec.app).DEFAULT_TRAINABLE


def with_adapters(model: nn.Module, spec: RunSpec) -> nn.Module:
    """The model a run trains: itself, or under train.lora with LoRA factors on the modules it targets."""
    if spec.train.lora is None:
        return model
    return add_adapters(model, spec.train.lora, trainable_regex(spec))


def select_trained(model: nn.Module, spec: RunSpec) -> list[tuple[str, nn.Parameter]]:
    """Freeze all but what the run trains (the trainable regex's matches, or the LoRA factors); return those."""
    return select_trainable(model, ADAPTER_PARAMETERS if spec.train.lora is not None else trainable_regex(spec))


def select_trainable(model: nn.Module, pattern: str) -> list[tuple[str, nn.Parameter]]:
    """Freeze every parameter whose name does not match `pattern`; return the trained ones."""
    regex = re.compile(pattern)
    named = []
    for name, param in model.named_parameters():
        param.requires_grad_(bool(regex.search(name)))
        if param.requires_grad:
            named.append((name, param))
    if not named:
        raise SiftError(f"train.trainable={pattern!r} matches no parameter of the model; check the regex against `sift train --dry-run`")
    return named


def plan_routes(named: Sequence[tuple[str, nn.Parameter]], optim: OptimSpec, model_config: Any, rank: int | None = None) -> list[Route]:
    """Every trained parameter's route, after checking that SIFT's top-K subspaces exist in every
    candidate block (a row slice of a fused matrix included): K <= min(m, n). Under LoRA K is capped at
    the rank, which every factor block allows."""
    try:
        routes = route_parameters(list(named), optimizer_config(optim, model_config, rank))
    except ValueError as exc:
        raise SiftError(f"{exc}; set optim.split_fused_qkv: false to train the fused matrix as one block") from None
    if optim.method != "sift" or optim.k is None or rank is not None:
        return routes
    for route in routes:
        if route.kind != "spectral" or not route.candidate:
            continue
        for block in route.blocks():
            if optim.k > min(block.shape):
                raise SiftError(
                    f"optim.k={optim.k} is larger than block {block.name} {block.shape} allows "
                    f"(at most {min(block.shape)}); lower --k or use --set optim.k=null for full rank"
                )
    return routes


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
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.model.trust_remote_code)
    return with_adapters(model.to(DTYPES[spec.model.dtype]), spec)


def plan(spec: RunSpec, model: torch.nn.Module) -> list[PlanRow]:
    """Every parameter with its route: spectral (Muon/SIFT), AdamW, or frozen."""
    named = select_trained(model, spec)
    routes = {route.name: route for route in plan_routes(named, spec.optim, getattr(model, "config", None), lora_rank(spec))}
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


def print_dry_run(spec: RunSpec, console: Console) -> torch.nn.Module:
    """Print the resolved spec and the routing table; return the meta model they describe (the memory
    table, sift_cli.memory.print_memory, reads it)."""
    console.rule("resolved spec")
    console.print(spec.to_yaml(), markup=False, highlight=False)
    model = meta_model(spec)
    rows = plan(spec, model)
    lora = spec.train.lora
    adapted = f", LoRA r={lora.rank} on the modules it selects" if lora is not None else ""
    table = Table(title=f"routing ({spec.optim.method}, trainable = {trainable_regex(spec)!r}{adapted})")
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
    return model

