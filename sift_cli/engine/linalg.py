"""Matrix routines of the engine, each fast path next to a slow, obviously correct reference.

Everything runs in at least float32: bf16/fp16 inputs are promoted (Newton-Schulz and SVDs lose too much
in half precision), float64 inputs stay float64 so the references can be evaluated exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
FP32_EPS = torch.finfo(torch.float32).eps

EIG_RTOL = 1e-7
"""Eigenvalue floor of the pseudo-polar step, relative to the largest eigenvalue of the Gram matrix.

Two unit directions at angle theta give a Gram eigenvalue 1 - cos(theta) ~ theta^2 / 2. Directions
computed twice in fp32 from the same subspace differ by rounding, which leaves Gram eigenvalues of
~1e-9 (measured, Gram formed in float64), and keeping those would inject a unit-norm random rank-1
term into D. Genuinely distinct directions of conflicting momenta get as close as theta ~ 2e-3
(eigenvalue ~2e-6, measured on the benchmark's momenta) and must be kept: 1e-7 (theta < ~6e-4)
sits between the two. The Gram is formed in float64 because in fp32 its rounding alone reaches
~5e-7 and would blur that line."""

SKETCH_SEED = 0x51F7


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def alignment(a: Tensor, b: Tensor) -> float:
    """Cosine of the flattened tensors; 0.0 when either is zero, so an absent objective never gates.

    Both numbers come back in one transfer: the optimizer calls this twice per block per step."""
    dtype = compute_dtype(a)
    a = a.reshape(-1).to(dtype)
    b = b.reshape(-1).to(dtype)
    dot, denom = torch.stack([torch.dot(a, b), torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)]).tolist()
    return dot / denom if denom > 0.0 else 0.0


def msign(m: Tensor, steps: int = NS_STEPS) -> Tensor:
    """Approximate polar factor by quintic Newton-Schulz, as in Muon.

    The coefficients trade exactness for speed: singular values land in roughly [0.7, 1.2] instead of 1,
    which is harmless for an update direction. The short side is iterated on (X X^T is then the small
    Gram matrix), and the Frobenius normalization puts every singular value below 1 where the iteration
    converges.
    """
    a, b, c = NS_COEFFS
    x = m.to(compute_dtype(m))
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


def rank_tolerance(shape: tuple[int, ...]) -> float:
    """Relative singular-value cutoff of the numerical rank.

    Momenta live in fp32, so the fp32 tolerance applies even when a reference recomputes in float64:
    singular values below it are rounding noise of the stored data, not signal."""
    return max(shape[-2:]) * FP32_EPS


def numerical_rank(s: Tensor, shape: tuple[int, ...], rtol: float | None = None) -> int:
    if s.numel() == 0:
        return 0
    tol = rank_tolerance(shape) if rtol is None else rtol
    return int((s > tol * s[0]).sum())


def msign_exact(m: Tensor, rtol: float | None = None) -> Tensor:
    """Reference polar factor P Q^T from a full SVD, restricted to the numerical range of m.

    On the numerical null space the polar factor is arbitrary; leaving it out makes the answer unique."""
    u, s, vh = torch.linalg.svd(m.to(compute_dtype(m)), full_matrices=False)
    r = numerical_rank(s, tuple(m.shape), rtol)
    return u[:, :r] @ vh[:r]


def gram_inv_sqrt(u: Tensor, rtol: float = EIG_RTOL) -> Tensor:
    """(U^T U)^{+1/2} in float64, eigenvalues below rtol * max treated as zero."""
    u = u.to(torch.float64)
    w, q = torch.linalg.eigh(u.mT @ u)
    keep = w > rtol * w[-1:]
    inv_sqrt = torch.where(keep, w.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), torch.zeros_like(w))
    return (q * inv_sqrt) @ q.mT


def pseudo_polar(u: Tensor, rtol: float = EIG_RTOL) -> Tensor:
    """msign of a basis through its smaller Gram matrix: U (U^T U)^{+1/2}, or (U U^T)^{+1/2} U when U
    is wider than tall.

    The Gram matrix is only as large as U's short side, so this costs one product and a small
    eigendecomposition instead of an SVD of U. Both Gram matrices have the same nonzero eigenvalues, so
    the floor drops the same directions either way. At full K the merged basis [U_f, U_g] has twice as
    many columns as rows, and its row Gram matrix is 8x cheaper to decompose. The pseudo-inverse gives
    overlapping columns (shared directions) a defined answer."""
    dtype = compute_dtype(u)
    if u.shape[-2] < u.shape[-1]:
        return gram_inv_sqrt(u.mT, rtol).to(dtype) @ u.to(dtype)
    return u.to(dtype) @ gram_inv_sqrt(u, rtol).to(dtype)


def pseudo_polar_reference(u: Tensor, rtol: float = EIG_RTOL) -> Tensor:
    """SVD form of pseudo_polar, with the same floor expressed on singular values."""
    return msign_exact(u, rtol=rtol**0.5)


class TopK(NamedTuple):
    """Paired leading singular triplets: m ~ u diag(s) v^T on the kept directions."""

    u: Tensor
    s: Tensor
    v: Tensor


def _truncate(u: Tensor, s: Tensor, v: Tensor, k: int | None, shape: tuple[int, ...]) -> TopK:
    r = numerical_rank(s, shape)
    if k is not None:
        r = min(r, k)
    return TopK(u[:, :r], s[:r], v[:, :r])


def top_k_svd(m: Tensor, k: int | None) -> TopK:
    """Exact top-k singular triplets (k None: the numerical rank), from a full SVD."""
    u, s, vh = torch.linalg.svd(m.to(compute_dtype(m)), full_matrices=False)
    return _truncate(u, s, vh.mT, k, tuple(m.shape))


def sketch_width(k: int) -> int:
    """Columns of a cold range finder for a top-k subspace: k plus max(k, 10) oversampling.

    Oversampling in proportion to k keeps sigma_{width}/sigma_k at about 1/2 on a 1/i spectrum, where
    sigma_k and sigma_{k+1} are nearly equal; the power iterations then shrink leakage across the
    boundary by that ratio squared per iteration."""
    return k + max(k, 10)


def warm_sketch_width(k: int) -> int:
    """Columns of a warm-started subspace iteration: k plus max(k // 2, 10).

    A warm basis has already converged over previous steps, so less oversampling keeps the error far
    below 2% while QRs (quadratic in the width) and products get cheaper."""
    return k + max(k // 2, 10)


def gaussian_start(m: Tensor, width: int, seed: int = SKETCH_SEED) -> Tensor:
    """Seeded Gaussian test matrix on m's device, so a cold sketch is reproducible."""
    gen = torch.Generator(device=m.device).manual_seed(seed)
    return torch.randn(m.shape[-1], width, generator=gen, device=m.device, dtype=compute_dtype(m))


def top_k_sketch(m: Tensor, k: int, start: Tensor, power_iters: int) -> tuple[TopK, Tensor]:
    """Top-k triplets from a subspace iteration started at the right basis `start` (n x width).

    A Gaussian start makes this a randomized range finder; the previous step's basis makes it a
    warm-started subspace iteration, which converges further every step on a slowly moving momentum.
    The triplets come from a small SVD of Q^T m, so left and right vectors are paired (D is only
    invariant under joint rotations). Returns the triplets and the full right basis (n x width) to
    start from next time. Every product is re-orthonormalized: without it the tail columns lose fp32
    precision at the rate (sigma_1/sigma_width)^2 per iteration.
    """
    m = m.to(compute_dtype(m))
    q = torch.linalg.qr(m @ start).Q
    for _ in range(power_iters):
        z = torch.linalg.qr(m.mT @ q).Q
        q = torch.linalg.qr(m @ z).Q
    qb, rb = torch.linalg.qr(m.mT @ q)
    ur, s, vrh = torch.linalg.svd(rb.mT)
    basis = qb @ vrh.mT
    return _truncate(q @ ur, s, basis, k, tuple(m.shape)), basis
