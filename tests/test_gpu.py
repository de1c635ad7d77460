"""CUDA checks, run by scripts/gpu_check.sh; skipped without a GPU. The CPU half of each lives in
test_engine_precision.py, and test_gpu_check.py runs the script's training driver on CPU."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine_optimizer import feed, grad_stream, make_params
from torch import nn

from sift_cli.engine import OptimizerConfig, SiftOptimizer
from sift_cli.engine.precision import join_fp32

ROOT = Path(__file__).resolve().parent.parent


def on_cuda(named, dtype):
    return [(n, nn.Parameter(p.detach().to("cuda", dtype))) for n, p in named]


@pytest.mark.parametrize("method", ["sift", "muon", "adamw"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_step_with_master_matches_fp32_on_cuda(method):
    base = make_params()
    named16 = on_cuda(base, torch.bfloat16)
    named32 = on_cuda([(n, p.detach().float()) for n, p in named16], torch.float32)
    stream = grad_stream(base, 4, tau=-0.8)
    stream = [{n: tuple(g.to("cuda", torch.bfloat16).float() for g in pair) for n, pair in s.items()} for s in stream]
    cfg = OptimizerConfig(method=method, lr=1e-3, k=4, exact=True)
    opt16, opt32 = SiftOptimizer(named16, cfg), SiftOptimizer(named32, cfg)
    for grads in stream:
        feed(opt16, named16, grads)
        feed(opt32, named32, grads)
        opt16.step()
        opt32.step()
    for (name, p16), (_, p32) in zip(named16, named32):
        master = join_fp32(p16.detach(), opt16.state[p16]["master_low"])
        torch.testing.assert_close(master, p32.detach(), rtol=1e-5, atol=1e-6, msg=name)
        assert p16.dtype == torch.bfloat16 and p16.is_cuda


@pytest.mark.parametrize("overrides", [{}, {"master_weights": False, "update_rounding": "stochastic"}])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda_gives_the_identical_next_step(overrides):
    base = make_params()
    named = on_cuda(base, torch.bfloat16)
    stream = [{n: tuple(g.to("cuda") for g in pair) for n, pair in s.items()} for s in grad_stream(base, 4, tau=-0.8)]
    cfg = OptimizerConfig(lr=1e-3, k=4, **overrides)
    opt = SiftOptimizer(named, cfg)
    for grads in stream[:3]:
        feed(opt, named, grads)
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed = [(n, nn.Parameter(p.detach().clone())) for n, p in named]
    feed(opt, named, stream[3])
    opt.step()
    buffer.seek(0)
    reloaded = SiftOptimizer(resumed, cfg)
    reloaded.load_state_dict(torch.load(buffer))
    assert all(v.is_cuda for s in reloaded.state.values() for v in s.values() if torch.is_tensor(v))
    feed(reloaded, resumed, stream[3])
    reloaded.step()
    for (_, a), (_, b) in zip(named, resumed):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_driver_runs_a_small_model_on_cuda(tmp_path):
    from test_gpu_check import write_tiny_config

    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_steps.py"), "--model", str(write_tiny_config(tmp_path)),
         "--steps", "2", "--length", "32", "--device", "cuda"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "peak/est" in out.stdout
