"""POME: a post-hoc, training-free edit that equalizes the spectrum of each block's weight change."""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from .linalg import compute_dtype, top_k_svd


def pome_delta(delta: Tensor, rank_fraction: float, scale: str | float = "mean") -> Tensor:
    """Keep the top ceil(rank_fraction * rank) singular directions of delta, all at one scale.

    Equal singular values are what a Muon-style update would have produced: the directions fine-tuning
    found are kept, their uneven magnitudes are not. The fraction is of the numerical rank, not of
    min(m, n): equalizing would otherwise lift rounding noise of a low-rank change to the shared scale.
    scale "mean" uses the mean retained singular value (the edit keeps the nuclear norm of the retained
    part); a float sets it."""
    top = top_k_svd(delta, None)
    s = top.s
    r = math.ceil(rank_fraction * len(s))
    if r == 0:
        return torch.zeros_like(delta, dtype=s.dtype)
    if scale == "mean":
        level = s[:r].mean()
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        level = torch.tensor(float(scale), dtype=s.dtype, device=s.device)
    else:
        raise ValueError(f"scale={scale!r}: expected 'mean' or a number")
    return level * (top.u[:, :r] @ top.v[:, :r].mT)


def pome_edit(
    base_state: dict[str, Tensor],
    trained_state: dict[str, Tensor],
    rank_fraction: float = 0.5,
    scale: str | float = "mean",
    name_regex: str = r".*",
) -> dict[str, Tensor]:
    """W = W_base + pome_delta(W_trained - W_base) for every 2-D tensor whose name matches name_regex.

    Other tensors (1-D, non-matching, or absent from base_state) are copied from trained_state. Results
    keep each trained tensor's dtype and device."""
    if not 0.0 < rank_fraction <= 1.0:
        raise ValueError(f"rank_fraction={rank_fraction}: expected a value in (0, 1]")
    pattern = re.compile(name_regex)
    edited = {}
    for name, trained in trained_state.items():
        base = base_state.get(name)
        if trained.ndim != 2 or base is None or pattern.search(name) is None:
            edited[name] = trained.clone()
            continue
        if base.shape != trained.shape:
            raise ValueError(f"{name}: base shape {tuple(base.shape)}, trained shape {tuple(trained.shape)}")
        base32 = base.to(device=trained.device, dtype=compute_dtype(trained))
        delta = pome_delta(trained.to(base32.dtype) - base32, rank_fraction, scale)
        edited[name] = (base32 + delta).to(trained.dtype)
    return edited
