"""`sift bench precision`: how faithfully each way of training a half-precision parameter follows fp32.

A 512x1024 block at |w| ~ 0.02 (a 7B model's scale) takes the same conflicting gradients in fp32 and
in each variant (bf16 round-to-nearest, the fp32 master, Kahan, stochastic rounding, bf16 momenta);
the report is each variant's distance from the fp32 result as a share of the fp32 update.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from sift_cli.engine import OptimizerConfig, SiftOptimizer

TAU = -0.6
"""Alignment of the two synthetic gradient streams: every block is in conflict (tau < eps = -0.1)."""
NOISE = 0.1
"""Per-step gradient noise relative to the signal's RMS."""


def decaying_matrix(m: int, n: int, gen: torch.Generator) -> Tensor:
    """U diag(1/i) V^T with Haar-random U, V."""
    r = min(m, n)
    u = torch.linalg.qr(torch.randn(m, r, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, r, generator=gen)).Q
    return (u / torch.arange(1, r + 1)) @ v.mT


def conflicting_gradients(m: int, n: int, steps: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """(G_f, G_g) per step: fixed 1/i-spectrum signals at alignment TAU plus fresh Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    signal_f = decaying_matrix(m, n, gen)
    signal_g = TAU * signal_f + math.sqrt(1 - TAU**2) * decaying_matrix(m, n, gen)
    noise_std = NOISE * float(signal_f.norm()) / math.sqrt(m * n)
    grads = []
    for _ in range(steps):
        noise = torch.randn((2, m, n), generator=gen)
        grads.append((signal_f + noise_std * noise[0], signal_g + noise_std * noise[1]))
    return grads


def _feed(opt: SiftOptimizer, p: nn.Parameter, g_f: Tensor, g_g: Tensor) -> None:
    p.grad = g_f
    opt.capture("f")
    p.grad = g_g
    opt.capture("g")


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
    grads = [tuple(g.to(torch.bfloat16) for g in pair) for pair in conflicting_gradients(m, n, steps, seed)]
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
