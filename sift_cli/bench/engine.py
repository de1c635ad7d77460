"""Benchmark of the engine: the SIFT direction's error and cost along momentum streams."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from sift_cli.bench.streams import NesterovMomenta, drifting_stream, training_streams
from sift_cli.engine import (
    OptimizerConfig,
    msign,
    sift_direction,
    sift_direction_reference,
)
from sift_cli.engine.direction import (
    TrackedTopK,
    WarmStart,
    combine_subspaces,
    top_k_tracked,
)

CPU_SHAPES: tuple[tuple[int, int], ...] = ((576, 1536), (1536, 576), (576, 576), (192, 576))
"""SmolLM2-135M's block shapes: down_proj, gate/up_proj, q/o_proj, k/v_proj."""
CUDA_SHAPES: tuple[tuple[int, int], ...] = ((4096, 4096), (4096, 14336))
STREAMS = ("training", "drifting")


def released_code_direction(m_f: Tensor, m_g: Tensor, k: int | None) -> Tensor:
    """Re-creation of the released code's SIFT step: full SVDs of both momenta, SVD polar factors."""
    u_f, _, vh_f = torch.linalg.svd(m_f, full_matrices=False)
    u_g, _, vh_g = torch.linalg.svd(m_g, full_matrices=False)
    u = torch.cat([u_f[:, :k], u_g[:, :k]], dim=1)
    v = torch.cat([vh_f[:k].mT, vh_g[:k].mT], dim=1)
    pu, _, qu = torch.linalg.svd(u, full_matrices=False)
    pv, _, qv = torch.linalg.svd(v, full_matrices=False)
    return (pu @ qu) @ (pv @ qv).mT


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _relative_error(d: Tensor, ref: Tensor) -> float:
    return float((d.double() - ref).norm() / ref.norm())


@dataclass
class _BlockTrace:
    """Per-step measurements of one block along its momentum stream."""

    stream: str
    block: str
    shape: tuple[int, int]
    warm: dict[str, WarmStart | None] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[float]] = field(default_factory=dict)
    estimates: list[float] = field(default_factory=list)
    fallbacks: int = 0
    iterations: list[int] = field(default_factory=list)

    def record(self, method: str, seconds: float, error: float | None = None) -> None:
        self.seconds.setdefault(method, []).append(seconds)
        if error is not None:
            self.errors.setdefault(method, []).append(error)


def _measure_step(trace: _BlockTrace, m_f: Tensor, m_g: Tensor, cfg: OptimizerConfig, device: torch.device) -> None:
    """One step of every method on the same momenta, in the order a change of machine load hits alike;
    errors against the float64 reference. The fast path keeps its warm start across steps, as in training."""
    reference = sift_direction_reference(m_f, m_g, cfg.k)
    _, muon = _timed(lambda: msign(cfg.lam * m_f + m_g), device)
    trace.record("muon", muon)

    def fast() -> tuple[Tensor, list[TrackedTopK]]:
        found = [top_k_tracked(m, cfg.k, trace.warm.get(key), cfg.subspace, cfg.subspace_tol) for key, m in (("f", m_f), ("g", m_g))]
        return combine_subspaces(*(t.top for t in found)), found

    (direction, found), seconds = _timed(fast, device)
    trace.record("sift-fast", seconds, _relative_error(direction, reference))
    trace.warm = {key: t.warm for key, t in zip("fg", found)}
    trace.estimates.append(max(t.error for t in found))
    trace.fallbacks += sum(t.fallback for t in found)
    trace.iterations += [t.iterations for t in found]
    direction, seconds = _timed(lambda: sift_direction(m_f, m_g, cfg.k, exact=True), device)
    trace.record("sift-exact", seconds, _relative_error(direction, reference))
    direction, seconds = _timed(lambda: released_code_direction(m_f, m_g, cfg.k), device)
    trace.record("released-code", seconds, _relative_error(direction, reference))


def _drifting_traces(shapes: Sequence[tuple[int, int]], steps: int, cfg: OptimizerConfig, device: torch.device) -> list[_BlockTrace]:
    traces = []
    for m, n in shapes:
        trace = _BlockTrace("drifting", f"{m}x{n}", (m, n))
        for m_f, m_g in drifting_stream(m, n, steps, beta=cfg.momentum):
            _measure_step(trace, m_f.to(device), m_g.to(device), cfg, device)
        traces.append(trace)
    return traces


