"""Fast linear-algebra routines of the engine against their slow references."""

import math

import pytest
import torch
from helpers import F64, decaying, orthonormal

from sift_cli.engine import alignment, msign, msign_exact, polar_of_pair
from sift_cli.engine.linalg import (
    NS_COEFFS,
    NS_STEPS,
    alignments,
    direction_change,
    gaussian_start,
    numerical_rank,
    pseudo_polar_reference,
    sketch_width,
    subspace_iteration_step,
    top_k_gram,
    top_k_svd,
)


def ns_reference(m: torch.Tensor) -> torch.Tensor:
    """Newton-Schulz acts on each singular value alone: apply the scalar quintic in float64."""
    u, s, vh = torch.linalg.svd(m.to(F64), full_matrices=False)
    x = s / (torch.linalg.matrix_norm(m.to(F64)) + 1e-7)
    a, b, c = NS_COEFFS
    for _ in range(NS_STEPS):
        x = a * x + b * x**3 + c * x**5
    return (u * x) @ vh


@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (64, 64)])
def test_msign_newton_schulz_matches_scalar_reference(shape):
    m = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    out = msign(m)
    assert out.dtype == torch.float32 and out.shape == m.shape
    ref = ns_reference(m)
    assert (out.to(F64) - ref).norm() / ref.norm() < 1e-5


def test_msign_is_close_to_exact_polar_factor():
    m = torch.randn(64, 96, generator=torch.Generator().manual_seed(2))
    s = torch.linalg.svdvals(msign(m).to(F64))
    assert 0.6 < float(s.min()) and float(s.max()) < 1.25
    exact = msign_exact(m.to(F64))
    assert alignment(msign(m), exact) > 0.98


def test_msign_promotes_bf16_to_fp32():
    m = torch.randn(16, 24).to(torch.bfloat16)
    assert msign(m).dtype == torch.float32


def test_msign_exact_is_polar_factor_on_numerical_range():
    left, right = orthonormal(30, 4, 3), orthonormal(20, 4, 4)
    m = left @ torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.5], dtype=F64)) @ right.mT
    assert torch.allclose(msign_exact(m.float()).to(F64), left @ right.mT, atol=1e-5)


def test_numerical_rank_counts_above_fp32_tolerance():
    s = torch.tensor([1.0, 1e-2, 1e-9, 0.0], dtype=F64)
    assert numerical_rank(s, (10, 10)) == 2
    assert numerical_rank(torch.zeros(3), (3, 3)) == 0


def assembled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """msign([a, b]) from polar_of_pair's factors, in float64."""
    pair = polar_of_pair(a, b)
    return torch.cat([pair.first.to(F64) @ pair.rot_first.mT, pair.second.to(F64) @ pair.rot_second.mT], dim=1)


@pytest.mark.parametrize(("m", "p", "q"), [(50, 12, 9), (20, 16, 12), (30, 7, 0)])
def test_polar_of_pair_matches_svd_reference(m, p, q):
    """Thin, wider than tall (shared directions forced: 28 columns in 20 dimensions) and one empty basis."""
    a, b = orthonormal(m, p, 5), orthonormal(m, q, 6) if q else torch.zeros(m, 0, dtype=F64)
    ref = pseudo_polar_reference(torch.cat([a, b], dim=1))
    assert (assembled(a, b) - ref).norm() / ref.norm() < 1e-10
    assert (assembled(a.float(), b.float()) - ref).norm() / ref.norm() < 1e-5


def test_polar_of_pair_overlapping_columns_are_well_defined():
    base = orthonormal(40, 6, 6)
    shared = torch.linalg.qr(torch.cat([base[:, :3], orthonormal(40, 2, 7)], dim=1)).Q
    out = assembled(base.float(), shared.float())
    ref = pseudo_polar_reference(torch.cat([base, shared], dim=1))
    assert (out - ref).norm() / ref.norm() < 1e-5
    assert torch.linalg.matrix_rank(out, rtol=1e-3) == 8


def test_polar_of_pair_keeps_close_but_distinct_directions():
    e = orthonormal(40, 2, 10)
    theta = 2e-3
    a, b = e[:, :1], math.cos(theta) * e[:, :1] + math.sin(theta) * e[:, 1:]
    out = assembled(a.float(), b.float())
    assert torch.linalg.matrix_rank(out, rtol=1e-3) == 2
    assert (out - msign_exact(torch.cat([a, b], dim=1), rtol=1e-12)).norm() < 1e-3


