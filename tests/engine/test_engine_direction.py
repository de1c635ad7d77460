"""The SIFT direction: its identities, and the exact and fast paths against the float64 reference."""

import pytest
import torch
from helpers import F64, decaying, orthonormal

from sift_cli.bench.streams import drifting_stream
from sift_cli.engine import msign_exact, sift_direction, sift_direction_reference
from sift_cli.engine.direction import (
    MAX_ITERATIONS,
    combine_subspaces,
    top_k_adaptive,
    top_k_tracked,
)
from sift_cli.engine.linalg import (
    gaussian_start,
    leading,
    sketch_width,
    subspace_iteration_step,
    top_k_svd,
)


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
    warm = None
    errors = []
    for step in range(6):
        drift = 1e-3 * step * decaying(160, 240, 20 + step)
        m = (base + drift).float()
        tracked = top_k_tracked(m, k, warm, tol=1e-3)
        warm = tracked.warm
        exact = top_k_svd((base + drift), k)
        errors.append(float((tracked.top.u.to(F64) @ tracked.top.u.to(F64).mT - exact.u @ exact.u.mT).norm()))
    assert errors[-1] < 1e-3
    assert warm.right.shape == (240, sketch_width(k)) and warm.left.shape == (160, k)


def test_randomized_subspace_keeps_no_cache():
    m = decaying(100, 120, 12).float()
    assert top_k_tracked(m, 8, None, subspace="randomized").warm is None


def test_large_k_takes_the_exact_gram_path():
    m = decaying(30, 40, 13).float()
    tracked = top_k_tracked(m, 20, None)
    assert tracked.warm is None and tracked.error == 0.0 and not tracked.fallback
    assert torch.allclose(tracked.top.s, top_k_svd(m, 20).s, rtol=1e-5)


STREAM = dict(m=96, n=160, steps=14, rank=4, rate=0.05, noise=1.0)
"""A drifting stream in conflict whose K=16 top subspaces reach into the noise bulk: the hard case."""


def warm_start_alone(stream, k: int) -> list[float]:
    """The former fast path: one fixed power iteration from last step's basis, no error estimate."""
    errors, starts = [], {}
    for m_f, m_g in stream:
        tops = []
        for key, m in (("f", m_f), ("g", m_g)):
            start = starts.get(key, torch.randn(m.shape[1], sketch_width(k), generator=torch.Generator().manual_seed(0)))
            for _ in range(2):
                step = subspace_iteration_step(m, start, k)
                start = step.basis()
            starts[key] = step.basis()[:, : sketch_width(k)]
            tops.append(leading(step.top, k, tuple(m.shape)))
        errors.append(rel(combine_subspaces(*tops), sift_direction_reference(m_f, m_g, k)))
    return errors


def tracked_errors(stream, k: int, tol: float) -> tuple[list[float], list[float], int]:
    """(true error of D, estimate, fallbacks) per step of the default fast path along a stream."""
    errors, estimates, fallbacks, warm = [], [], 0, {}
    for m_f, m_g in stream:
        found = {key: top_k_tracked(m, k, warm.get(key), tol=tol) for key, m in (("f", m_f), ("g", m_g))}
        warm = {key: t.warm for key, t in found.items()}
        d = combine_subspaces(found["f"].top, found["g"].top)
        errors.append(rel(d, sift_direction_reference(m_f, m_g, k)))
        estimates.append(max(t.error for t in found.values()))
        fallbacks += sum(t.fallback for t in found.values())
    return errors, estimates, fallbacks


def p95(values: list[float]) -> float:
    return float(torch.tensor(values).quantile(0.95))


def test_stream_where_warm_start_alone_fails_is_caught_and_corrected():
    k = 16
    assert p95(warm_start_alone(drifting_stream(**STREAM), k)) > 0.1
    errors, estimates, fallbacks = tracked_errors(drifting_stream(**STREAM), k, tol=0.01)
    assert p95(errors) <= 0.02
    assert fallbacks > 0
    assert max(estimates) <= 0.01


def test_estimate_bounds_the_error_where_iteration_converges():
    stream = drifting_stream(m=96, n=160, steps=14, rank=32, rate=0.02, noise=0.1, seed=3)
    errors, estimates, fallbacks = tracked_errors(stream, k=16, tol=0.01)
    assert fallbacks < len(errors)
    assert max(errors) <= 0.02
    assert all(0 <= e <= 0.01 for e in estimates)


