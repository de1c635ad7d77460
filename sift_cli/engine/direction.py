"""The SIFT direction D = msign([U_f, U_g]) msign([V_f, V_g])^T from two momenta.

The fast path finds each momentum's top-k subspace by (shifted) subspace iteration and knows its own
error: after every Rayleigh-Ritz step it estimates how far the rank-k direction U_k V_k^T still is from
the exact one, and it stops when that estimate is below the tolerance, or takes the exact decomposition
when the estimate's own convergence rate says the tolerance cannot be reached within MAX_ITERATIONS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

from .config import OptimizerConfig, Subspace
from .linalg import (
    FP32_EPS,
    RitzStep,
    TopK,
    captures_range,
    compute_dtype,
    direction_change,
    gaussian_start,
    leading,
    polar_of_pair,
    power_step,
    pseudo_polar_reference,
    rank_tolerance,
    shifted_rate,
    sketch_width,
    subspace_iteration_step,
    top_k_gram,
    top_k_svd,
)

DEFAULT_TOL = OptimizerConfig.subspace_tol
CACHE_DTYPE = torch.bfloat16
"""Storage of the per-block warm start between steps. It is only where the next iteration starts (and the
first iteration's give-up test): acceptance always compares two iterates computed in fp32 from the
momentum itself, so rounding the start costs at most iterations, never accuracy. bf16 halves the
caches, which at K=128 on SmolLM2's 576-wide blocks is what keeps SIFT's state below mixed-precision
AdamW's (`sift bench memory`)."""
MAX_ITERATIONS = 6
"""Cap on the subspace iterations of top_k_adaptive (product pairs, with or without a Ritz step) before
the exact decomposition. A Ritz iteration (two products, a QR of the short side and a float64
eigendecomposition at width 1.5k) costs about a sixth of top_k_gram on SmolLM2's 576-wide blocks at
k=128 (one CPU core); blocks that converge take 2-3 after the first power step (real SmolLM2 momenta),
and a block whose rate says the tolerance is out of reach gives up at once, so the cap only bounds slow
but converging blocks."""


class WarmStart(NamedTuple):
    """What one momentum's fast path keeps between steps, for the block in its wide orientation (the
    transpose of a tall block): the previous answer's vectors on the short side (min(m, n) x k) and its
    Ritz basis on the long side (max(m, n) x width, largest first, so its first k columns are the
    answer's vectors there)."""

    left: Tensor
    right: Tensor


@dataclass(frozen=True)
class TrackedTopK:
    """One momentum's top-k triplets from the fast path, and how they were obtained.

    warm: what to start from next step (None: keep nothing). error: the a-posteriori estimate of the
    relative Frobenius error of U_k V_k^T (0.0 when exact). fallback: the tolerance was out of reach and
    the exact decomposition was taken. iterations: subspace iterations run (product pairs m^T m S, with
    or without a Rayleigh-Ritz step)."""

    top: TopK
    warm: WarmStart | None
    error: float
    fallback: bool
    iterations: int


def combine_subspaces(f: TopK, g: TopK) -> Tensor:
    """D = msign(U) msign(V)^T with U = [U_f, U_g], V = [V_f, V_g], never an SVD or eigendecomposition of
    the merged bases.

    Each side's polar factor comes from the SVD of its k x k cross Gram matrix (polar_of_pair), so
    D = L_f (P_U^T P_V) R_f^T + L_g (Q_U^T Q_V) R_g^T: two k x k mixing matrices and two rank-k
    products. The same formula covers bases wider than tall (2K above min(m, n), e.g. k/v blocks at
    K=128): their shared directions are the cross Gram's unit singular values, dropped by the floor."""
    left, right = polar_of_pair(f.u, g.u), polar_of_pair(f.v, g.v)
    dtype = left.first.dtype
    mix_f = (left.rot_first.mT @ right.rot_first).to(dtype)
    mix_g = (left.rot_second.mT @ right.rot_second).to(dtype)
    return (left.first @ mix_f) @ right.first.mT + (left.second @ mix_g) @ right.second.mT


def _sketch_pays(shape: torch.Size, k: int | None) -> bool:
    return k is not None and sketch_width(k) < min(shape)


class Assessment(NamedTuple):
    """What one iterate says about itself, from one host transfer.

    error: estimated relative error of its rank-k direction (inf without a reference or where the rate
    says iteration cannot converge); rho: convergence factor per iteration; rank_short: the numerical
    rank is below k; split: the direction error fp32 rounding alone can cause at the split between the
    k-th and (k+1)-th singular directions, eps * s_1 / (s_k - s_{k+1}) (their mixing angle) times
    sqrt(2 / k) (one mixed pair out of k)."""

    error: float
    rho: float
    rank_short: bool
    split: float


def assess(reference: TopK | None, current: RitzStep, k: int, shape: tuple[int, int], gap: int = 1) -> Assessment:
    """Error estimate, rate, rank and split of an iterate, in one host transfer.

    The shifted iteration of width w shrinks the top-k error by rho per iteration, which the Ritz values
    give (shifted_rate). With e_i = rho^g e_{i-g} for iterates `gap` = g power steps apart, their change
    is (1 - rho^g) e_{i-g}, so e_i = change * rho^g / (1 - rho^g). On flat spectra rho -> 1 and the
    estimate grows without bound: the top-k subspace is ill-defined there and no iteration count fixes
    that. Along real SmolLM2 momentum streams the largest estimate and the largest true error of the
    accepted directions agree within ~15% (`sift bench engine`).

    The split covers what the rate cannot see: two singular values that nearly tie at k. Momenta are
    fp32, and rounding at the scale eps * s_1 mixes the k-th and (k+1)-th directions by about
    eps * s_1 / (s_k - s_{k+1}); measured on a real SmolLM2 momentum with s_{k+1}/s_k = 0.9995, the
    iterates agreed within 0.6% and were 12% away from the float64 answer (split 0.04). Only the exact
    float64 decomposition resolves such a split; along the real streams about 1 momentum in 40 of the
    576-wide blocks needs it."""
    s = current.s
    tiny = torch.finfo(s.dtype).tiny
    rank_short = (s[k - 1] <= rank_tolerance(shape) * s[0]).to(s.dtype)
    rho = shifted_rate(s, k)
    split = FP32_EPS * s[0] / (s[k - 1] - s[k]).clamp_min(tiny) * math.sqrt(2.0 / k)
    change = direction_change(reference, current.top) if reference is not None else s.new_tensor(math.inf)
    change, rho, short, split = torch.stack([change, rho, rank_short, split]).tolist()
    factor = rho**gap if math.isfinite(rho) else math.inf
    error = change * factor / (1.0 - factor) if factor < 1.0 else math.inf
    return Assessment(error if math.isfinite(error) else math.inf, min(rho, 1.0) if math.isfinite(rho) else 1.0, bool(short), split)


MAX_GAP = 3
"""Most power steps between two Rayleigh-Ritz iterates: the estimate's rate comes from the earlier one's
Ritz values, and a longer stretch on an extrapolated rate risks overshooting a slow block."""


def planned_gap(found: Assessment, tol: float, budget: int) -> int:
    """Power steps until the next Rayleigh-Ritz iterate: as many as the rate says the estimate needs to
    reach tol (error * rho^g <= tol), at least 1, at most MAX_GAP and the iterations left.

    A power step without Rayleigh-Ritz costs about half an iteration (the products and one QR, no
    eigendecomposition, no error estimate), so a block that needs g more steps pays for one Ritz step
    instead of g. On SmolLM2's 1536-wide blocks, whose rate is slower, this saves one Ritz step in
    most steps; on the 576-wide ones the plan is almost always a single step."""
    if not (math.isfinite(found.error) and 0.0 < found.rho < 1.0) or found.error <= tol:
        return 1
    return max(1, min(MAX_GAP, budget, math.ceil(math.log(tol / found.error) / math.log(found.rho))))


def top_k_adaptive(m: Tensor, k: int, start: Tensor, tol: float, last: TopK | None = None) -> TrackedTopK:
    """Subspace iteration from the right basis `start` until the error estimate is at most tol, else exact.

    From the second iteration on, it stops when the estimate e <= tol, and gives up early when
    e * rho^(iterations left) > tol (the tolerance is out of reach within MAX_ITERATIONS); giving up
    takes top_k_gram, whose leading vectors of the iterate's width become the next warm start. An
    accepted iterate whose split at k is below fp32 resolution (Assessment.split > tol) takes top_k_gram
    too. A momentum of numerical rank below k is answered from the sketch when the sketch holds its
    whole range (captures_range), else by top_k_gram.
    `last`, the previous step's answer that `start` came from, lets the first iteration already give
    up (its change from `last` mixes the momentum's drift into the estimate, which is only safe in that
    direction: acceptance always compares two iterates of this momentum). One host transfer per
    iteration. m is wide (rows <= columns)."""
    shape = (m.shape[0], m.shape[1])
    previous, done, gap = None, 0, 1
    while done < MAX_ITERATIONS:
        current = subspace_iteration_step(m, start, k)
        done += 1
        width = start.shape[1]
        found = assess(previous if previous is not None else last, current, k, shape, gap)
        if found.rank_short:
            if captures_range(m, current):
                return TrackedTopK(leading(current.top, k, shape), WarmStart(current.top.u, current.basis()), 0.0, False, done)
            break
        if previous is not None and found.error <= tol:
            if found.split > tol:
                break
            return TrackedTopK(current.top, WarmStart(current.top.u, current.basis()), found.error, False, done)
        has_reference = previous is not None or last is not None
        if has_reference and found.error * found.rho ** (MAX_ITERATIONS - done) > tol:
            break
        gap = planned_gap(found, tol, MAX_ITERATIONS - done) if has_reference else 1
        previous, start = current.top, current.shifted_start()
        for _ in range(gap - 1):
            start = power_step(m, start, current.s[-1].square() / 2)
        done += gap - 1
    exact = top_k_gram(m, width)
    top = leading(exact, k, shape)
    warm = WarmStart(top.u, exact.v) if exact.s.numel() == width else None
    return TrackedTopK(top, warm, 0.0, True, done)


def sift_direction(
    m_f: Tensor, m_g: Tensor, k: int | None = None, exact: bool = False, tol: float = DEFAULT_TOL
) -> Tensor:
    """SIFT direction of two momenta from their top-k singular vectors (k None: numerical rank).

    Directions at or beyond the numerical rank are never used, so rank-deficient momenta let no
    null-space noise in. exact=True takes full SVDs. The default fast path runs a randomized range
    finder (sketch_width(k) columns from a seeded Gaussian basis) adaptively to the error estimate tol
    (top_k_adaptive); it takes the exact top_k_gram when k is None or the sketch is not narrower than
    min(m, n). The optimizer warm-starts the iteration from the previous step's basis instead
    (top_k_tracked).
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

    subspace="auto": adaptive subspace iteration of sketch_width(k) columns warm-started from this
    block's previous answer (kept in CACHE_DTYPE), or from a seeded Gaussian basis when there is none.
    Either start first takes one power step without Rayleigh-Ritz: momenta move enough per step that the
    first Ritz iterate could never be accepted (it only serves as the reference of the second), and
    Rayleigh-Ritz does not change the span, so skipping it there gives the same answer for one Ritz
    step less (2 instead of 3 on SmolLM2's q/o blocks). Along real SmolLM2 momentum streams the warm
    start saves little over the Gaussian one (momenta move by ~30% per step in the bulk past the top
    directions): 0-8% of the time, measured.
    subspace="randomized": the Gaussian start every step and nothing kept: stateless and reproducible.
    Either way the exact top_k_gram when k is None or the sketch is not narrower than min(m, n) (there
    an iteration would cost as much as the exact answer).
    A tall block is iterated as its transpose, so the one QR per iteration is of the short side; its
    warm start is kept in that orientation (WarmStart).
    """
    if k is None or not _sketch_pays(m.shape, k):
        return TrackedTopK(top_k_gram(m, k), None, 0.0, False, 0)
    wide = m.shape[0] <= m.shape[1]
    t = m if wide else m.mT
    width = sketch_width(k)
    usable = (
        subspace == "auto"
        and warm is not None
        and warm.right.shape == (t.shape[1], width)
        and warm.left.shape == (t.shape[0], k)
    )
    last = None
    if usable:
        dtype = compute_dtype(t)
        left, right = warm.left.to(dtype), warm.right.to(dtype)
        # The estimate compares directions only; the last answer's singular values are not kept.
        last = TopK(left, left.new_ones(k), right[:, :k])
    start = right if usable else gaussian_start(t, width)
    found = top_k_adaptive(t, k, power_step(t, start), tol, last)
    found = replace(found, iterations=found.iterations + 1)
    top = found.top if wide else TopK(found.top.v, found.top.s, found.top.u)
    if subspace == "randomized" or found.warm is None:
        return TrackedTopK(top, None, found.error, found.fallback, found.iterations)
    keep = WarmStart(found.warm.left.to(CACHE_DTYPE), found.warm.right.to(CACHE_DTYPE))
    return TrackedTopK(top, keep, found.error, found.fallback, found.iterations)
