"""How an fp32 update reaches a bf16 or fp16 parameter without being lost.

Rounding each step's fp32 result to the nearest bf16 drops every change smaller than half a unit in the
last place (ulp): at |w| ~ 0.02 a bf16 ulp is 1.2e-4, far above a fine-tuning step of 1e-6 to 1e-5, so
most weights never move. Three remedies, chosen by OptimizerConfig.master_weights / update_rounding:

- an exact fp32 master copy. For bf16 it costs 2 bytes per parameter, not 4: bf16 is the top half of
  fp32, so the master is the weight itself (its high 16 bits, rounded to nearest) plus the 16 low bits
  it drops, kept as int16 (`split_fp32` / `join_fp32`). The forward pass sees the master rounded to
  nearest, and a weight changed outside the optimizer can never be silently reverted by a stale copy.
  fp16 is not a prefix of fp32, so an fp16 master is a plain fp32 copy (4 bytes);
- Kahan compensation: a buffer in the parameter dtype carries each step's rounding error into the next;
- stochastic rounding: round up or down with the probabilities that make the result unbiased.
"""

from __future__ import annotations

import torch
from torch import Tensor

HALF_DTYPES = (torch.bfloat16, torch.float16)
STOCHASTIC_SEED = 0x5EED
_LOW_MASK = -0x10000
"""0xFFFF0000 as a signed int32: keeps the 16 bits of an fp32 that a bf16 holds."""

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


def split_fp32(x: Tensor) -> tuple[Tensor, Tensor]:
    """fp32 `x` as (hi, lo): hi is x rounded to the nearest bf16 (ties away from zero), lo the int16 offset
    of x's bit pattern from hi's, so join_fp32(hi, lo) gives x back bit for bit.

    Adding half of the dropped range (0x8000) to the bit pattern before masking rounds to nearest, and
    leaves the offset in [-0x8000, 0x7FFF], which int16 holds exactly. Sign and magnitude are separate
    in an IEEE pattern, so this rounds negative numbers by magnitude too. NaN stays NaN."""
    bits = x.view(torch.int32)
    hi_bits = (bits + 0x8000) & _LOW_MASK
    lo = (bits - hi_bits).to(torch.int16)
    hi = hi_bits.view(torch.float32).to(torch.bfloat16)
    return torch.where(torch.isnan(x), x.to(torch.bfloat16), hi), lo


def join_fp32(hi: Tensor, lo: Tensor) -> Tensor:
    """The fp32 value whose split is (hi, lo): hi's bit pattern (exact in fp32) plus the low bits."""
    return (hi.float().view(torch.int32) + lo.to(torch.int32)).view(torch.float32)


def stochastic_round(x: Tensor, dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    """x rounded to `dtype` up or down at random, with E[result] = x: to the other neighbour of the
    nearest value with probability |x - nearest| / |other - nearest| (at most 1/2)."""
    near = x.to(dtype)
    back = near.float()
    toward = torch.where(back > x, float("-inf"), float("inf")).to(dtype)
    other = torch.nextafter(near, toward)
    probability = ((x - back) / (other.float() - back)).nan_to_num_(0.0)
    draw = torch.rand(x.shape, generator=generator, device=x.device)
    return torch.where(draw < probability, other, near)


def weight_layout(shape: tuple[int, ...], dtype: torch.dtype, master_weights: bool, rounding: str) -> Layout:
    """The state a parameter of this dtype keeps for its weight updates: nothing for fp32 weights."""
    if dtype not in HALF_DTYPES:
        return {}
    if master_weights:
        return {"master_low": (shape, torch.int16)} if dtype == torch.bfloat16 else {"master": (shape, torch.float32)}
    if rounding == "kahan":
        return {"compensation": (shape, dtype)}
    return {}


def init_weight_state(p: Tensor, state: dict, layout: Layout) -> None:
    """Allocate the missing entries of `layout`: a master equal to the current weight, zero compensation."""
    for key, (_, dtype) in layout.items():
        if key in state:
            continue
        state[key] = p.detach().to(torch.float32, copy=True) if key == "master" else torch.zeros_like(p, dtype=dtype)


def fp32_weights(p: Tensor, state: dict) -> Tensor:
    """The fp32 value an update applies to, in place: the parameter itself when it is fp32, else the
    master (joined, or the fp32 copy), else the rounded weight plus its Kahan compensation."""
    if p.dtype == torch.float32:
        return p.data
    if "master_low" in state:
        return join_fp32(p.data, state["master_low"])
    if "master" in state:
        return state["master"]
    work = p.data.float()
    if "compensation" in state:
        work.add_(state["compensation"])
    return work


def write_weights(p: Tensor, state: dict, work: Tensor, rounding: str, seed: int) -> None:
    """Write the updated fp32 value `work` back into p (and its master or compensation)."""
    if work is p.data:
        return
    if "master_low" in state:
        hi, lo = split_fp32(work)
        p.data.copy_(hi)
        state["master_low"].copy_(lo)
    elif rounding == "stochastic" and "master" not in state:
        generator = torch.Generator(device=work.device).manual_seed(seed)
        p.data.copy_(stochastic_round(work, p.dtype, generator))
    else:
        p.data.copy_(work)
        if "compensation" in state:
            state["compensation"].copy_(work - p.data.float())
