"""Element-wise update rules: decoupled AdamW and the BLUR gradient combination."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import ScaleRule


def adamw_update(
    weights: Tensor,
    grad: Tensor,
    state: dict,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One decoupled AdamW step on the fp32 tensor `weights`, in place, with the same arithmetic as
    torch.optim.AdamW (single-tensor path).

    state holds "step" and the fp32 moments "exp_avg" and "exp_avg_sq" (allocated by the optimizer
    whatever the parameter dtype, so bf16 training does not lose the second moment's small increments);
    the optimizer writes `weights` back into a half-precision parameter."""
    state["step"] += 1
    step = state["step"]
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    grad = grad.to(torch.float32)
    weights.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    weights.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def blur_rho(grads_f: list[Tensor], grads_g: list[Tensor]) -> float:
    """rho = <G_f, G_g> / |G_g|^2 over all trained parameters at once; 0 when G_g vanishes."""
    dot = sq = 0.0
    for f, g in zip(grads_f, grads_g, strict=True):
        g64 = g.double()
        dot = dot + torch.sum(f.double() * g64)
        sq = sq + torch.sum(g64 * g64)
    dot, sq = float(dot), float(sq)
    return dot / sq if sq > 0.0 else 0.0


def blur_combine(grads_f: list[Tensor], grads_g: list[Tensor], alpha: float) -> list[Tensor]:
    """BLUR gradient G = G_g + alpha (G_f - rho G_g) with one global rho.

    G_f - rho G_g is G_f with its component along the (global) G_g removed, so <G, G_g> = |G_g|^2
    exactly for every alpha: the constraint's own descent rate is kept, f only adds what is orthogonal.
    """
    rho = blur_rho(grads_f, grads_g)
    combined = []
    for f, g in zip(grads_f, grads_g, strict=True):
        dtype = torch.promote_types(g.dtype, torch.float32)  # half-precision gradients combine in fp32
        combined.append(g.to(dtype) + alpha * (f.to(dtype) - rho * g.to(dtype)))
    return combined


def spectral_scale(shape: tuple[int, ...], rule: ScaleRule) -> float:
    """Step multiplier s(m, n) of an orthogonalized update.

    "kj": sqrt(max(1, m/n)) (Keller Jordan's Muon); "match_rms_adamw": 0.2 sqrt(max(m, n)), which gives
    the update roughly AdamW's RMS so AdamW learning rates carry over."""
    m, n = shape
    return math.sqrt(max(1.0, m / n)) if rule == "kj" else 0.2 * math.sqrt(max(m, n))
