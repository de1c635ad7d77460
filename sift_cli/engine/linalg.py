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


def alignments(*pairs: tuple[Tensor, Tensor]) -> list[float]:
    """Cosine of each pair of flattened tensors; 0.0 when either is zero, so an absent objective never
    gates. All numbers come back in one host transfer: the optimizer asks for a block's gradient and
    momentum alignment together."""
    stats = []
    for a, b in pairs:
        dtype = compute_dtype(a)
        a, b = a.reshape(-1).to(dtype), b.reshape(-1).to(dtype)
        stats.extend([torch.dot(a, b), torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)])
    values = torch.stack(stats).tolist()
    return [dot / denom if denom > 0.0 else 0.0 for dot, denom in zip(values[::2], values[1::2])]


def alignment(a: Tensor, b: Tensor) -> float:
    """Cosine of the flattened tensors (alignments of one pair)."""
    return alignments((a, b))[0]


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


class PairPolar(NamedTuple):
    """msign([A, B]) of two bases in factored form: [first @ rot_first^T, second @ rot_second^T].

    first (m x p) and second (m x q) are in the coordinates of the SVD of the bases' cross Gram matrix,
    rot_first (p x p) and rot_second (q x q) its orthogonal factors (float64)."""

    first: Tensor
    rot_first: Tensor
    second: Tensor
    rot_second: Tensor


def polar_of_pair(a: Tensor, b: Tensor, rtol: float = EIG_RTOL) -> PairPolar:
    """msign([A, B]) for two bases with orthonormal columns, from one small SVD instead of an
    eigendecomposition of the (p + q)-square Gram matrix.

    With orthonormal blocks the Gram matrix is [[I, C], [C^T, I]], C = A^T B = P diag(sigma) Q^T, whose
    eigenvalues are 1 +- sigma_i with eigenvectors [p_i; +-q_i] / sqrt(2) (and 1 for the |p - q| extra
    columns). Its pseudo-inverse square root is then two diagonal weights, alpha = (a+ + a-) / 2 and
    beta = (a+ - a-) / 2 with a+- = (1 +- sigma)^(-1/2), zeroed below the floor rtol * max eigenvalue:
    msign([A, B]) = [(AP alpha + BQ beta) P^T, (AP beta + BQ alpha) Q^T]. Singular vectors computed in
    fp32 are orthonormal only to ~1e-6, which would move eigenvalues 1 - sigma of shared directions across
    the floor, so each block is first whitened by the Cholesky factor of its own float64 Gram matrix
    (A L^-T is exactly orthonormal); this is the same polar factor the float64 reference computes for the
    whitened bases. Costs three thin float64 products, two Cholesky factors and a min(p, q)-square SVD,
    about half of eigendecomposing the whole Gram matrix at p = q = 128."""
    dtype = compute_dtype(a)
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    chol_a = torch.linalg.cholesky(a64.mT @ a64)
    chol_b = torch.linalg.cholesky(b64.mT @ b64)
    cross = torch.linalg.solve_triangular(chol_a, a64.mT @ b64, upper=False)
    cross = torch.linalg.solve_triangular(chol_b, cross.mT, upper=False).mT
    r = min(cross.shape)
    if r:
        p_rot, sigma, q_rot_t = torch.linalg.svd(cross)
        q_rot = q_rot_t.mT
    else:
        p_rot = torch.eye(a.shape[1], dtype=torch.float64, device=a.device)
        q_rot = torch.eye(b.shape[1], dtype=torch.float64, device=a.device)
        sigma = cross.new_zeros(0)
    sigma = sigma.clamp(0.0, 1.0)
    plus, minus = 1.0 + sigma, 1.0 - sigma
    floor = rtol * (plus[0] if r else torch.ones((), dtype=torch.float64, device=a.device))
    tiny = torch.finfo(torch.float64).tiny
    inv_plus = torch.where(plus > floor, plus.clamp_min(tiny).rsqrt(), torch.zeros_like(plus))
    inv_minus = torch.where(minus > floor, minus.clamp_min(tiny).rsqrt(), torch.zeros_like(minus))
    alpha, beta = ((inv_plus + inv_minus) / 2).to(dtype), ((inv_plus - inv_minus) / 2).to(dtype)
    x_a = a.to(dtype) @ torch.linalg.solve_triangular(chol_a.mT, p_rot, upper=True).to(dtype)
    x_b = b.to(dtype) @ torch.linalg.solve_triangular(chol_b.mT, q_rot, upper=True).to(dtype)
    first, second = x_a.clone(), x_b.clone()
    first[:, :r] = x_a[:, :r] * alpha + x_b[:, :r] * beta
    second[:, :r] = x_a[:, :r] * beta + x_b[:, :r] * alpha
    return PairPolar(first, p_rot, second, q_rot)


