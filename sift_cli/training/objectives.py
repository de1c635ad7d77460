"""The two objectives as the loop sees them: one module DDP can wrap, and the checks of how the
examples fit data.max_length."""

from __future__ import annotations

import torch

from sift_cli.apps.base import Batch, Objectives
from sift_cli.errors import SiftError
from sift_cli.spec import RunSpec


def check_fit(objectives: Objectives, spec: RunSpec) -> None:
    """Refuse a run whose data.max_length drops more than data.max_dropped of an objective's examples."""
    for name, fit in objectives.fits.items():
        if fit.total and fit.dropped / fit.total > spec.data.max_dropped:
            raise SiftError(
                f"data.max_length={spec.data.max_length} drops {fit.dropped} of {fit.total} {name} examples "
                f"(more than data.max_dropped={spec.data.max_dropped:g}); raise data.max_length or data.max_dropped"
            )


def fit_lines(objectives: Objectives, max_length: int) -> list[str]:
    """What max_length did to each objective's examples, for the console (nothing when all fit)."""
    return [
        f"{name}: of {fit.total} examples, data.max_length={max_length} dropped {fit.dropped} and cut the end of {fit.cut}"
        for name, fit in objectives.fits.items()
        if fit.dropped or fit.cut
    ]


class ObjectiveModel(torch.nn.Module):
    """The model with the two losses as its forward, which is what DDP wraps: each objective's
    micro-batch is one forward and backward of the wrapper, so DDP averages that objective's gradient
    across ranks (bucketed, overlapped with backward) before the optimizer captures it. The losses get
    the plain model, so an app's forward hooks (RMU stops the forward at a layer by raising) stay
    inside this forward and never cut a DDP iteration short."""

    def __init__(self, model: torch.nn.Module, objectives: Objectives) -> None:
        super().__init__()
        self.model = model
        self._losses = {"f": objectives.loss_f, "g": objectives.loss_g}

    def forward(self, which: str, batch: Batch) -> torch.Tensor:
        return self._losses[which](self.model, batch)
