"""`sift train --dry-run`: what would be trained, how, and what memory it needs per device, without weights.

The model is instantiated on the meta device from its config, so a 7B model's plan prints in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from sift_cli.errors import SiftError, first_line
from sift_cli import memory
from sift_cli.models import DTYPES, resolve_model_path
from sift_cli.spec import RunSpec
from sift_cli.train import optimizer_config, plan_routes, select_trainable, trainable_regex


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
    return model.to(DTYPES[spec.model.dtype])


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


def memory_estimate(spec: RunSpec, model: torch.nn.Module) -> memory.MemoryEstimate:
    """Per-device memory of `spec` on `model` (a meta model: nothing is allocated). Activations are
    those of one micro-batch of the larger objective: a DPO pair is two sequences (safety), and RMU
    stops at the steered layer and keeps a frozen copy of the layers up to it (unlearning)."""
    named = select_trainable(model, trainable_regex(spec))
    cfg = optimizer_config(spec.optim, getattr(model, "config", None))
    rows = spec.train.batch_size * (2 if spec.app == "safety" else 1)
    stop = spec.objective.get("layer") if spec.app == "unlearning" else None
    frozen = 0
    if stop is not None:
        decoder = model.get_decoder()
        kept = [decoder.embed_tokens, *decoder.layers[: stop + 1]]
        frozen = sum(p.nbytes for module in kept for p in module.parameters())
    elif spec.app == "safety" and not spec.objective.get("precompute_reference", True):
        frozen = sum(p.nbytes for p in model.parameters())
    forward = memory.language_model_forward(model, rows, spec.data.max_length, stop)
    return memory.estimate(model, named, cfg, forward, frozen)


def print_memory(spec: RunSpec, model: torch.nn.Module, console: Console, gpu_memory: str | None = None) -> memory.MemoryEstimate:
    """The memory table, and with `gpu_memory` whether the run fits one such GPU and what to change."""
    est = memory_estimate(spec, model)
    table = Table(title=f"memory per device ({spec.model.dtype} weights, batch {spec.train.batch_size} x {spec.data.max_length} tokens)")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for part, size in est.parts.items():
        table.add_row(part, f"{size / memory.GiB:,.2f}")
    table.add_row("peak (activations or step temporaries, not both)", f"{est.peak / memory.GiB:,.2f}", style="bold")
    console.print(table)
    console.print(
        f"optimizer state: {est.state_per_parameter():.2f} bytes per trained parameter "
        f"(mixed-precision AdamW: 12); add ~1-2 GiB for the CUDA context and allocator"
    )
    if gpu_memory is not None:
        budget = memory.parse_size(gpu_memory)
        if est.peak <= budget:
            console.print(f"fits one {gpu_memory} GPU: {est.peak / memory.GiB:,.1f} GiB of {budget / memory.GiB:,.0f} GiB")
        else:
            console.print(f"[red]does not fit[/red] one {gpu_memory} GPU: needs {est.peak / memory.GiB:,.1f} GiB. To change:")
            named = select_trainable(model, trainable_regex(spec))
            cfg = optimizer_config(spec.optim, getattr(model, "config", None))
            for flag, saved in memory.savings(est, model, named, cfg):
                console.print(f"  {flag}: saves {saved / memory.GiB:,.1f} GiB")
            console.print("  or shard the run across GPUs (the next release adds FSDP)")
    return est


def print_dry_run(spec: RunSpec, console: Console, gpu_memory: str | None = None) -> None:
    console.rule("resolved spec")
    console.print(spec.to_yaml(), markup=False, highlight=False)
    model = meta_model(spec)
    rows = plan(spec, model)
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
    print_memory(spec, model, console, gpu_memory)

