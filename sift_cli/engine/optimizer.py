"""SiftOptimizer: SIFT, Muon, AdamW and BLUR behind one torch.optim.Optimizer interface."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from .config import OptimizerConfig
from .direction import (
    CACHE_DTYPE,
    WarmStart,
    combine_subspaces,
    sift_direction,
    top_k_tracked,
)
from .distributed import ShardedStep, is_sharded
from .linalg import alignment, alignments, msign, sketch_width
from .precision import (
    STOCHASTIC_SEED,
    Layout,
    fp32_weights,
    init_weight_state,
    weight_layout,
    write_weights,
)
from .routing import Block, Route, route_parameters
from .updates import adamw_update, blur_combine, spectral_scale

SUBSPACE_CACHES = ("left_", "basis_")
"""State-key prefixes of the fast SIFT path's per-block caches, made by a block's first SIFT step."""
Objective = Literal["f", "g"]
Branch = Literal["sift", "muon", "adamw"]


@dataclass(frozen=True)
class BlockReport:
    """One gated block (a parameter, or a row slice `name[label]` of a fused one). tau_momentum is nan
    for AdamW-routed parameters, which keep no per-objective momenta.

    subspace_error: on the SIFT branch, the larger of the two momenta's estimated relative errors of the
    top-k direction (0.0 when exact), nan on other branches; subspace_fallback: the tolerance was out of
    reach for at least one momentum and the exact decomposition was taken."""

    name: str
    shape: tuple[int, ...]
    tau_grad: float
    tau_momentum: float
    branch: Branch
    subspace_error: float = math.nan
    subspace_fallback: bool = False


class SubspaceQuality(NamedTuple):
    """How exact a block's SIFT direction is: the worse momentum's error estimate (nan: no SIFT step)
    and whether the exact decomposition had to be taken."""

    error: float = math.nan
    fallback: bool = False


@dataclass(frozen=True)
class StepReport:
    """seconds: wall time inside step(); n_sift: how many blocks took the SIFT branch."""

    seconds: float
    blocks: list[BlockReport]
    n_sift: int


class SiftOptimizer(torch.optim.Optimizer):
    """Two-objective optimizer: f (primary) and g (constraint) gradients are captured separately.

    Usage per step: for each micro-batch, backward f then capture("f"), backward g then capture("g");
    then step(). Param groups "spectral" and "adamw" each carry their own "lr", so torch LR schedulers
    apply. Per-parameter state (both momenta, AdamW moments, SIFT subspace caches, the master weights
    or Kahan compensation of bf16/fp16 parameters) lives in self.state and round-trips through
    state_dict with its dtypes kept; state_layout() says what it holds before any step.
    """

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], cfg: OptimizerConfig) -> None:
        named_params = list(named_params)
        routes = route_parameters(named_params, cfg)
        spectral = [p for (_, p), r in zip(named_params, routes) if r.kind == "spectral"]
        adamw = [p for (_, p), r in zip(named_params, routes) if r.kind == "adamw"]
        adamw_lr = cfg.lr if cfg.adamw_lr is None else cfg.adamw_lr
        groups = [
            {"params": spectral, "name": "spectral", "lr": cfg.lr},
            {"params": adamw, "name": "adamw", "lr": adamw_lr},
        ]
        super().__init__(groups, {"lr": cfg.lr, "weight_decay": cfg.weight_decay})
        self.cfg = cfg
        self._routes: dict[nn.Parameter, Route] = {p: r for (_, p), r in zip(named_params, routes)}
        self._blocks: dict[nn.Parameter, list[Block]] = {p: r.blocks() for p, r in self._routes.items()}
        self._acc: dict[str, dict[nn.Parameter, Tensor]] = {"f": {}, "g": {}}
        self._step_layouts: dict[nn.Parameter, Layout] = {}
        """Per parameter, the state entries a step updates in place (see _ensure_state)."""
        self.sharded = ShardedStep(self) if is_sharded(self._params()) else None
        """Parameters sharded by FSDP2 (DTensors) step through the owner-rank exchange of ShardedStep."""
        self.last_report: StepReport | None = None
        """The newest step's report, for callers that step through a wrapper which drops step()'s
        return value (accelerate's AcceleratedOptimizer under a transformers Trainer)."""

    def _params(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def capture(self, objective: Objective) -> None:
        """Take every parameter's .grad as the objective's gradient of this step and clear .grad.

        The tensor is kept as it is (no copy, parameter dtype): a step needs both objectives' gradients
        (Nesterov momenta, the gradient alignment) but never more than the two that backward made. A
        second capture of the same objective before step() adds into a new tensor (gradient accumulation
        in the parameter dtype); a held tensor is never changed in place, so callers may pass shared ones."""
        if objective not in self._acc:
            raise ValueError(f"objective={objective!r}: expected 'f' or 'g'")
        acc = self._acc[objective]
        for p in self._params():
            if p.grad is None:
                continue
            held = acc.get(p)
            acc[p] = p.grad if held is None else held + p.grad
            p.grad = None

    def _take(self, objective: Objective, p: nn.Parameter) -> Tensor:
        grad = self._acc[objective].pop(p, None)
        return torch.zeros_like(p, dtype=torch.float32) if grad is None else grad

    def state_layout(self, p: nn.Parameter) -> Layout:
        """Every tensor the optimizer keeps for `p` between steps, {key: (shape, dtype)}: momenta or AdamW
        moments, master weights or compensation, and SIFT's subspace caches once the block took the SIFT
        branch. Memory estimates are computed from this, so they are what the engine allocates."""
        cfg = self.cfg
        route = self._routes[p]
        shape = tuple(p.shape)
        layout = weight_layout(shape, p.dtype, cfg.master_weights, cfg.update_rounding)
        if route.kind == "spectral" and cfg.method in ("sift", "muon"):
            momentum = torch.float32 if cfg.momentum_dtype == "float32" else torch.bfloat16
            layout.update({key: (shape, momentum) for key in ("momentum_f", "momentum_g")})
            if cfg.method == "sift" and route.candidate and not cfg.exact and cfg.subspace == "auto":
                for block in self._blocks[p]:
                    if cfg.k is not None and sketch_width(cfg.k) < min(block.shape):
                        short, long = sorted(block.shape)
                        for objective in ("f", "g"):
                            layout[f"left_{objective}{block.suffix}"] = ((short, cfg.k), CACHE_DTYPE)
                            layout[f"basis_{objective}{block.suffix}"] = ((long, sketch_width(cfg.k)), CACHE_DTYPE)
        else:
            layout.update({key: (shape, torch.float32) for key in ("exp_avg", "exp_avg_sq")})
        return layout

    def _ensure_state(self, p: nn.Parameter) -> dict:
        """The state of p with every entry of its layout that a step updates in place allocated (the
        subspace caches are made by the first SIFT step of their block)."""
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
        layout = self._step_layouts.get(p)
        if layout is None:
            # The layout depends only on the settings and the parameter: built once, not every step.
            layout = {key: spec for key, spec in self.state_layout(p).items() if not key.startswith(SUBSPACE_CACHES)}
            self._step_layouts[p] = layout
        init_weight_state(p, state, layout)
        for key, (shape, dtype) in layout.items():
            if key not in state:
                # like p: a sharded (DTensor) parameter gets state sharded the same way
                state[key] = torch.zeros_like(p, dtype=dtype) if shape == tuple(p.shape) else torch.zeros(shape, dtype=dtype, device=p.device)
        return state

    def init_state(self) -> None:
        """Allocate every parameter's state now instead of at the first step (what a step would)."""
        for p in self._params():
            self._ensure_state(p)

    @torch.no_grad()
    def step(self, closure: None = None) -> StepReport:  # type: ignore[override]
        """Update every parameter from the captured gradients and clear the accumulators."""
        if closure is not None:
            raise ValueError("SiftOptimizer takes its gradients from capture(), not from a closure")
        start = time.perf_counter()
        cfg = self.cfg
        members = [(group, p) for group in self.param_groups for p in group["params"]]
        grads_f = [self._take("f", p) for _, p in members]
        grads_g = [self._take("g", p) for _, p in members]
        if self.sharded is not None:
            blocks = self.sharded.step(members, grads_f, grads_g, BlockReport)
            self.last_report = StepReport(seconds=time.perf_counter() - start, blocks=blocks, n_sift=sum(b.branch == "sift" for b in blocks))
            return self.last_report
        combined = blur_combine(grads_f, grads_g, cfg.blur_alpha) if cfg.method == "blur" else []
        blocks = []
        for i, (group, p) in enumerate(members):
            state = self._ensure_state(p)
            work = fp32_weights(p, state)
            if group["name"] == "spectral" and cfg.method in ("sift", "muon"):
                blocks.extend(self._spectral_step(p, work, grads_f[i], grads_g[i], group))
            else:
                tau_grad = alignment(grads_f[i], grads_g[i])
                grad = combined[i] if cfg.method == "blur" else grads_f[i].float().mul(cfg.lam).add_(grads_g[i])
                adamw_update(work, grad, state, group["lr"], cfg.betas, cfg.adam_eps, group["weight_decay"])
                blocks.append(BlockReport(self._routes[p].name, tuple(p.shape), tau_grad, math.nan, "adamw"))
            seed = STOCHASTIC_SEED + 1_000_003 * state["step"] + i
            write_weights(p, state, work, cfg.update_rounding, seed)
        if any(p.is_cuda for _, p in members):
            torch.cuda.synchronize()
        n_sift = sum(block.branch == "sift" for block in blocks)
        self.last_report = StepReport(seconds=time.perf_counter() - start, blocks=blocks, n_sift=n_sift)
        return self.last_report

    def _momentum(self, state: dict, key: str, grad: Tensor) -> Tensor:
        """B <- beta B + G in fp32 (stored back in the buffer's dtype); returns the momentum this step
        uses, G + beta B under Nesterov."""
        buf = state[key]
        beta = self.cfg.momentum
        if buf.dtype == torch.float32:
            new = buf.mul_(beta).add_(grad)
        else:
            new = buf.float().mul_(beta).add_(grad)
            buf.copy_(new)
        return grad.add(new, alpha=beta) if self.cfg.nesterov else new

    def _spectral_step(
        self, p: nn.Parameter, work: Tensor, grad_f: Tensor, grad_g: Tensor, group: dict
    ) -> list[BlockReport]:
        """Momenta of the whole parameter; gate, direction and scale per block (a row slice of a fused
        matrix is a block of its own shape, so its update is orthogonal on its own). `work` is the fp32
        weight the update applies to, in place."""
        cfg = self.cfg
        route = self._routes[p]
        state = self.state[p]
        state["step"] += 1
        m_f = self._momentum(state, "momentum_f", grad_f)
        m_g = self._momentum(state, "momentum_g", grad_g)
        lr = group["lr"]
        work.mul_(1 - lr * group["weight_decay"])
        reports = []
        for block in self._blocks[p]:
            rows = block.rows
            tau_grad, tau_m = alignments((grad_f[rows], grad_g[rows]), (m_f[rows], m_g[rows]))
            tau = tau_grad if cfg.tau_source == "grad" else tau_m
            quality = SubspaceQuality()
            if cfg.method == "sift" and route.candidate and tau < cfg.eps:
                direction, quality = self._sift_direction(state, block.suffix, m_f[rows], m_g[rows])
                branch: Branch = "sift"
            else:
                direction = msign(cfg.lam * m_f[rows] + m_g[rows])
                branch = "muon"
            work[rows].add_(direction.to(torch.float32), alpha=-lr * spectral_scale(block.shape, cfg.scale_rule))
            reports.append(BlockReport(block.name, block.shape, tau_grad, tau_m, branch, *quality))
        return reports

    def _sift_direction(self, state: dict, suffix: str, m_f: Tensor, m_g: Tensor) -> tuple[Tensor, SubspaceQuality]:
        """SIFT direction of one block and how exact it is; the fast path keeps, per block and
        objective, its last answer's left vectors and right basis (state keys left_f/basis_f,
        left_g/basis_g, each followed by the block's `suffix`).

        A cache left from an older step (the block took the Muon branch meanwhile) is still the best
        start: the adaptive iteration runs as long as its error estimate needs."""
        cfg = self.cfg
        if cfg.exact:
            return sift_direction(m_f, m_g, cfg.k, exact=True), SubspaceQuality(0.0, False)
        found = []
        for objective, m in (("f", m_f), ("g", m_g)):
            left_key, right_key = f"left_{objective}{suffix}", f"basis_{objective}{suffix}"
            warm = WarmStart(state[left_key], state[right_key]) if left_key in state and right_key in state else None
            tracked = top_k_tracked(m, cfg.k, warm, cfg.subspace, cfg.subspace_tol)
            if tracked.warm is None:
                state.pop(left_key, None)
                state.pop(right_key, None)
            else:
                for key, value in zip((left_key, right_key), tracked.warm):
                    # In place once the block has its cache: state that moves every step fragments the heap.
                    if key in state and state[key].shape == value.shape:
                        state[key].copy_(value)
                    else:
                        state[key] = value
            found.append(tracked)
        quality = SubspaceQuality(max(t.error for t in found), any(t.fallback for t in found))
        return combine_subspaces(*(t.top for t in found)), quality

    @torch.no_grad()
    def momentum_singular_values(self, names: list[str] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """Singular values (on CPU) of the momentum buffers (B_f, B_g) of the spectral blocks that have
        stepped, by block name (a fused matrix per row slice), for effective-rank logging."""
        wanted = None if names is None else set(names)
        out = {}
        spectral = next(group for group in self.param_groups if group["name"] == "spectral")
        for p in spectral["params"]:
            state = self.state.get(p, {})
            if "momentum_f" not in state:
                continue
            for block in self._blocks[p]:
                if wanted is None or block.name in wanted:
                    out[block.name] = tuple(
                        torch.linalg.svdvals(state[key][block.rows]).cpu() for key in ("momentum_f", "momentum_g")
                    )
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch, but keep the saved dtypes: torch casts float state to the parameter dtype,
        which would round fp32 momenta of bf16 parameters."""
        super().load_state_dict(state_dict)
        saved_ids = [pid for group in state_dict["param_groups"] for pid in group["params"]]
        for pid, p in zip(saved_ids, self._params()):
            saved = state_dict["state"].get(pid)
            if saved is None:
                continue
            self.state[p] = {
                key: value.detach().to(device=p.device, copy=True) if torch.is_tensor(value) else value
                for key, value in saved.items()
            }
