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

    Subspace iteration with `width` columns converges on the top-k subspace at the rate
    (sigma_{width+1}/sigma_k)^2 per iteration, whatever the gap at k; oversampling in proportion to k
    keeps that ratio at about 1/4 on a 1/i spectrum, where sigma_k and sigma_{k+1} are nearly equal."""
    return k + max(k, 10)


def warm_sketch_width(k: int) -> int:
    """Columns of a warm-started subspace iteration: k plus max(k // 2, 10).

    A warm basis starts close to the answer on slowly moving momenta, so less oversampling keeps the
    iteration count low while QRs (quadratic in the width) and products get cheaper; where the warm
    start is far off, the error estimate sends the block to the exact decomposition instead."""
    return k + max(k // 2, 10)


def gaussian_start(m: Tensor, width: int, seed: int = SKETCH_SEED) -> Tensor:
    """Seeded Gaussian test matrix on m's device, so a cold sketch is reproducible."""
    gen = torch.Generator(device=m.device).manual_seed(seed)
    return torch.randn(m.shape[-1], width, generator=gen, device=m.device, dtype=compute_dtype(m))


class RitzStep(NamedTuple):
    """One subspace iteration: the leading `keep` Ritz triplets (paired), all Ritz values, and the right
    subspace it found as an orthonormal span plus the rotation that orders it by Ritz value."""

    top: TopK
    s: Tensor
    span: Tensor
    rotation: Tensor

    def right_basis(self) -> Tensor:
        """All right Ritz vectors, largest first (a warm start whose first k columns are the answer's V_k)."""
        return self.span @ self.rotation.mT


def subspace_iteration_step(m: Tensor, start: Tensor, keep: int) -> RitzStep:
    """One step of subspace iteration from the right basis `start` (n x width), with Rayleigh-Ritz.

    The Ritz triplets are paired (q^T m = u diag(s) v^T exactly on the iterate). Only the leading `keep`
    are rotated out of the span: the next step starts from the span itself, which is the same subspace.
    Each product is orthonormalized: without it the tail columns lose fp32 precision at the rate
    (sigma_1/sigma_width)^2 per step."""
    m = m.to(compute_dtype(m))
    q = torch.linalg.qr(m @ start.to(m.dtype)).Q
    span, rb = torch.linalg.qr(m.mT @ q)
    ur, s, vrh = torch.linalg.svd(rb.mT)
    top = TopK(q @ ur[:, :keep], s[:keep], span @ vrh[:keep].mT)
    return RitzStep(top, s, span, vrh)


def leading(top: TopK, k: int | None, shape: tuple[int, ...]) -> TopK:
    """The first k triplets of `top` within the numerical rank of a matrix of `shape`."""
    return _truncate(top.u, top.s, top.v, k, shape)


def direction_change(a: TopK, b: TopK) -> Tensor:
    """Relative Frobenius distance between the rank-k directions U_a V_a^T and U_b V_b^T (k = b's size).

    ||A - B||^2 = ||A||^2 + ||B||^2 - 2 tr(A^T B), with tr(A^T B) = sum((U_a^T U_b) * (V_a^T V_b)):
    two k x k products instead of two m x n matrices. A 0-dim tensor, so callers sync once."""
    k = b.s.numel()
    a = TopK(a.u[:, :k], a.s[:k], a.v[:, :k])
    overlap = ((a.u.mT @ b.u) * (a.v.mT @ b.v)).sum()
    squared = a.s.numel() + k - 2 * overlap
    return squared.clamp_min(0).sqrt() / max(k, 1) ** 0.5


def top_k_gram(m: Tensor, k: int | None) -> TopK:
    """Exact top-k singular triplets from a float64 eigendecomposition of the smaller Gram matrix.

    Same answer as top_k_svd (checked against it), at about half the cost on CPU: the Gram product is
    one GEMM and a symmetric eigendecomposition is cheaper than an SVD. Squaring the singular values
    loses nothing in float64: the relative accuracy of sigma_i^2 is ~1e-16 * (sigma_1/sigma_i)^2, and
    the numerical rank already drops every direction below ~1e-4 sigma_1. The other side's vectors come
    from one product, m^T u / s (or m v / s)."""
    a = m.to(torch.float64)
    wide = a.shape[0] <= a.shape[1]
    short = a if wide else a.mT
    evals, evecs = torch.linalg.eigh(short @ short.mT)
    s = evals.flip(0).clamp_min(0).sqrt()
    r = numerical_rank(s, tuple(m.shape))
    if k is not None:
        r = min(r, k)
    near = evecs.flip(1)[:, :r]
    far = (short.mT @ near) / s[:r]
    u, v = (near, far) if wide else (far, near)
    dtype = compute_dtype(m)
    return TopK(u.to(dtype), s[:r].to(dtype), v.to(dtype))