def pseudo_polar_reference(u: Tensor, rtol: float = EIG_RTOL) -> Tensor:
    """msign(U) with the pseudo-inverse floor of polar_of_pair (rtol on the Gram eigenvalues), expressed on
    singular values of an SVD."""
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
    """Columns of the subspace iteration for a top-k subspace, cold or warm: k plus max(k // 2, 10).

    Subspace iteration with `width` columns converges on the top-k subspace at the rate
    (sigma_{width+1}/sigma_k)^2 per iteration whatever the gap at k, and the shift halves that rate's
    distance from zero. Measured along real SmolLM2 momentum streams at k=128, 1.5k columns with one
    plain power step before the first Ritz step cost 1.0-1.07x Muon from a Gaussian start, where 2k
    columns cost 1.2-1.35x for the same tolerance: products grow with the width, QRs with its square
    and the eigendecomposition with its cube."""
    return k + max(k // 2, 10)


def gaussian_start(m: Tensor, width: int, seed: int = SKETCH_SEED) -> Tensor:
    """Seeded Gaussian test matrix on m's device, so a cold sketch is reproducible."""
    gen = torch.Generator(device=m.device).manual_seed(seed)
    return torch.randn(m.shape[-1], width, generator=gen, device=m.device, dtype=compute_dtype(m))


class RitzStep(NamedTuple):
    """One subspace iteration from the right basis `start`: the leading `keep` Ritz triplets (paired), all
    Ritz values, and what produced them: q = orth(m S) = m S R^-1, the image z = m^T q (m ~ q z^T on
    the sketch), R and the rotation W to Ritz order. What only some iterations need is computed on
    request: the full Ritz basis (a warm start) and the next iteration's start."""

    top: TopK
    s: Tensor
    start: Tensor
    left: Tensor
    r_factor: Tensor
    image: Tensor
    rotation: Tensor
    scale: Tensor

    def basis(self) -> Tensor:
        """All right Ritz vectors, largest first: a warm start whose first k columns are the answer's V_k."""
        return (self.image @ self.rotation) * self.scale

    def shifted_start(self) -> Tensor:
        """The next start, span((m^T m - c) S) with c = s_w^2 / 2 (shifted_image)."""
        return shifted_image(self.start, self.left, self.r_factor, self.image, self.s[-1].square() / 2)


def shifted_image(start: Tensor, q: Tensor, r: Tensor, z: Tensor, shift: Tensor | None) -> Tensor:
    """span((m^T m - c) S) from m S = q R and z = m^T q, as z - c S R^-1 with unit columns: the form whose
    columns have z's conditioning (s_1 / s_w), where z R - c S would have its square.

    The shift c = s_w^2 / 2 maps the unwanted spectrum [0, sigma_{w+1}^2] into [-c, c], so the top-k
    error shrinks by about (rho / 2) / (1 - rho / 2) per iteration instead of rho = (s_w / s_k)^2
    (shifted_rate); since c < sigma_{w+1}^2 it is never the slower one. Pivots are kept off zero (a
    momentum of rank below the width): such a column becomes some direction of span(S), still a valid
    start. Unit columns keep the tail in fp32 range from step to step. shift None: plain z."""
    image = z
    if shift is not None:
        pivots = r.diagonal()
        floor = pivots.abs().max() * FP32_EPS + torch.finfo(pivots.dtype).tiny
        safe = r + torch.diag(torch.where(pivots.abs() < floor, floor - pivots, torch.zeros_like(pivots)))
        image = z - shift * torch.linalg.solve_triangular(safe, start, upper=True, left=False)
    return image / torch.linalg.vector_norm(image, dim=0).clamp_min(torch.finfo(image.dtype).tiny)


def shifted_rate(s: Tensor, keep: int) -> Tensor:
    """Convergence factor per iteration of the top-`keep` subspace under the shifted iteration of
    subspace_iteration_step, from its Ritz values: with lambda = s^2 and the shift c = lambda_w / 2,
    max(c, lambda_{w+1} - c) / (lambda_k - c) ~ (rho / 2) / (1 - rho / 2) where rho = (s_w / s_k)^2 is the
    plain iteration's factor (lambda_{w+1} taken as lambda_w, the sketch's best estimate of it)."""
    rho = (s[-1] / s[keep - 1].clamp_min(torch.finfo(s.dtype).tiny)).square()
    return (rho / 2) / (1 - rho / 2)


def subspace_iteration_step(m: Tensor, start: Tensor, keep: int) -> RitzStep:
    """One step of subspace iteration from the right basis `start` (n x width), with Rayleigh-Ritz.

    q = orth(m S) and z = m^T q; the Ritz triplets of m on the sketch come from the eigendecomposition of
    the small float64 Gram matrix z^T z = W diag(s^2) W^T: u = q W, v = z W / s, so q^T m = u diag(s) v^T
    exactly on the iterate. That replaces a second QR (of z) and an SVD of its R factor, about a third of
    an iteration's time on SmolLM2's blocks at K=128 (one CPU core). Callers pass m wide (rows <=
    columns), so the one QR is of the short side."""
    m = m.to(compute_dtype(m))
    start = start.to(m.dtype)
    q, r = torch.linalg.qr(m @ start)
    z = m.mT @ q
    z64 = z.to(torch.float64)
    evals, evecs = torch.linalg.eigh(z64.mT @ z64)
    s64 = evals.flip(0).clamp_min(0).sqrt()
    rotation = evecs.flip(1).to(m.dtype)
    # Directions with a zero Ritz value (rank below the width) are rounding noise: scaled to unit length
    # they are still a usable start, never a division by zero.
    scale = s64.clamp_min(s64[:1] * FP32_EPS + torch.finfo(m.dtype).tiny).reciprocal().to(m.dtype)
    s = s64.to(m.dtype)
    top = TopK(q @ rotation[:, :keep], s[:keep], (z @ rotation[:, :keep]) * scale[:keep])
    return RitzStep(top, s, start, q, r, z, rotation, scale)


def power_step(m: Tensor, start: Tensor, shift: Tensor | None = None) -> Tensor:
    """The right basis one (shifted) subspace-iteration step further, without the Rayleigh-Ritz step:
    about half the cost of subspace_iteration_step. The next step's QR orthonormalizes whatever the
    start is."""
    m = m.to(compute_dtype(m))
    start = start.to(m.dtype)
    q, r = torch.linalg.qr(m @ start)
    return shifted_image(start, q, r, m.mT @ q, shift)


def captures_range(m: Tensor, step: RitzStep) -> bool:
    """Whether the sketch holds m's whole numerical range: ||m - q z^T||_F within the numerical-rank
    tolerance of the largest Ritz value. Then the Ritz triplets within the numerical rank are m's exact
    singular triplets (a momentum of rank below the sketch width, as early in training or from short
    batches), and no further iteration or exact decomposition is needed. One product and one transfer."""
    m = m.to(compute_dtype(m))
    residual, top = torch.stack([torch.linalg.matrix_norm(m - step.left @ step.image.mT), step.s[0]]).tolist()
    return residual <= rank_tolerance(tuple(m.shape)) * top


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