def test_top_k_svd_truncates_at_numerical_rank():
    m = (torch.randn(40, 5, dtype=F64) @ torch.randn(5, 30, dtype=F64)).float()
    assert top_k_svd(m, None).u.shape == (40, 5)
    assert top_k_svd(m, 3).v.shape == (30, 3)
    assert top_k_svd(m, 64).s.numel() == 5


def iterate(m: torch.Tensor, start: torch.Tensor, k: int, steps: int):
    for _ in range(steps):
        found = subspace_iteration_step(m, start, k)
        start = found.basis()
    return found


def test_randomized_sketch_recovers_paired_top_k():
    m = decaying(120, 200, 8)
    k = 12
    found = iterate(m.float(), gaussian_start(m.float(), sketch_width(k)), k, steps=4)
    top, exact = found.top, top_k_svd(m, k)
    assert found.basis().shape == (200, sketch_width(k))
    assert torch.allclose(found.basis()[:, :k], top.v)
    assert torch.allclose(top.s.to(F64), exact.s, rtol=1e-4)
    # Pairing: u_i^T m v_i = s_i for the sketch's own vectors.
    assert torch.allclose(((top.u.to(F64).mT @ m) * top.v.to(F64).mT).sum(1), exact.s, rtol=1e-4)
    proj_err = (top.u.to(F64) @ top.u.to(F64).mT - exact.u @ exact.u.mT).norm()
    assert proj_err < 0.05


def test_warm_start_converges_further_than_cold():
    m = decaying(120, 200, 9).float()
    k, exact = 12, top_k_svd(decaying(120, 200, 9), 12)
    start = gaussian_start(m, sketch_width(k))

    def err(top):
        return float((top.u.to(F64) @ top.u.to(F64).mT - exact.u @ exact.u.mT).norm())

    cold = subspace_iteration_step(m, start, k)
    warm = subspace_iteration_step(m, cold.basis(), k)
    assert err(warm.top) < 0.5 * err(cold.top)


@pytest.mark.parametrize("shape", [(90, 140), (140, 90), (100, 100)])
@pytest.mark.parametrize("k", [10, None])
def test_gram_top_k_matches_float64_svd(shape, k):
    m = decaying(*shape, 14)
    gram = top_k_gram(m.float(), k)
    exact = top_k_svd(m, k)
    assert gram.s.shape == exact.s.shape
    assert torch.allclose(gram.s.to(F64), exact.s, rtol=1e-4)
    assert rel_direction(gram, exact) < 1e-4


def test_gram_top_k_keeps_only_the_numerical_rank():
    gen = torch.Generator().manual_seed(15)
    m = torch.randn(50, 4, generator=gen, dtype=F64) @ torch.randn(4, 70, generator=gen, dtype=F64)
    gram = top_k_gram(m.float(), 10)
    assert gram.s.numel() == 4
    assert rel_direction(gram, top_k_svd(m, 4)) < 1e-4


def rel_direction(a, b) -> float:
    d_a, d_b = a.u.to(F64) @ a.v.to(F64).mT, b.u.to(F64) @ b.v.to(F64).mT
    return float((d_a - d_b).norm() / d_b.norm())


def test_direction_change_is_the_relative_frobenius_distance():
    a, b = top_k_svd(decaying(60, 80, 16), 8), top_k_svd(decaying(60, 80, 17), 8)
    assert float(direction_change(a, b)) == pytest.approx(rel_direction(a, b), rel=1e-6)
    assert float(direction_change(b, b)) < 1e-6


def test_alignment_cosine_and_zero_norm():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert alignment(a, a) == pytest.approx(1.0)
    assert alignment(a, -3 * a) == pytest.approx(-1.0)
    assert alignment(a, torch.tensor([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(0.0)
    assert alignment(a, torch.zeros(2, 2)) == 0.0
    b = torch.randn(5, 7)
    c = torch.randn(5, 7)
    expected = float((b * c).sum() / (b.norm() * c.norm()))
    assert alignment(b, c) == pytest.approx(expected, rel=1e-5)
    assert not math.isnan(alignment(torch.zeros(3), torch.zeros(3)))
    assert alignments((b, c), (a, -a), (a, torch.zeros(2, 2))) == pytest.approx([expected, -1.0, 0.0], rel=1e-5)
