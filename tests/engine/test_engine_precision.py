"""bf16/fp16 parameters: updates reach the weights (master copy, Kahan, stochastic rounding), state
layout equals what the optimizer allocates, and bf16 state survives a checkpoint round trip."""

import math
from dataclasses import replace

import pytest
import torch
from test_engine_optimizer import assert_resume_is_exact, feed, grad_stream, make_params
from torch import nn

from sift_cli.bench.precision import run_precision_bench
from sift_cli.engine import OptimizerConfig, SiftOptimizer
from sift_cli.engine.precision import join_fp32, split_fp32, stochastic_round


def test_split_is_exact_and_rounds_to_nearest():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(20000, generator=gen) * 10 ** torch.randint(-30, 30, (20000,), generator=gen).float(),
        torch.tensor([0.0, -0.0, 1.0, -1.0, 3e-39, -3e-39, float("inf"), float("-inf"), 65504.0]),
    ])  # fmt: skip
    hi, lo = split_fp32(x)
    assert hi.dtype == torch.bfloat16 and lo.dtype == torch.int16
    assert torch.equal(join_fp32(hi, lo).view(torch.int32), x.view(torch.int32))
    # Nearest: no bf16 is closer than hi (ties, measure zero here, go away from zero).
    assert torch.equal(hi.float(), x.to(torch.bfloat16).float())
    assert torch.isnan(split_fp32(torch.tensor([float("nan")]))[0]).all()


def test_stochastic_rounding_is_unbiased():
    x = torch.full((200_000,), 1.0 + 2**-10)  # an eighth of the way from 1 to the next bf16, 1 + 2^-7
    rounded = stochastic_round(x, torch.bfloat16, torch.Generator().manual_seed(1)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert float(rounded.mean()) == pytest.approx(1.0 + 2**-10, abs=2e-5)
    exact = torch.tensor([0.5, -2.0, 3.0])
    assert torch.equal(stochastic_round(exact, torch.float16, torch.Generator()).float(), exact)


@pytest.mark.parametrize("method", ["sift", "muon", "adamw", "blur"])
def test_bf16_master_is_bit_identical_to_an_fp32_run(method):
    """Given the same gradients, the bf16 parameter's master is the fp32 run's weight exactly, and the
    bf16 weight is that weight rounded to nearest (split_fp32's rounding: ties, which five steps of a
    few hundred weights do reach, go away from zero)."""
    named32 = make_params()
    named16 = [(n, nn.Parameter(p.detach().to(torch.bfloat16))) for n, p in named32]
    named32 = [(n, nn.Parameter(p.detach().float())) for n, p in named16]
    stream = [
        {n: tuple(g.to(torch.bfloat16).float() for g in pair) for n, pair in step.items()}
        for step in grad_stream(named32, 5, tau=-0.8)
    ]
    cfg = OptimizerConfig(method=method, lr=0.003, k=4, weight_decay=0.1)
    opt32, opt16 = SiftOptimizer(named32, cfg), SiftOptimizer(named16, cfg)
    for grads in stream:
        feed(opt32, named32, grads)
        feed(opt16, named16, grads)
        opt32.step()
        opt16.step()
    for (name, p32), (_, p16) in zip(named32, named16):
        master = join_fp32(p16.detach(), opt16.state[p16]["master_low"])
        assert torch.equal(master, p32.detach()), name
        assert torch.equal(p16.detach(), split_fp32(p32.detach())[0]), name


@pytest.mark.parametrize("method", ["muon", "sift"])
def test_done_criterion_bf16_ends_as_close_as_rounding(method):
    """The issue's bar at a small scale: 100 steps at lr 1e-4; master and Kahan end within rounding of the
    fp32 run, round-to-nearest loses most of the update."""
    rows = run_precision_bench(shape=(48, 96), steps=100, lr=1e-4, k=8, methods=(method,))
    by = {row["variant"]: row for row in rows}
    floor = by["bf16 + master (default)"]["rounding_error"]
    assert by["bf16 + master (default)"]["error"] <= 1.05 * floor
    assert by["bf16 + Kahan"]["error"] <= 1.5 * floor
    assert by["bf16 + stochastic"]["error"] < 0.5 * by["bf16, round to nearest"]["error"]
    assert by["bf16, round to nearest"]["error"] > 5 * floor


def test_fp16_master_is_a_full_fp32_copy():
    named = make_params(dtype=torch.float16)
    opt = SiftOptimizer(named, OptimizerConfig(k=4, lr=1e-4))
    stream = grad_stream(named, 3, tau=-0.8)
    for grads in stream:
        feed(opt, named, grads)
        opt.step()
    p = dict(named)["layers.0.weight"]
    master = opt.state[p]["master"]
    assert master.dtype == torch.float32 and torch.equal(p.detach(), master.to(torch.float16))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"master_weights": False},
        {"master_weights": False, "update_rounding": "kahan"},
        {"master_weights": False, "update_rounding": "stochastic"},
        {"momentum_dtype": "bfloat16"},
        {"method": "muon"},
        {"method": "adamw"},
        {"exact": True},
        {"subspace": "randomized"},
    ],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_state_layout_is_what_a_step_allocates_and_resume_is_exact(overrides, dtype):
    named = make_params(dtype=dtype)
    cfg = replace(OptimizerConfig(lr=0.01, k=2), **overrides)
    stream = grad_stream(named, 4, tau=-0.8)
    opt = SiftOptimizer(named, cfg)
    for grads in stream[:3]:
        feed(opt, named, grads)
        opt.step()
    for p in opt.param_groups[0]["params"] + opt.param_groups[1]["params"]:
        allocated = {k: (tuple(v.shape), v.dtype) for k, v in opt.state[p].items() if torch.is_tensor(v)}
        assert allocated == opt.state_layout(p)
    assert_resume_is_exact(opt, named, cfg, stream[3])


def test_capture_holds_gradients_without_copies_or_changes():
    named = make_params(dtype=torch.bfloat16)
    opt = SiftOptimizer(named, OptimizerConfig(k=2))
    grads = {n: torch.randn(p.shape).to(torch.bfloat16) for n, p in named}
    kept = {n: g.clone() for n, g in grads.items()}
    for name, p in named:
        p.grad = grads[name]
    opt.capture("f")
    assert all(opt._acc["f"][p] is grads[n] for n, p in named)
    opt.step()
    assert all(torch.equal(grads[n], kept[n]) for n in grads)


def test_config_checks_rounding_against_master():
    with pytest.raises(ValueError, match="master_weights: false"):
        OptimizerConfig(update_rounding="kahan")
    with pytest.raises(ValueError, match="momentum_dtype"):
        OptimizerConfig(momentum_dtype="float16")
    assert not math.isnan(OptimizerConfig(master_weights=False, update_rounding="stochastic").lr)
