"""The SIFT direction D = msign([U_f, U_g]) msign([V_f, V_g])^T from two momenta.

The fast path finds each momentum's top-k subspace by subspace iteration and knows its own error: after
every iteration it estimates how far the rank-k direction U_k V_k^T still is from the exact one, and it
stops when that estimate is below the tolerance, or takes the exact decomposition when the estimate's
own convergence rate says the tolerance cannot be reached within MAX_ITERATIONS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .config import OptimizerConfig, Subspace
from .linalg import (
    RitzStep,
    TopK,
    compute_dtype,
    direction_change,
    gaussian_start,
    gram_inv_sqrt,
    leading,
    pseudo_polar,
    pseudo_polar_reference,
    rank_tolerance,
    sketch_width,
    subspace_iteration_step,
    top_k_gram,
    top_k_svd,
    warm_sketch_width,
)

DEFAULT_TOL = OptimizerConfig.subspace_tol
CACHE_DTYPE = torch.bfloat16
"""Storage of the per-block warm start between steps. It is only where the next iteration starts (and the
first iteration's give-up test): acceptance always compares two iterates computed in fp32 from the
momentum itself, so rounding the start costs at most iterations, never accuracy. bf16 halves the
caches, which at K=128 on SmolLM2's 576-wide blocks is what keeps SIFT's state below mixed-precision
AdamW's (`sift bench memory`)."""
MAX_ITERATIONS = 6
"""Cap on subspace iterations before the exact decomposition. One iteration (two products, two QRs and a
small SVD at width 1.5k) costs about a quarter of top_k_gram on SmolLM2's 576-wide blocks at k=128 (one
CPU core); blocks that converge take 2-4 (real SmolLM2 momenta), and a block whose rate says the
tolerance is out of reach gives up at once, so the cap only bounds slow but converging blocks."""


class WarmStart(NamedTuple):
    """What one momentum's fast path keeps between steps: the previous answer's left vectors (m x k) and
    its right Ritz basis (n x width, largest first, so its first k columns are the answer's V_k)."""

    left: Tensor
    right: Tensor


@dataclass(frozen=True)
class TrackedTopK:
    """One momentum's top-k triplets from the fast path, and how they were obtained.

    warm: what to start from next step (None: keep nothing). error: the a-posteriori estimate of the
    relative Frobenius error of U_k V_k^T (0.0 when exact). fallback: the tolerance was out of reach and
    the exact decomposition was taken. iterations: subspace iterations run."""

    top: TopK
    warm: WarmStart | None
    error: float
    fallback: bool
    iterations: int


def combine_subspaces(f: TopK, g: TopK) -> Tensor:
    """D = msign(U) msign(V)^T with U = [U_f, U_g], V = [V_f, V_g], never an SVD of the bases.

    Thin bases (2K below both sides): D = U (G_U^{+1/2} G_V^{+1/2}) V^T, two 2K x 2K eigendecompositions
    and one 2K x 2K product in the middle. At full K a basis is wider than tall, and its msign comes
    from the smaller Gram matrix instead (pseudo_polar), 8x less eigendecomposition work."""
    u = torch.cat([f.u, g.u], dim=1)
    v = torch.cat([f.v, g.v], dim=1)
    if u.shape[0] >= u.shape[1] and v.shape[0] >= v.shape[1]:
        return (u @ (gram_inv_sqrt(u) @ gram_inv_sqrt(v)).to(u.dtype)) @ v.mT
    return pseudo_polar(u) @ pseudo_polar(v).mT


def _sketch_pays(shape: torch.Size, k: int | None) -> bool:
    return k is not None and sketch_width(k) < min(shape)


def subspace_estimate(previous: TopK, current: RitzStep, k: int) -> tuple[float, float]:
    """(estimated error of current's rank-k direction, convergence factor per iteration).

    Subspace iteration of width w shrinks the top-k error by rho = (sigma_{w+1}/sigma_k)^2 per
    iteration; the Ritz values give rho ~ (s_w/s_k)^2. With e_i = rho e_{i-1}, the change between two
    iterates is (1 - rho) e_{i-1}, so e_i = change * rho / (1 - rho). On flat spectra rho -> 1 and the
    estimate grows without bound: the top-k subspace is ill-defined there and no iteration count fixes
    that. A momentum whose numerical rank is below k gets an infinite estimate too (its Ritz vectors
    past the rank are noise): the exact path keeps only the rank. Along real SmolLM2 momentum streams the
    largest estimate and the largest true error of the accepted directions agree within ~15%
    (`sift bench engine`). All three numbers come back in one host transfer."""
    s = current.s
    tol = rank_tolerance((current.top.u.shape[0], current.top.v.shape[0])) * s[0]
    rank_short = (s[k - 1] <= tol).to(s.dtype)
    rho_t = (s[-1] / s[k - 1].clamp_min(torch.finfo(s.dtype).tiny)).square()
    change, rho, short = torch.stack([direction_change(previous, current.top), rho_t, rank_short]).tolist()
    if short or not math.isfinite(rho) or rho >= 1.0:
        return math.inf, 1.0
    return change * rho / (1.0 - rho), rho


def top_k_adaptive(m: Tensor, k: int, start: Tensor, tol: float, last: TopK | None = None) -> TrackedTopK:
    """Subspace iteration from the right basis `start` until the error estimate is at most tol, else exact.

    From the second iteration on, it stops when the estimate e <= tol, and gives up early when
    e * rho^(iterations left) > tol (the tolerance is out of reach within MAX_ITERATIONS); giving up
    takes top_k_gram, whose leading vectors of the iterate's width become the next warm start.
    `last`, the previous step's answer that `start` came from, lets the first iteration already give
    up (its change from `last` mixes the momentum's drift into the estimate, which is only safe in that
    direction: acceptance always compares two iterates of this momentum). One host transfer per
    iteration."""
    previous, done = None, 0
    while done < MAX_ITERATIONS:
        current = subspace_iteration_step(m, start, k)
        done += 1
        start = current.span
        reference = previous if previous is not None else last
        if reference is not None:
            error, rho = subspace_estimate(reference, current, k)
            if previous is not None and error <= tol:
                return TrackedTopK(current.top, WarmStart(current.top.u, current.right_basis()), error, False, done)
            if error * rho ** (MAX_ITERATIONS - done) > tol:
                break
        previous = current.top
    exact = top_k_gram(m, start.shape[1])
    top = leading(exact, k, tuple(m.shape))
    warm = WarmStart(top.u, exact.v) if exact.s.numel() == start.shape[1] else None
    return TrackedTopK(top, warm, 0.0, True, done)


def sift_direction(
    m_f: Tensor, m_g: Tensor, k: int | None = None, exact: bool = False, tol: float = DEFAULT_TOL
) -> Tensor:
    """SIFT direction of two momenta from their top-k singular vectors (k None: numerical rank).

    Directions at or beyond the numerical rank are never used, so rank-deficient momenta let no
    null-space noise in. exact=True takes full SVDs. The default fast path runs a cold randomized range
    finder (sketch_width(k) columns) adaptively to the error estimate tol (top_k_adaptive); it takes
    the exact top_k_gram when k is None or the sketch is not narrower than min(m, n). The optimizer
    does better per step: it warm-starts the iteration from the previous step's basis (top_k_tracked).
    """
    if exact:
        return combine_subspaces(top_k_svd(m_f, k), top_k_svd(m_g, k))
    return combine_subspaces(*(top_k_tracked(m, k, None, "randomized", tol).top for m in (m_f, m_g)))


def sift_direction_reference(m_f: Tensor, m_g: Tensor, k: int | None = None) -> Tensor:
    """Slow, obviously correct SIFT direction: float64 full SVDs and SVD polar factors."""
    f = top_k_svd(m_f.to(torch.float64), k)
    g = top_k_svd(m_g.to(torch.float64), k)
    left = pseudo_polar_reference(torch.cat([f.u, g.u], dim=1))
    right = pseudo_polar_reference(torch.cat([f.v, g.v], dim=1))
    return left @ right.mT


def top_k_tracked(
    m: Tensor, k: int | None, warm: WarmStart | None, subspace: Subspace = "auto", tol: float = DEFAULT_TOL
) -> TrackedTopK:
    """Top-k triplets for one momentum inside the optimizer, with what to keep for next step.

    subspace="auto": adaptive subspace iteration warm-started from this block's previous answer
    (warm_sketch_width(k) columns, kept in CACHE_DTYPE; a cold Gaussian start of sketch_width(k) columns
    when there is none).
    subspace="randomized": the cold start every step and nothing kept: stateless and reproducible, more
    iterations for the same tolerance. Either way the exact top_k_gram when k is None or the sketch is
    not narrower than min(m, n) (there an iteration would cost as much as the exact answer).
    """
    if k is None or not _sketch_pays(m.shape, k):
        return TrackedTopK(top_k_gram(m, k), None, 0.0, False, 0)
    width = warm_sketch_width(k)
    usable = subspace == "auto" and warm is not None and warm.right.shape == (m.shape[1], width)
    if usable:
        dtype = compute_dtype(m)
        left, right = warm.left.to(dtype), warm.right.to(dtype)
        # The estimate compares directions only; the last answer's singular values are not kept.
        last = TopK(left, left.new_ones(left.shape[1]), right[:, : left.shape[1]])
        found = top_k_adaptive(m, k, right, tol, last)
    else:
        found = top_k_adaptive(m, k, gaussian_start(m, sketch_width(k)), tol)
    if subspace == "randomized" or found.warm is None:
        return TrackedTopK(found.top, None, found.error, found.fallback, found.iterations)
    keep = WarmStart(found.warm.left.to(CACHE_DTYPE), found.warm.right[:, :width].to(CACHE_DTYPE))
    return TrackedTopK(found.top, keep, found.error, found.fallback, found.iterations)
