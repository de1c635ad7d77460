"""POME edit against its definition."""

import pytest
import torch

from sift_cli.engine import pome_edit

F64 = torch.float64


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=F64)).Q


def test_edit_keeps_top_fraction_at_mean_scale():
    u, v = orthonormal(20, 8, 0), orthonormal(30, 8, 1)
    s = torch.tensor([8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5], dtype=F64)
    base = torch.randn(20, 30, dtype=F64)
    trained = base + (u * s) @ v.mT
    out = pome_edit({"w": base}, {"w": trained}, rank_fraction=0.5)["w"]
    expected = base + s[:4].mean() * u[:, :4] @ v[:, :4].mT
    assert torch.allclose(out, expected, atol=1e-10)


def test_float_scale_and_fraction_rounds_up():
    u, v = orthonormal(12, 3, 2), orthonormal(10, 3, 3)
    delta = (u * torch.tensor([3.0, 2.0, 1.0], dtype=F64)) @ v.mT
    base = torch.zeros(12, 10, dtype=F64)
    out = pome_edit({"w": base}, {"w": base + delta}, rank_fraction=0.4, scale=0.25)["w"]
    assert torch.allclose(out, 0.25 * u[:, :2] @ v[:, :2].mT, atol=1e-10)


def test_fraction_is_of_numerical_rank_so_low_rank_change_gets_no_noise():
    u, v = orthonormal(40, 2, 4), orthonormal(50, 2, 5)
    base = torch.randn(40, 50)
    delta = ((u * torch.tensor([2.0, 1.0], dtype=F64)) @ v.mT).float()
    out = pome_edit({"w": base}, {"w": base + delta}, rank_fraction=1.0)["w"]
    edit = (out - base).to(F64)
    assert torch.allclose(edit, 1.5 * u @ v.mT, atol=1e-5)


def test_non_matrix_and_unmatched_tensors_come_from_trained():
    base = {"a.weight": torch.zeros(4, 4), "a.bias": torch.zeros(4), "head.weight": torch.zeros(3, 4)}
    trained = {k: torch.randn(v.shape) for k, v in base.items()}
    trained["extra"] = torch.ones(2, 2)
    out = pome_edit(base, trained, name_regex=r"^a\.")
    for name in ("a.bias", "head.weight", "extra"):
        assert torch.equal(out[name], trained[name]) and out[name] is not trained[name]
    assert not torch.equal(out["a.weight"], trained["a.weight"])


def test_identical_models_are_unchanged_and_dtype_kept():
    w = torch.randn(6, 5).to(torch.bfloat16)
    out = pome_edit({"w": w}, {"w": w.clone()})["w"]
    assert out.dtype == torch.bfloat16 and torch.equal(out, w)


def test_rejects_bad_arguments():
    w = torch.randn(3, 3)
    with pytest.raises(ValueError):
        pome_edit({"w": w}, {"w": w + 1}, rank_fraction=0.0)
    with pytest.raises(ValueError):
        pome_edit({"w": w}, {"w": w + torch.randn(3, 3)}, scale="median")
    with pytest.raises(ValueError):
        pome_edit({"w": torch.randn(2, 3)}, {"w": w})