def test_flat_spectrum_takes_the_exact_decomposition():
    """No gap at K: every top-K subspace of a flat spectrum is as good as another, so no iteration can
    settle on the exact path's; the estimate's rate says so and the exact decomposition is taken."""
    k = 12
    s = 1.0 + 1e-3 * torch.rand(80, generator=torch.Generator().manual_seed(5), dtype=F64)
    m = ((orthonormal(80, 80, 6) * s) @ orthonormal(120, 80, 7).mT).float()
    tracked = top_k_tracked(m, k, None)
    assert tracked.fallback and tracked.iterations < MAX_ITERATIONS
    exact = top_k_svd(m.to(F64), k)
    assert float((tracked.top.u.to(F64) @ tracked.top.v.to(F64).mT - exact.u @ exact.v.mT).norm()) < 1e-3


def test_adaptive_iteration_stops_once_the_estimate_meets_the_tolerance():
    m = decaying(120, 200, 18).float()
    loose = top_k_adaptive(m, 8, torch.randn(200, 16, generator=torch.Generator().manual_seed(1)), tol=0.05)
    tight = top_k_adaptive(m, 8, torch.randn(200, 16, generator=torch.Generator().manual_seed(1)), tol=1e-4)
    assert loose.iterations < tight.iterations
    assert loose.error <= 0.05 and (tight.error <= 1e-4 or tight.fallback)


def test_low_rank_momentum_is_answered_from_the_sketch_without_fallback():
    """Rank 12 (between k=8 and the sketch width): the sketch holds the whole range after one product, so
    the Ritz triplets are exact and the rate is zero; rank 5 (below k): they are exact truncated to the
    numerical rank, which the residual check confirms at once."""
    for rank, k in ((12, 8), (5, 8)):
        left, right = orthonormal(90, rank, 30), orthonormal(140, rank, 31)
        m = (left * torch.linspace(3.0, 0.5, rank, dtype=F64)) @ right.mT
        tracked = top_k_tracked(m.float(), k, None)
        exact = top_k_svd(m, k)
        assert not tracked.fallback and tracked.error == 0.0 and tracked.iterations == (2 if rank < k else 3)
        assert tracked.top.s.numel() == min(rank, k)
        assert rel(tracked.top.u @ tracked.top.v.mT, exact.u @ exact.v.mT) < 1e-5


def test_split_below_fp32_resolution_takes_the_exact_decomposition():
    """Singular values k and k+1 a few fp32 roundings apart: any fp32 iteration mixes the two directions,
    so the fast path must take the float64 decomposition, which tells them apart."""
    k = 8
    s = torch.cat([torch.linspace(1.0, 0.02, k, dtype=F64), torch.tensor([0.02 - 1e-9], dtype=F64), torch.linspace(0.0199, 0.001, 71, dtype=F64)])
    m = (orthonormal(120, 80, 32) * s) @ orthonormal(160, 80, 33).mT
    tracked = top_k_tracked(m.float(), k, None)
    exact = top_k_svd(m.float().to(F64), k)  # the stored fp32 momentum's own split
    assert tracked.fallback
    assert rel(tracked.top.u @ tracked.top.v.mT, exact.u @ exact.v.mT) < 1e-4


def test_shifted_iteration_converges_faster_than_the_plain_one():
    m = decaying(150, 220, 34).float()
    k = 10
    exact = top_k_svd(decaying(150, 220, 34), k)
    plain = shifted = gaussian_start(m, sketch_width(k))
    for _ in range(3):
        plain_step, shifted_step = subspace_iteration_step(m, plain, k), subspace_iteration_step(m, shifted, k)
        plain, shifted = plain_step.basis(), shifted_step.shifted_start()
    errors = [rel(step.top.u @ step.top.v.mT, exact.u @ exact.v.mT) for step in (plain_step, shifted_step)]
    assert errors[1] < 0.7 * errors[0]


def test_zero_momentum_gives_an_empty_top_k_without_fallback():
    tracked = top_k_tracked(torch.zeros(90, 140), 8, None)
    assert tracked.top.s.numel() == 0 and not tracked.fallback and tracked.error == 0.0
