"""SiftOptimizer against the formulas it implements and against torch.optim.AdamW."""

import copy
import io
import math
import time
from dataclasses import replace

import pytest
import torch
from torch import nn

from sift_cli.engine import (
    OptimizerConfig,
    SiftOptimizer,
    alignment,
    blur_combine,
    msign,
    route_parameters,
    sift_direction,
    spectral_scale,
)
from sift_cli.engine.linalg import sketch_width

F64 = torch.float64


def make_params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[tuple[str, nn.Parameter]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "embed.weight": (10, 8),
        "layers.0.weight": (24, 16),
        "layers.0.bias": (24,),
        "layers.1.weight": (16, 24),
        "norm.weight": (16,),
        "lm_head.weight": (10, 16),
    }
    return [(n, nn.Parameter(torch.randn(s, generator=gen).to(dtype))) for n, s in shapes.items()]


def clone_params(named: list[tuple[str, nn.Parameter]]) -> list[tuple[str, nn.Parameter]]:
    return [(n, nn.Parameter(p.detach().clone())) for n, p in named]


def decaying(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    r = min(m, n)
    u = torch.linalg.qr(torch.randn(m, r, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(n, r, generator=gen)).Q
    return (u / torch.arange(1, r + 1)) @ v.mT


def grad_stream(named, steps: int, tau: float, seed: int = 1) -> list[dict[str, tuple]]:
    """Per step, per parameter (G_f, G_g) with alignment about tau and 1/i spectra on matrices."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        step = {}
        for name, p in named:
            if p.ndim == 2:
                g_f, other = decaying(*p.shape, gen), decaying(*p.shape, gen)
            else:
                g_f, other = torch.randn(p.shape, generator=gen), torch.randn(p.shape, generator=gen)
            other = other * (g_f.norm() / other.norm())
            step[name] = (g_f, tau * g_f + math.sqrt(1 - tau**2) * other)
        out.append(step)
    return out


def feed(opt: SiftOptimizer, named, grads: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    for which, objective in ((0, "f"), (1, "g")):
        for name, p in named:
            p.grad = grads[name][which].clone().to(p.dtype)
        opt.capture(objective)


def run(named, cfg: OptimizerConfig, stream) -> tuple[SiftOptimizer, list]:
    opt = SiftOptimizer(named, cfg)
    reports = []
    for grads in stream:
        feed(opt, named, grads)
        reports.append(opt.step())
    return opt, reports


def test_routing_table():
    named = make_params()
    routes = {r.name: r for r in route_parameters(named, OptimizerConfig(sift_regex=r"layers\.1"))}
    assert {n for n, r in routes.items() if r.kind == "spectral"} == {"layers.0.weight", "layers.1.weight"}
    assert routes["layers.1.weight"].candidate and not routes["layers.0.weight"].candidate
    assert not routes["embed.weight"].candidate and routes["layers.0.bias"].shape == (24,)
    for method in ("muon", "adamw", "blur"):
        assert route_parameters(named, OptimizerConfig(method=method)) == route_parameters(
            named, OptimizerConfig()
        )


@pytest.mark.parametrize(
    "method,branch", [("sift", "sift"), ("muon", "muon"), ("adamw", "adamw"), ("blur", "adamw")]
)
def test_method_decides_the_branch_of_spectral_blocks(method, branch):
    named = make_params()
    _, reports = run(named, OptimizerConfig(method=method, k=4), grad_stream(named, 1, tau=-0.8))
    spectral = [b for b in reports[0].blocks if b.name in ("layers.0.weight", "layers.1.weight")]
    assert [b.branch for b in spectral] == [branch, branch]
    assert all(math.isnan(b.tau_momentum) == (branch == "adamw") for b in spectral)


def test_param_groups_carry_their_own_lr_for_schedulers():
    opt = SiftOptimizer(make_params(), OptimizerConfig(lr=0.02, adamw_lr=1e-3))
    assert [(g["name"], g["lr"], len(g["params"])) for g in opt.param_groups] == [
        ("spectral", 0.02, 2),
        ("adamw", 1e-3, 4),
    ]
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 5e-4]
    assert SiftOptimizer(make_params(), OptimizerConfig(lr=0.3)).param_groups[1]["lr"] == 0.3


def test_no_conflict_is_muon_on_summed_momentum():
    named = make_params()
    stream = grad_stream(named, 3, tau=0.5)
    cfg = OptimizerConfig(lr=0.05, lam=0.7, weight_decay=0.1, k=4)
    sift_named, muon_named = clone_params(named), clone_params(named)
    _, reports = run(sift_named, cfg, stream)
    run(muon_named, replace(cfg, method="muon"), stream)
    assert all(r.n_sift == 0 for r in reports)
    for (_, a), (_, b) in zip(sift_named, muon_named):
        assert torch.equal(a, b)
    # Against the formula, for one block.
    w = dict(named)["layers.0.weight"].detach().clone()
    buf_f, buf_g = torch.zeros_like(w), torch.zeros_like(w)
    for grads in stream:
        g_f, g_g = grads["layers.0.weight"]
        buf_f, buf_g = 0.95 * buf_f + g_f, 0.95 * buf_g + g_g
        m_f, m_g = g_f + 0.95 * buf_f, g_g + 0.95 * buf_g
        w = w * (1 - 0.05 * 0.1) - 0.05 * spectral_scale(w.shape, cfg.scale_rule) * msign(0.7 * m_f + m_g)
    assert torch.allclose(dict(sift_named)["layers.0.weight"], w, atol=1e-6)


def test_conflict_takes_sift_branch_and_ignores_lam():
    named = make_params()
    stream = grad_stream(named, 2, tau=-0.8)
    cfg = OptimizerConfig(lr=0.05, k=4, exact=True, scale_rule="kj")
    a, b = clone_params(named), clone_params(named)
    _, reports = run(a, cfg, stream)
    run(b, replace(cfg, lam=5.0), stream)
    assert [r.n_sift for r in reports] == [2, 2]
    for name in ("layers.0.weight", "layers.1.weight"):
        assert torch.equal(dict(a)[name], dict(b)[name])
    # First step by hand: D = sift_direction(M_f, M_g) with M = G + beta * G.
    g_f, g_g = stream[0]["layers.1.weight"]
    w0 = dict(named)["layers.1.weight"].detach()
    single = clone_params(named)
    run(single, cfg, stream[:1])
    d = sift_direction(1.95 * g_f, 1.95 * g_g, k=4, exact=True)
    expected = w0 - 0.05 * spectral_scale((16, 24), "kj") * d
    assert torch.allclose(dict(single)["layers.1.weight"], expected, atol=1e-6)


def test_every_block_reports_both_taus_and_its_branch():
    named = make_params()
    stream = grad_stream(named, 2, tau=-0.8)
    opt, reports = run(named, OptimizerConfig(k=4, sift_regex=r"layers\.1"), stream)
    report = reports[-1]
    assert [b.name for b in report.blocks] == [
        "layers.0.weight",
        "layers.1.weight",
        "embed.weight",
        "layers.0.bias",
        "norm.weight",
        "lm_head.weight",
    ]
    branches = {b.name: b.branch for b in report.blocks}
    assert branches["layers.0.weight"] == "muon" and branches["layers.1.weight"] == "sift"
    assert branches["embed.weight"] == "adamw" and report.n_sift == 1
    for block in report.blocks:
        g_f, g_g = stream[-1][block.name]
        assert block.tau_grad == pytest.approx(alignment(g_f, g_g), abs=1e-6)
        assert block.shape == tuple(g_f.shape)
        assert math.isnan(block.tau_momentum) == (block.branch == "adamw")
    feed(opt, named, stream[-1])
    started = time.perf_counter()
    timed = opt.step()
    assert 0.0 < timed.seconds <= time.perf_counter() - started


@pytest.mark.parametrize("source,branch", [("grad", "muon"), ("momentum", "sift")])
def test_gate_follows_tau_source(source, branch):
    gen = torch.Generator().manual_seed(3)
    a, b = decaying(24, 16, gen), decaying(24, 16, gen)
    p = nn.Parameter(torch.zeros(24, 16))
    opt = SiftOptimizer([("w", p)], OptimizerConfig(tau_source=source, k=4))
    stream = [(a, -a), (0.05 * b, 0.05 * b)]  # momenta stay opposed, the second gradients agree
    for g_f, g_g in stream:
        p.grad = g_f.clone()
        opt.capture("f")
        p.grad = g_g.clone()
        opt.capture("g")
        block = opt.step().blocks[0]
    assert block.tau_grad > 0.99 and block.tau_momentum < -0.9
    assert block.branch == branch
    if branch == "muon":
        assert math.isnan(block.subspace_error) and not block.subspace_fallback


def test_fast_sift_in_optimizer_tracks_exact_reference():
    gen = torch.Generator().manual_seed(4)
    signal_f, other = decaying(96, 160, gen), decaying(96, 160, gen)
    signal_g = -0.6 * signal_f + 0.8 * other
    k = 12
    fast = nn.Parameter(torch.zeros(96, 160))
    exact = nn.Parameter(torch.zeros(96, 160))
    opt_fast = SiftOptimizer([("w", fast)], OptimizerConfig(k=k, lr=1.0))
    opt_exact = SiftOptimizer([("w", exact)], OptimizerConfig(k=k, lr=1.0, exact=True))
    storage = None
    for _ in range(5):
        noise = 0.1 * signal_f.norm() / math.sqrt(96 * 160)
        g_f = signal_f + noise * torch.randn(96, 160, generator=gen)
        g_g = signal_g + noise * torch.randn(96, 160, generator=gen)
        reports = []
        for p, opt in ((fast, opt_fast), (exact, opt_exact)):
            p.data.zero_()
            p.grad = g_f.clone()
            opt.capture("f")
            p.grad = g_g.clone()
            opt.capture("g")
            report = opt.step()
            assert report.n_sift == 1
            reports.append(report.blocks[0])
        report_fast, report_exact = reports
        assert float((fast.detach() - exact.detach()).norm() / exact.detach().norm()) < 0.02
        assert 0.0 <= report_fast.subspace_error <= opt_fast.cfg.subspace_tol
        assert report_exact.subspace_error == 0.0
        storage = opt_fast.state[fast]["basis_f"].data_ptr() if storage is None else storage
    # The caches are written in place from the second step on (state that moved fragmented the heap).
    assert opt_fast.state[fast]["basis_f"].data_ptr() == storage
    assert opt_fast.state[fast]["basis_f"].shape == (160, sketch_width(k))
    assert opt_fast.state[fast]["left_g"].shape == (96, k)
    assert "basis_f" not in opt_exact.state[exact]


def test_block_report_flags_the_exact_fallback_on_a_flat_spectrum():
    gen = torch.Generator().manual_seed(6)
    flat = torch.linalg.qr(torch.randn(96, 96, generator=gen)).Q @ torch.linalg.qr(torch.randn(160, 96, generator=gen)).Q.mT
    p = nn.Parameter(torch.zeros(96, 160))
    opt = SiftOptimizer([("w", p)], OptimizerConfig(k=12))
    p.grad = flat.clone()
    opt.capture("f")
    p.grad = -flat + 0.1 * torch.randn(96, 160, generator=gen)
    opt.capture("g")
    block = opt.step().blocks[0]
    assert block.branch == "sift" and block.subspace_fallback and block.subspace_error == 0.0


def test_adamw_branch_equals_torch_adamw_on_lam_f_plus_g():
    named = make_params()
    stream = grad_stream(named, 4, tau=-0.3)
    cfg = OptimizerConfig(
        method="adamw", lr=1e-2, lam=0.7, weight_decay=0.1, betas=(0.8, 0.99), adam_eps=1e-6
    )
    ours = clone_params(named)
    run(ours, cfg, stream)
    ref = clone_params(named)
    torch_opt = torch.optim.AdamW([p for _, p in ref], lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    for grads in stream:
        for name, p in ref:
            p.grad = 0.7 * grads[name][0] + grads[name][1]
        torch_opt.step()
    for (_, a), (_, b) in zip(ours, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_adamw_routed_params_under_sift_use_adamw_lr():
    named = make_params()
    stream = grad_stream(named, 3, tau=-0.8)
    ours = clone_params(named)
    run(ours, OptimizerConfig(lr=0.05, adamw_lr=3e-3, lam=2.0, k=4), stream)
    ref = [(n, p) for n, p in clone_params(named) if n in ("embed.weight", "norm.weight")]
    torch_opt = torch.optim.AdamW([p for _, p in ref], lr=3e-3, weight_decay=0.0)
    for grads in stream:
        for name, p in ref:
            p.grad = 2.0 * grads[name][0] + grads[name][1]
        torch_opt.step()
    for name, p in ref:
        assert torch.allclose(dict(ours)[name], p, rtol=0, atol=1e-6)


def test_blur_combination_formula_and_what_is_orthogonal():
    gen = torch.Generator().manual_seed(5)
    g_f = [torch.randn(6, 4, generator=gen, dtype=F64), torch.randn(5, generator=gen, dtype=F64)]
    g_g = [torch.randn(6, 4, generator=gen, dtype=F64), torch.randn(5, generator=gen, dtype=F64)]
    flat_f, flat_g = torch.cat([t.flatten() for t in g_f]), torch.cat([t.flatten() for t in g_g])
    rho = float(flat_f @ flat_g / (flat_g @ flat_g))
    for alpha in (1.0, 0.3):
        combined = blur_combine(g_f, g_g, alpha)
        for c, f, g in zip(combined, g_f, g_g):
            assert torch.allclose(c, g + alpha * (f - rho * g))
        flat = torch.cat([t.flatten() for t in combined])
        # Exactly true for every alpha: the f part is orthogonal to G_g globally, so <G, G_g> = |G_g|^2.
        assert float((flat - flat_g) @ flat_g) == pytest.approx(0.0, abs=1e-10)
        assert float(flat @ flat_g) == pytest.approx(float(flat_g @ flat_g), rel=1e-12)
    # Only globally: a single block's f part is not orthogonal to that block's G_g.
    per_block = blur_combine(g_f, g_g, 1.0)[0] - g_g[0]
    assert abs(float((per_block * g_g[0]).sum())) > 1e-3
    # alpha = 1 leaves G_g plus the part of G_f orthogonal to it; zero G_g gives rho = 0.
    assert torch.allclose(blur_combine(g_f, [torch.zeros_like(t) for t in g_g], 0.5)[1], 0.5 * g_f[1])


def test_blur_optimizer_is_adamw_on_the_combined_gradient():
    named = make_params()
    stream = grad_stream(named, 3, tau=-0.5)
    ours = clone_params(named)
    run(ours, OptimizerConfig(method="blur", lr=1e-2, blur_alpha=0.6), stream)
    ref = clone_params(named)
    torch_opt = torch.optim.AdamW([p for _, p in ref], lr=1e-2, weight_decay=0.0)
    for grads in stream:
        combined = blur_combine([grads[n][0] for n, _ in ref], [grads[n][1] for n, _ in ref], 0.6)
        for (_, p), c in zip(ref, combined):
            p.grad = c
        torch_opt.step()
    for (_, a), (_, b) in zip(ours, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"exact": True},
        {"subspace": "randomized"},
        {"method": "muon"},
        {"method": "adamw"},
        {"method": "blur"},
    ],
)
def test_state_dict_round_trip_gives_identical_next_step(overrides):
    named = make_params()
    stream = grad_stream(named, 4, tau=-0.8)
    cfg = replace(OptimizerConfig(lr=0.02, k=4, weight_decay=0.01), **overrides)
    original = clone_params(named)
    opt, _ = run(original, cfg, stream[:3])
    assert_resume_is_exact(opt, original, cfg, stream[3])


def assert_resume_is_exact(opt: SiftOptimizer, named, cfg: OptimizerConfig, grads) -> None:
    """A fresh optimizer loaded from `opt`'s state_dict takes the same next step as `opt`, bit for bit."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed = clone_params(named)
    feed(opt, named, grads)
    opt.step()
    buffer.seek(0)
    reloaded = SiftOptimizer(resumed, cfg)
    reloaded.load_state_dict(torch.load(buffer))
    feed(reloaded, resumed, grads)
    reloaded.step()
    for (_, a), (_, b) in zip(named, resumed):
        assert torch.equal(a, b)


def test_load_state_dict_keeps_fp32_state_of_bf16_params():
    named = make_params(dtype=torch.bfloat16)
    stream = grad_stream(named, 2, tau=-0.8)
    opt, _ = run(named, OptimizerConfig(k=4), stream)
    spectral = dict(named)["layers.0.weight"]
    assert spectral.dtype == torch.bfloat16
    assert opt.state[spectral]["momentum_f"].dtype == torch.float32
    reloaded = SiftOptimizer(clone_params(named), OptimizerConfig(k=4))
    reloaded.load_state_dict(copy.deepcopy(opt.state_dict()))
    state = reloaded.state[reloaded.param_groups[0]["params"][0]]
    assert state["momentum_f"].dtype == torch.float32
    assert torch.equal(state["momentum_f"], opt.state[spectral]["momentum_f"])
    assert reloaded.state[reloaded.param_groups[1]["params"][0]]["exp_avg"].dtype == torch.float32


def test_gradient_accumulation_equals_one_batch_of_the_sum():
    named = make_params()
    half_a, half_b = grad_stream(named, 1, tau=-0.8, seed=7)[0], grad_stream(named, 1, tau=-0.8, seed=8)[0]
    cfg = OptimizerConfig(lr=0.02, k=4)
    accumulated, summed = clone_params(named), clone_params(named)
    opt = SiftOptimizer(accumulated, cfg)
    feed(opt, accumulated, half_a)
    feed(opt, accumulated, half_b)
    report_acc = opt.step()
    total = {n: (half_a[n][0] + half_b[n][0], half_a[n][1] + half_b[n][1]) for n in half_a}
    opt_sum = SiftOptimizer(summed, cfg)
    feed(opt_sum, summed, total)
    report_sum = opt_sum.step()
    assert report_acc.n_sift == report_sum.n_sift == 2
    for (_, a), (_, b) in zip(accumulated, summed):
        assert torch.equal(a, b)
    assert all(p.grad is None for _, p in accumulated)
    assert opt._acc == {"f": {}, "g": {}}


def test_accumulation_through_backward_on_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    twin = copy.deepcopy(model)
    x, y = torch.randn(6, 8), torch.randn(6, 4)
    cfg = OptimizerConfig(lr=0.01, k=2, eps=0.5)
    opt = SiftOptimizer(list(model.named_parameters()), cfg)
    for rows in (slice(0, 3), slice(3, 6)):
        nn.functional.mse_loss(model(x[rows]), y[rows], reduction="sum").backward()
        opt.capture("f")
        (-model(x[rows]).sum()).backward()
        opt.capture("g")
    opt.step()
    opt_twin = SiftOptimizer(list(twin.named_parameters()), cfg)
    nn.functional.mse_loss(twin(x), y, reduction="sum").backward()
    opt_twin.capture("f")
    (-twin(x).sum()).backward()
    opt_twin.capture("g")
    opt_twin.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_missing_objective_takes_muon_and_zero_tau():
    p = nn.Parameter(torch.zeros(12, 8))
    q = nn.Parameter(torch.zeros(12, 8))
    opt = SiftOptimizer([("w", p)], OptimizerConfig(lr=0.1, k=2))
    muon = SiftOptimizer([("w", q)], OptimizerConfig(method="muon", lr=0.1))
    g = torch.randn(12, 8, generator=torch.Generator().manual_seed(6))
    for param, o in ((p, opt), (q, muon)):
        param.grad = g.clone()
        o.capture("g")
        block = o.step().blocks[0]
        assert block.tau_grad == 0.0 and block.branch == "muon"
    assert torch.equal(p, q)


def test_momentum_singular_values_of_buffers():
    named = make_params()
    stream = grad_stream(named, 2, tau=-0.8)
    opt, _ = run(named, OptimizerConfig(k=4), stream)
    svals = opt.momentum_singular_values()
    assert set(svals) == {"layers.0.weight", "layers.1.weight"}
    g_f0, g_g0 = stream[0]["layers.1.weight"]
    g_f1, g_g1 = stream[1]["layers.1.weight"]
    s_f, s_g = svals["layers.1.weight"]
    assert torch.allclose(s_f, torch.linalg.svdvals(0.95 * g_f0 + g_f1), atol=1e-5)
    assert torch.allclose(s_g, torch.linalg.svdvals(0.95 * g_g0 + g_g1), atol=1e-5)
    assert set(opt.momentum_singular_values(["layers.0.weight"])) == {"layers.0.weight"}


def test_bf16_params_update_in_place():
    named = make_params(dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in named}
    run(named, OptimizerConfig(lr=0.05, k=4), grad_stream(named, 2, tau=-0.8))
    for name, p in named:
        assert p.dtype == torch.bfloat16 and not torch.equal(p, before[name])


def test_config_rejects_unknown_choices():
    bad = [{"method": "sgd"}, {"tau_source": "loss"}, {"scale_rule": "x"}, {"subspace": "svd"}, {"k": 0}]
    bad += [{"subspace_tol": 0.0}, {"subspace_tol": 1.5}, {"subspace_tol": math.nan}]
    for overrides in bad:
        with pytest.raises(ValueError):
            OptimizerConfig(**overrides)


@pytest.mark.parametrize("method", ["sift", "muon"])
def test_fused_matrix_split_steps_like_its_slices_as_separate_blocks(method):
    """A [q | k | v] matrix with block_splits must update exactly as three separate parameters would:
    its own gate, direction, scale and subspace cache per slice, one report per slice."""
    splits = (("q", 16), ("k", 8), ("v", 8))
    gen = torch.Generator().manual_seed(3)
    fused = [("attn.qkv.weight", nn.Parameter(torch.randn(32, 24, generator=gen)))]
    slices = fused[0][1].detach().split([rows for _, rows in splits])
    parts = [(f"attn.{label}.weight", nn.Parameter(w.clone())) for (label, _), w in zip(splits, slices)]
    taus = {"q": 0.6, "k": -0.7, "v": -0.3}
    separate_stream = []
    for step in grad_stream(parts, 6, tau=0.0, seed=4):
        grads = {}
        for label, _ in splits:
            g_f, _ = step[f"attn.{label}.weight"]
            other = decaying(*g_f.shape, gen)
            other = other * (g_f.norm() / other.norm())
            grads[f"attn.{label}.weight"] = (g_f, taus[label] * g_f + math.sqrt(1 - taus[label] ** 2) * other)
        separate_stream.append(grads)
    fused_stream = [
        {"attn.qkv.weight": tuple(torch.cat([g[f"attn.{label}.weight"][i] for label, _ in splits]) for i in (0, 1))}
        for g in separate_stream
    ]
    cfg = OptimizerConfig(method=method, lr=0.05, k=4, eps=-0.2, weight_decay=0.1)
    _, split_reports = run(fused, replace(cfg, block_splits={r"qkv\.weight$": splits}), fused_stream)
    _, part_reports = run(parts, cfg, separate_stream)
    torch.testing.assert_close(fused[0][1].detach(), torch.cat([p.detach() for _, p in parts]), rtol=1e-5, atol=1e-6)
    last = split_reports[-1].blocks
    assert [b.name for b in last] == ["attn.qkv.weight[q]", "attn.qkv.weight[k]", "attn.qkv.weight[v]"]
    assert [b.shape for b in last] == [(16, 24), (8, 24), (8, 24)]
    assert [b.branch for b in last] == [b.branch for b in part_reports[-1].blocks]
    assert [b.branch for b in last] == (["muon", "sift", "sift"] if method == "sift" else ["muon"] * 3)


def test_block_splits_must_cover_the_rows():
    named = [("attn.qkv.weight", nn.Parameter(torch.zeros(30, 8)))]
    with pytest.raises(ValueError, match="cover 32 rows but the matrix has 30"):
        route_parameters(named, OptimizerConfig(block_splits={"qkv": (("q", 16), ("k", 8), ("v", 8))}))
