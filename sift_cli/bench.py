"""Benchmarks of the engine: per-step cost on realistic block shapes, and a toy constrained problem."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from dataclasses import replace

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from .engine import (
    OptimizerConfig,
    SiftOptimizer,
    sift_direction,
    sift_direction_reference,
    spectral_scale,
)

CPU_SHAPES: tuple[tuple[int, int], ...] = ((576, 1536), (1024, 1024), (1024, 2816))
CUDA_SHAPES: tuple[tuple[int, int], ...] = ((4096, 4096), (4096, 14336))
BENCH_TAU = -0.6
"""Alignment of the two synthetic gradient streams: every block is in conflict (tau < eps = -0.1)."""
BENCH_NOISE = 0.1
"""Per-step gradient noise relative to the signal's RMS: the top subspaces of the momenta drift slowly,
as in training, so the warm-start cache is exercised the way a training run exercises it."""


def decaying_matrix(m: int, n: int, gen: torch.Generator, device: torch.device | str) -> Tensor:
    """U diag(1/i) V^T with Haar-random U, V: the hard case for a top-k subspace (sigma_k ~ sigma_k+1)."""
    r = min(m, n)
    u = torch.linalg.qr(torch.randn(m, r, generator=gen, device=device)).Q
    v = torch.linalg.qr(torch.randn(n, r, generator=gen, device=device)).Q
    return (u / torch.arange(1, r + 1, device=device)) @ v.mT


def released_code_direction(m_f: Tensor, m_g: Tensor, k: int | None) -> Tensor:
    """Re-creation of the released code's SIFT step: full SVDs of both momenta, SVD polar factors."""
    u_f, _, vh_f = torch.linalg.svd(m_f, full_matrices=False)
    u_g, _, vh_g = torch.linalg.svd(m_g, full_matrices=False)
    u = torch.cat([u_f[:, :k], u_g[:, :k]], dim=1)
    v = torch.cat([vh_f[:k].mT, vh_g[:k].mT], dim=1)
    pu, _, qu = torch.linalg.svd(u, full_matrices=False)
    pv, _, qv = torch.linalg.svd(v, full_matrices=False)
    return (pu @ qu) @ (pv @ qv).mT


class ReleasedCodeOptimizer(SiftOptimizer):
    """SiftOptimizer whose SIFT branch runs released_code_direction, for timing comparisons only."""

    def _sift_direction(self, state: dict, suffix: str, m_f: Tensor, m_g: Tensor) -> Tensor:
        return released_code_direction(m_f, m_g, self.cfg.k)


class _GradientStream:
    """Conflicting (G_f, G_g) per step: fixed 1/i-spectrum signals plus fresh Gaussian noise."""

    def __init__(self, m: int, n: int, device: torch.device, seed: int) -> None:
        gen = torch.Generator(device=device).manual_seed(seed)
        self.signal_f = decaying_matrix(m, n, gen, device)
        other = decaying_matrix(m, n, gen, device)
        self.signal_g = BENCH_TAU * self.signal_f + math.sqrt(1 - BENCH_TAU**2) * other
        self.noise_std = BENCH_NOISE * float(self.signal_f.norm()) / math.sqrt(m * n)
        self.gen = gen

    def next(self) -> tuple[Tensor, Tensor]:
        noise = torch.randn((2, *self.signal_f.shape), generator=self.gen, device=self.signal_f.device)
        return self.signal_f + self.noise_std * noise[0], self.signal_g + self.noise_std * noise[1]


def _bench_methods(k: int) -> dict[str, tuple[type[SiftOptimizer], OptimizerConfig]]:
    base = OptimizerConfig(lr=1.0, k=k, eps=-0.1)
    return {
        "adamw": (SiftOptimizer, replace(base, method="adamw", lr=1e-3)),
        "muon": (SiftOptimizer, replace(base, method="muon")),
        "sift-exact": (SiftOptimizer, replace(base, exact=True)),
        "sift-fast": (SiftOptimizer, base),
        "released-code": (ReleasedCodeOptimizer, base),
    }


