"""The per-step records a run directory logs, built once for `sift train` and `SiftTrainer` alike, so
that `sift localize` reads either's output."""

from __future__ import annotations

from typing import Any, Iterator

from sift_cli.engine import Route, StepReport
from sift_cli.hf import naming


def metrics_record(step: int, loss_f: float, loss_g: float, lr: float, seconds: float, report: StepReport, n_blocks: int) -> dict[str, Any]:
    """One metrics.jsonl line (METRIC_FIELDS)."""
    return {
        "step": step,
        "loss_f": loss_f,
        "loss_g": loss_g,
        "lr": lr,
        "seconds": seconds,
        "optimizer_seconds": report.seconds,
        "n_sift": report.n_sift,
        "n_blocks": n_blocks,
    }


def alignment_rows(step: int, report: StepReport, spectral: dict[str, Route], tau_source: str) -> Iterator[dict[str, Any]]:
    """One alignment.csv row per spectral block of the step (AdamW-routed parameters have no gate)."""
    tau_key = "tau_grad" if tau_source == "grad" else "tau_momentum"
    for block in report.blocks:
        if block.name not in spectral:
            continue
        yield {
            "step": step,
            "block": block.name,
            "layer": naming.layer_index(block.name),
            "component": naming.component(block.name),
            "tau_grad": block.tau_grad,
            "tau_momentum": block.tau_momentum,
            "tau": getattr(block, tau_key),
            "branch": block.branch,
            "candidate": spectral[block.name].candidate,
            "subspace_error": block.subspace_error,
            "subspace_fallback": block.subspace_fallback,
        }