def _training_traces(steps: int, cfg: OptimizerConfig, device: torch.device, console: Console) -> list[_BlockTrace]:
    traces: dict[str, _BlockTrace] = {}
    momenta: dict[str, NesterovMomenta] = {}
    console.print(f"training SmolLM2-135M for {steps} steps (unlearning CPU preset) to record its momenta ...")
    for grads in training_streams(steps, device=device.type):
        for name, (g_f, g_g) in grads.items():
            m_f, m_g = momenta.setdefault(name, NesterovMomenta(cfg.momentum)).update(g_f, g_g)
            label = name.removeprefix("model.").removesuffix(".weight")
            trace = traces.setdefault(name, _BlockTrace("training", label, tuple(m_f.shape)))
            _measure_step(trace, m_f, m_g, cfg, device)
    return list(traces.values())


def run_engine_bench(
    k: int = 128,
    streams: Sequence[str] = STREAMS,
    steps: int = 30,
    shapes: Sequence[tuple[int, int]] | None = None,
    tol: float | None = None,
    device: str | torch.device | None = None,
    console: Console | None = None,
) -> list[dict]:
    """Per block, along momentum streams: the fast SIFT path's error against the float64 exact direction
    (median, p95, max over steps) and the seconds of Muon, fast SIFT, exact SIFT and the released code's
    step, as ratios to Muon measured on the same momenta in the same run.

    "training": real momenta of SmolLM2-135M trained on the unlearning CPU preset (sift_cli/bench/streams.py),
    one block per shape; "drifting": a rotating low-rank signal plus noise of equal norm in conflict, per
    shape of `shapes` (SmolLM2's on CPU, plus 7B's on CUDA). Every step runs every method (the gate is
    forced open), so the fast path's warm start, error estimate and fallbacks are exercised the way a
    training run exercises them from step 1, early fast-moving phase included.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    console = console or Console()
    cfg = OptimizerConfig(k=k, **({} if tol is None else {"subspace_tol": tol}))
    if shapes is None:
        shapes = CPU_SHAPES + (CUDA_SHAPES if device.type == "cuda" else ())
    traces = []
    for stream in streams:
        if stream == "training":
            traces += _training_traces(steps, cfg, device, console)
        elif stream == "drifting":
            traces += _drifting_traces(shapes, steps, cfg, device)
        else:
            raise ValueError(f"stream {stream!r}: expected one of {', '.join(STREAMS)}")
    rows = [_trace_row(trace, device) for trace in traces]
    _print_engine_table(rows, cfg, console)
    return rows


def _quantiles(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"median": float(t.median()), "p95": float(t.quantile(0.95)), "max": float(t.max())}


def _trace_row(trace: _BlockTrace, device: torch.device) -> dict:
    muon = sum(trace.seconds["muon"])
    row: dict[str, Any] = {
        "stream": trace.stream,
        "block": trace.block,
        "shape": f"{trace.shape[0]}x{trace.shape[1]}",
        "steps": len(trace.estimates),
        "muon_seconds": muon / len(trace.estimates),
        "device": device.type,
        "fallback_rate": trace.fallbacks / (2 * len(trace.estimates)),
        "mean_iterations": sum(trace.iterations) / len(trace.iterations),
        "max_estimate": max(trace.estimates),
    }
    for method in ("sift-fast", "sift-exact", "released-code"):
        row[f"{method}_x_muon"] = sum(trace.seconds[method]) / muon
        row[f"{method}_error"] = _quantiles(trace.errors[method])
    return row


def _print_engine_table(rows: list[dict], cfg: OptimizerConfig, console: Console) -> None:
    title = (
        f"SIFT direction per block along momentum streams, K={cfg.k}, subspace_tol={cfg.subspace_tol:g} "
        f"({rows[0]['device']}); error vs float64 exact, time as total over the stream / Muon's"
    )
    table = Table(title=title)
    columns = ("stream", "block", "steps", "fast x Muon", "fast err median", "p95", "max", "fallbacks", "iters",
               "exact x Muon", "exact err max", "released x Muon")
    for column in columns:
        table.add_column(column, justify="left" if column in ("stream", "block") else "right")
    for row in rows:
        fast = row["sift-fast_error"]
        table.add_row(
            row["stream"],
            f"{row['block']} ({row['shape']})" if row["stream"] == "training" else row["block"],
            str(row["steps"]),
            f"{row['sift-fast_x_muon']:.2f}",
            f"{fast['median']:.2%}",
            f"{fast['p95']:.2%}",
            f"{fast['max']:.2%}",
            f"{row['fallback_rate']:.0%}",
            f"{row['mean_iterations']:.1f}",
            f"{row['sift-exact_x_muon']:.2f}",
            f"{row['sift-exact_error']['max']:.2%}",
            f"{row['released-code_x_muon']:.2f}",
        )
    console.print(table)