def _feed(opt: SiftOptimizer, p: nn.Parameter, g_f: Tensor, g_g: Tensor) -> None:
    p.grad = g_f
    opt.capture("f")
    p.grad = g_g
    opt.capture("g")


def _next_momenta(state: dict, g_f: Tensor, g_g: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """The Nesterov momenta the next step will use, computed outside the optimizer."""
    return tuple(g + beta * (beta * state[key] + g) for key, g in (("momentum_f", g_f), ("momentum_g", g_g)))


def _applied_direction(opt: SiftOptimizer, p: nn.Parameter, g_f: Tensor, g_g: Tensor) -> Tensor:
    """Run one step from W = 0 (wd = 0) and read D back from W = -lr s D."""
    p.data.zero_()
    _feed(opt, p, g_f, g_g)
    opt.step()
    group = opt.param_groups[0]
    return -p.data / (group["lr"] * spectral_scale(tuple(p.shape), opt.cfg.scale_rule))


def _relative_error(d: Tensor, ref: Tensor) -> float:
    return float((d.double() - ref).norm() / ref.norm())


def run_engine_bench(
    shapes: Sequence[tuple[int, int]] | None = None,
    k: int = 128,
    repeats: int = 5,
    device: str | torch.device | None = None,
    console: Console | None = None,
    warmup: int = 16,
    seed: int = 0,
) -> list[dict]:
    """Seconds per steady-state optimizer step of AdamW, Muon, exact SIFT, fast SIFT and the released
    code's SIFT step on single blocks in conflict, as ratios to Muon measured in the same run.

    Every method sees the same gradient stream; after `warmup` steps (the fast path's subspace cache is
    warm, as in training) the methods take `repeats` steps interleaved, so a change of machine load hits
    all of them alike, and the median is reported. Errors are relative Frobenius errors of the applied
    direction against sift_direction_reference (float64, full SVDs) on the same momenta: in steady
    state, and for the fast path also cold (no cache, what sift_direction does).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if shapes is None:
        shapes = CPU_SHAPES + (CUDA_SHAPES if device.type == "cuda" else ())
    rows = []
    for m, n in shapes:
        stream = _GradientStream(m, n, device, seed)
        runs = {}
        for name, (cls, cfg) in _bench_methods(k).items():
            p = nn.Parameter(torch.zeros(m, n, device=device))
            runs[name] = (p, cls([("layers.0.mlp.weight", p)], cfg), [])
        for step in range(warmup + repeats):
            g_f, g_g = stream.next()
            for p, opt, times in runs.values():
                _feed(opt, p, g_f, g_g)
                report = opt.step()
                if step >= warmup:
                    times.append(report.seconds)
        g_f, g_g = stream.next()
        p_fast, opt_fast, _ = runs["sift-fast"]
        m_f, m_g = _next_momenta(opt_fast.state[p_fast], g_f, g_g, opt_fast.cfg.momentum)
        reference = sift_direction_reference(m_f, m_g, k)
        cold = _relative_error(sift_direction(m_f, m_g, k), reference)
        muon_seconds = statistics.median(runs["muon"][2])
        for name, (p, opt, times) in runs.items():
            seconds = statistics.median(times)
            error = None
            if name.startswith("sift") or name == "released-code":
                error = _relative_error(_applied_direction(opt, p, g_f, g_g), reference)
            rows.append(
                {
                    "shape": f"{m}x{n}",
                    "method": name,
                    "seconds": seconds,
                    "ratio_to_muon": seconds / muon_seconds,
                    "rel_error": error,
                    "cold_rel_error": cold if name == "sift-fast" else None,
                    "device": device.type,
                }
            )
    _print_engine_table(rows, k, console or Console())
    return rows


def _fmt_error(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.3f}%"


def _print_engine_table(rows: list[dict], k: int, console: Console) -> None:
    table = Table(title=f"optimizer step per block, K={k}, all blocks in conflict ({rows[0]['device']})")
    for column in ("shape", "method", "s/step", "x Muon", "err vs fp64 exact", "cold err"):
        table.add_column(column, justify="left" if column in ("shape", "method") else "right")
    for row in rows:
        table.add_row(
            row["shape"],
            row["method"],
            f"{row['seconds']:.4f}",
            f"{row['ratio_to_muon']:.2f}",
            _fmt_error(row["rel_error"]),
            _fmt_error(row["cold_rel_error"]),
        )
    console.print(table)


class _ToyProblem:
    """An unlearning-shaped toy: a pretrained MLP must keep its outputs on retain inputs (f) while
    mapping forget inputs to a fixed control vector (g). Retain inputs live on dims 0..23 and forget
    inputs on dims 8..31, so the shared dims 8..23 make f and g pull the same weights apart; the
    disjoint dims make a joint solution reachable."""

    d_in, hidden, d_out, n_samples, batch = 32, 64, 16, 512, 64

    def __init__(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.teacher = nn.Sequential(
                nn.Linear(self.d_in, self.hidden),
                nn.Tanh(),
                nn.Linear(self.hidden, self.hidden),
                nn.Tanh(),
                nn.Linear(self.hidden, self.d_out),
            )
        self.teacher.requires_grad_(False)
        self.x_retain = self._inputs(gen, 0, 24)
        self.x_forget = self._inputs(gen, 8, 32)
        self.y_retain = self.teacher(self.x_retain)
        control = torch.randn(self.d_out, generator=gen)
        self.y_forget = 2.0 * control / control.norm()
        self.batches = torch.randint(0, self.n_samples, (10_000, 2, self.batch), generator=gen)

    def _inputs(self, gen: torch.Generator, lo: int, hi: int) -> Tensor:
        x = torch.zeros(self.n_samples, self.d_in)
        x[:, lo:hi] = torch.randn(self.n_samples, hi - lo, generator=gen)
        return x

    def losses(self, model: nn.Module, step: int | None = None) -> tuple[Tensor, Tensor]:
        """(f, g) on a minibatch of `step`'s index stream, or on all samples when step is None."""
        if step is None:
            x_r, y_r, x_f = self.x_retain, self.y_retain, self.x_forget
        else:
            i_r, i_f = self.batches[step % len(self.batches)]
            x_r, y_r, x_f = self.x_retain[i_r], self.y_retain[i_r], self.x_forget[i_f]
        f = nn.functional.mse_loss(model(x_r), y_r)
        g = nn.functional.mse_loss(model(x_f), self.y_forget.expand(len(x_f), -1))
        return f, g


def _train_toy(problem: _ToyProblem, cfg: OptimizerConfig, steps: int) -> dict:
    model = copy.deepcopy(problem.teacher).requires_grad_(True)
    opt = SiftOptimizer(list(model.named_parameters()), cfg)
    sift_blocks = 0
    for step in range(steps):
        f, g = problem.losses(model, step)
        f.backward()
        opt.capture("f")
        g.backward()
        opt.capture("g")
        sift_blocks += opt.step().n_sift
    with torch.no_grad():
        f, g = problem.losses(model)
    return {"final_f": float(f), "final_g": float(g), "sift_blocks_per_step": sift_blocks / max(steps, 1)}


def _toy_objective(row: dict) -> float:
    total = row["final_f"] + row["final_g"]
    return total if math.isfinite(total) else math.inf


def run_toy_comparison(
    steps: int = 300,
    seed: int = 0,
    lrs: Sequence[float] = (3e-3, 1e-2, 3e-2, 1e-1),
    k: int | None = None,
    console: Console | None = None,
) -> list[dict]:
    """SIFT, Muon, AdamW and BLUR on the toy problem at equal steps, each at its best lr from `lrs`.

    "Best" minimizes the final f + g (the objective the scalarized baselines optimize) on all samples.
    Returns one row per method: final f, final g, best lr, and for SIFT how many of the 3 hidden
    matrices took the SIFT branch per step on average."""
    problem = _ToyProblem(seed)
    rows = []
    for method in ("sift", "muon", "adamw", "blur"):
        runs = []
        for lr in lrs:
            result = _train_toy(problem, OptimizerConfig(method=method, lr=lr, k=k), steps)
            runs.append({"method": method, "best_lr": lr, **result})
        rows.append(min(runs, key=_toy_objective))
    table = Table(title=f"toy constrained problem, {steps} steps, seed {seed}")
    for column in ("method", "best lr", "final f (retain)", "final g (forget)", "f + g", "SIFT blocks/step"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(
            row["method"],
            f"{row['best_lr']:g}",
            f"{row['final_f']:.4f}",
            f"{row['final_g']:.4f}",
            f"{row['final_f'] + row['final_g']:.4f}",
            f"{row['sift_blocks_per_step']:.2f}",
        )
    (console or Console()).print(table)
    return rows


PRECISION_VARIANTS: dict[str, tuple[torch.dtype, dict]] = {
    "bf16, round to nearest": (torch.bfloat16, {"master_weights": False}),
    "bf16 + master (default)": (torch.bfloat16, {}),
    "bf16 + Kahan": (torch.bfloat16, {"master_weights": False, "update_rounding": "kahan"}),
    "bf16 + stochastic": (torch.bfloat16, {"master_weights": False, "update_rounding": "stochastic"}),
    "bf16 + master, bf16 momenta": (torch.bfloat16, {"momentum_dtype": "bfloat16"}),
    "fp32, bf16 momenta": (torch.float32, {"momentum_dtype": "bfloat16"}),
}
"""Ways of training a bf16 (or fp32) parameter, each compared with an fp32 run on the same gradients."""


def run_precision_bench(
    shape: tuple[int, int] = (512, 1024),
    steps: int = 100,
    lr: float = 1e-4,
    k: int = 128,
    methods: Sequence[str] = ("muon", "sift", "adamw"),
    seed: int = 0,
    console: Console | None = None,
) -> list[dict]:
    """Fidelity of half-precision training: each variant against an fp32 run fed the same gradients.

    One block (|w| ~ 0.02, as in a 7B model) takes `steps` steps of conflicting gradients (rounded to
    bf16, so both runs see identical values). Reported per variant: error = |W - W_fp32| / |W_fp32 - W_0|
    (the share of the fp32 run's total update that is wrong), the same for W_fp32 rounded to bf16 (the
    best a bf16 weight can do), the share of weights that never changed, and the norm of the update
    that arrived relative to the fp32 one."""
    m, n = shape
    gen = torch.Generator().manual_seed(seed)
    w0 = (0.02 * torch.randn(m, n, generator=gen)).to(torch.bfloat16)
    stream = _GradientStream(m, n, torch.device("cpu"), seed)
    grads = [tuple(g.to(torch.bfloat16) for g in stream.next()) for _ in range(steps)]
    rows = []
    for method in methods:
        base = OptimizerConfig(method=method, lr=lr, k=k, eps=-0.1)

        def train(dtype: torch.dtype, **overrides: object) -> Tensor:
            p = nn.Parameter(w0.to(dtype, copy=True))
            opt = SiftOptimizer([("layers.0.mlp.weight", p)], replace(base, **overrides))
            for g_f, g_g in grads:
                _feed(opt, p, g_f.to(dtype), g_g.to(dtype))
                opt.step()
            return p.detach().float()

        reference = train(torch.float32)
        total = float((reference - w0.float()).norm())
        rounding = float((reference.to(torch.bfloat16).float() - reference).norm()) / total
        for name, (dtype, overrides) in PRECISION_VARIANTS.items():
            w = train(dtype, **overrides)
            rows.append(
                {
                    "method": method,
                    "variant": name,
                    "error": float((w - reference).norm()) / total,
                    "rounding_error": rounding,
                    "unchanged": float((w == w0.float()).double().mean()),
                    "update_ratio": float((w - w0.float()).norm()) / total,
                }
            )
    table = Table(title=f"half-precision fidelity vs fp32: {m}x{n} block, {steps} steps, lr {lr:g}, K={k}")
    for column in ("method", "variant", "error / update", "fp32 rounded to bf16", "never changed", "update kept"):
        table.add_column(column, justify="left" if column in ("method", "variant") else "right")
    for row in rows:
        table.add_row(
            row["method"],
            row["variant"],
            f"{row['error']:.3f}",
            f"{row['rounding_error']:.3f}",
            f"{100 * row['unchanged']:.1f}%",
            f"{row['update_ratio']:.2f}",
        )
    (console or Console()).print(table)
    return rows
