"""The SIFT direction: its identities, and the exact and fast paths against the float64 reference."""

import pytest
import torch

from sift_cli.engine import msign_exact, sift_direction, sift_direction_reference
from sift_cli.engine.direction import top_k_tracked
from sift_cli.engine.linalg import sketch_width, top_k_svd, warm_sketch_width
from helpers import F64, decaying, orthonormal



def conflicting_pair(m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    m_f = decaying(m, n, seed)
    return m_f, -0.6 * m_f + 0.8 * decaying(m, n, seed + 10)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(F64) - b.to(F64)).norm() / b.to(F64).norm())


@pytest.mark.parametrize("exact", [True, False])
def test_full_k_on_square_block_is_mean_of_msigns(exact):
    m_f = torch.randn(24, 24, generator=torch.Generator().manual_seed(0))
    m_g = torch.randn(24, 24, generator=torch.Generator().manual_seed(1))
    d = sift_direction(m_f, m_g, k=None, exact=exact)
    expected = (msign_exact(m_f.to(F64)) + msign_exact(m_g.to(F64))) / 2
    assert rel(d, expected) < 1e-5


@pytest.mark.parametrize("exact", [True, False])
def test_orthogonal_subspaces_give_sum_of_rank_k_directions(exact):
    left, right = orthonormal(80, 16, 2), orthonormal(120, 16, 3)
    s = torch.linspace(4.0, 1.0, 8, dtype=F64)
    m_f = (left[:, :8] * s) @ right[:, :8].mT
    m_g = (left[:, 8:] * (2 * s)) @ right[:, 8:].mT
    d = sift_direction(m_f.float(), m_g.float(), k=8, exact=exact)
    expected = left[:, :8] @ right[:, :8].mT + left[:, 8:] @ right[:, 8:].mT
    assert rel(d, expected) < 1e-5


@pytest.mark.parametrize("exact", [True, False])
def test_identical_subspaces_give_the_common_direction(exact):
    left, right = orthonormal(80, 6, 4), orthonormal(120, 6, 5)
    m_f = (left * torch.linspace(3.0, 1.0, 6, dtype=F64)) @ right.mT
    m_g = (left * torch.linspace(9.0, 0.5, 6, dtype=F64)) @ right.mT
    d = sift_direction(m_f.float(), m_g.float(), k=6, exact=exact)
    assert rel(d, left @ right.mT) < 1e-5


@pytest.mark.parametrize("exact", [True, False])
def test_loss_scale_does_not_change_direction(exact):
    m_f, m_g = conflicting_pair(64, 96, 6)
    m_f, m_g = m_f.float(), m_g.float()
    d = sift_direction(m_f, m_g, k=8, exact=exact)
    assert rel(sift_direction(7.0 * m_f, 0.01 * m_g, k=8, exact=exact), d) < 1e-4


@pytest.mark.parametrize("k", [16, None])
def test_exact_path_matches_reference(k):
    m_f, m_g = conflicting_pair(96, 160, 7)
    d = sift_direction(m_f.float(), m_g.float(), k=k, exact=True)
    assert rel(d, sift_direction_reference(m_f, m_g, k)) <= 1e-4


@pytest.mark.parametrize("shape", [(160, 240), (240, 160), (200, 200)])
def test_fast_path_within_two_percent_on_decaying_spectrum(shape):
    m_f, m_g = conflicting_pair(*shape, 8)
    k = 24
    assert sketch_width(k) < min(shape)
    d = sift_direction(m_f.float(), m_g.float(), k=k)
    assert rel(d, sift_direction_reference(m_f, m_g, k)) <= 0.02


@pytest.mark.parametrize("k", [None, 8])
@pytest.mark.parametrize("exact", [True, False])
def test_rank_deficient_momenta_leak_no_null_space(exact, k):
    gen = torch.Generator().manual_seed(9)
    a, b = torch.randn(60, 3, generator=gen, dtype=F64), torch.randn(3, 90, generator=gen, dtype=F64)
    c, e = torch.randn(60, 2, generator=gen, dtype=F64), torch.randn(2, 90, generator=gen, dtype=F64)
    m_f, m_g = (a @ b).float(), (c @ e - 0.5 * a @ b).float()
    d = sift_direction(m_f, m_g, k=k, exact=exact).to(F64)
    cols = torch.linalg.qr(torch.cat([a, c], dim=1)).Q
    rows = torch.linalg.qr(torch.cat([b, e], dim=0).mT).Q
    assert (d - cols @ (cols.mT @ d)).norm() < 1e-4
    assert (d - (d @ rows) @ rows.mT).norm() < 1e-4
    assert torch.linalg.matrix_rank(d, rtol=1e-3) <= 5
    assert rel(d, sift_direction_reference(m_f, m_g, k)) < 1e-4


def test_one_zero_momentum_gives_the_other_direction():
    m_g = decaying(30, 40, 10)
    d = sift_direction(torch.zeros(30, 40), m_g.float(), k=None, exact=True)
    assert rel(d, msign_exact(m_g)) < 1e-5


def test_warm_tracking_converges_on_slowly_moving_momentum():
    base = decaying(160, 240, 11)
    k = 16
    basis = None
    errors = []
    for step in range(6):
        drift = 1e-3 * step * decaying(160, 240, 20 + step)
        m = (base + drift).float()
        top, basis = top_k_tracked(m, k, basis, fresh=step > 0)
        exact = top_k_svd((base + drift), k)
        errors.append(float((top.u.to(F64) @ top.u.to(F64).mT - exact.u @ exact.u.mT).norm()))
    assert errors[-1] < 1e-3
    assert basis.shape == (240, warm_sketch_width(k))


def test_randomized_subspace_keeps_no_cache():
    m = decaying(100, 120, 12).float()
    _, basis = top_k_tracked(m, 8, None, fresh=False, subspace="randomized")
    assert basis is None


def test_large_k_falls_back_to_full_svd():
    m = decaying(30, 40, 13).float()
    top, basis = top_k_tracked(m, 20, None, fresh=False)
    assert basis is None
    assert torch.allclose(top.s, top_k_svd(m, 20).s)
