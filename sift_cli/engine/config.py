"""The engine's one settings object: every hyperparameter of SIFT, Muon, AdamW and BLUR.

The run spec embeds this dataclass as its `optim:` section (pydantic validates it field by field from
the annotations), so a setting is defined here and nowhere else. `__post_init__` repeats the checks for
callers that build a config in Python without pydantic, and reports every problem at once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

Method = Literal["sift", "muon", "adamw", "blur"]
TauSource = Literal["grad", "momentum"]
ScaleRule = Literal["kj", "match_rms_adamw"]
Subspace = Literal["auto", "randomized"]
UpdateRounding = Literal["nearest", "kahan", "stochastic"]
MomentumDtype = Literal["float32", "bfloat16"]
RowSplits = tuple[tuple[str, int], ...]
"""(label, rows) per slice, top to bottom: a fused matrix whose row slices are separate blocks."""


@dataclass
class OptimizerConfig:
    """Hyperparameters of every method; fields a method does not use are ignored by it.

    lr is the learning rate of the "spectral" param group (hidden matrices), adamw_lr (None: lr) that of
    the "adamw" group; under "adamw" and "blur" both groups take AdamW, each with its own lr. lam
    weights f in lam*f + g for the Muon and AdamW branches. It matters under SIFT too: a block whose gate
    stays shut takes the Muon branch with this weight; only the SIFT branch's merged direction ignores it.
    subspace: how the fast SIFT path finds top-k subspaces, "auto" (warm-started subspace iteration per
    block, the exact top-k when k is None or k + max(k // 2, 10) >= min(m, n)) or "randomized" (a
    Gaussian start every step, no cache); exact=True takes full SVDs instead.
    block_splits: {parameter-name regex: ((label, rows), ...)} for fused matrices (GLM's query_key_value)
    whose row slices each get their own momentum alignment, gate, direction and scale, and are reported
    as `name[label]`.
    master_weights, update_rounding: how updates reach bf16/fp16 parameters (fp32 ones take them
    exactly). master_weights=True keeps an exact fp32 master copy in the optimizer state; with it off,
    update_rounding says how each step's fp32 result is written back: "nearest" (updates below half a
    unit in the last place are lost), "kahan" (a compensation buffer in the parameter dtype carries the
    rounding error to the next step) or "stochastic" (unbiased random rounding, no extra state).
    momentum_dtype: storage of the spectral blocks' two momenta; "bfloat16" halves them (the released
    code keeps them in the parameter dtype), the arithmetic stays fp32.
    subspace_tol: the fast path's tolerance on each momentum's estimated relative error of its top-k
    direction: subspace iterations continue until the estimate is below it, and a block where it is out
    of reach takes the exact decomposition (logged as a fallback). 0.01 keeps the direction's error
    along drifting momentum streams at p95 <= 2% of the exact path's (README, `sift bench engine`).
    """

    __pydantic_config__ = {"extra": "forbid"}

    method: Method = "sift"
    lr: float = 1e-3
    adamw_lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.95
    nesterov: bool = True
    eps: float = -0.1
    k: int | None = 128
    tau_source: TauSource = "momentum"
    scale_rule: ScaleRule = "match_rms_adamw"
    lam: float = 1.0
    blur_alpha: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    sift_regex: str = r".*"
    adamw_regex: str = r"(embed|lm_head|output_layer|wte|wpe|norm|bias)"
    exact: bool = False
    subspace: Subspace = "auto"
    block_splits: dict[str, RowSplits] = field(default_factory=dict)
    master_weights: bool = True
    update_rounding: UpdateRounding = "nearest"
    momentum_dtype: MomentumDtype = "float32"
    subspace_tol: float = 0.01

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("\n".join(problems))

    def problems(self) -> list[str]:
        """Every invalid value, one line each, naming the setting and what it accepts."""
        found = []
        for key, kind in (("method", Method), ("tau_source", TauSource), ("scale_rule", ScaleRule), ("subspace", Subspace),
                          ("update_rounding", UpdateRounding), ("momentum_dtype", MomentumDtype)):
            allowed = get_args(kind)
            if getattr(self, key) not in allowed:
                found.append(f"{key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        for key, low, high in (("lr", 0.0, None), ("adamw_lr", 0.0, None), ("adam_eps", 0.0, None), ("weight_decay", None, None)):
            value = getattr(self, key)
            if value is None:
                continue
            if not math.isfinite(value):
                found.append(f"{key}={value}: expected a finite number")
            elif low is not None and value <= low:
                found.append(f"{key}={value}: expected a positive number")
        if self.weight_decay < 0:
            found.append(f"weight_decay={self.weight_decay}: expected 0 or more")
        if not 0.0 <= self.momentum < 1.0:
            found.append(f"momentum={self.momentum}: expected 0 <= momentum < 1")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            found.append(f"betas={list(self.betas)}: expected two numbers in [0, 1)")
        if not (math.isfinite(self.subspace_tol) and 0.0 < self.subspace_tol < 1.0):
            found.append(f"subspace_tol={self.subspace_tol}: expected a number between 0 and 1 (e.g. 0.01)")
        if self.k is not None and self.k < 1:
            found.append(f"k={self.k}: expected a positive integer or null (full numerical rank)")
        if not all(math.isfinite(x) for x in (self.eps, self.lam, self.blur_alpha)):
            found.append("eps, lam and blur_alpha must be finite numbers")
        if self.lam < 0:
            found.append(f"lam={self.lam}: expected 0 or more (the weight of f in lam*f + g)")
        if self.master_weights and self.update_rounding != "nearest":
            found.append(
                f"update_rounding={self.update_rounding!r} replaces the fp32 master copy; set master_weights: false with it"
            )
        patterns = {"sift_regex": self.sift_regex, "adamw_regex": self.adamw_regex}
        patterns.update({f"block_splits key {key!r}": key for key in self.block_splits})
        for key, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                found.append(f"{key}={pattern!r} is not a valid regular expression ({exc})")
        return found
