"""`sift evaluate`: a finished run's model through its app's metrics, written to run_dir/eval/results.json.

Reads only the run directory (its spec names the prepared data the app may use for held-out metrics),
so any run can be re-evaluated later with other tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from sift_cli.apps import get_app
from sift_cli.apps.base import EvalOptions
from sift_cli.errors import SiftError
from sift_cli.hf.loading import load_model, load_tokenizer
from sift_cli.hf.model_card import write_model_card
from sift_cli.output import summary
from sift_cli.spec import RunSpec
from sift_cli.store.atomic import write_json
from sift_cli.store.rundir import RunDir

RESULTS = "results.json"


def eval_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_for_eval(spec: RunSpec, path: Path | None = None) -> tuple[nn.Module, Any]:
    """Model (on the eval device, in eval mode) and tokenizer: `path` if given, else the spec's base model."""
    source = str(path) if path is not None else None
    model = load_model(spec.model, path=source).to(eval_device()).eval()
    return model, load_tokenizer(spec.model, path=source)


def evaluate_model(
    model: nn.Module, tokenizer: Any, spec: RunSpec, options: EvalOptions, run: RunDir | None = None
) -> dict[str, Any]:
    """The app's metrics for any model, trained or not (the demo scores the base model this way too)."""
    return get_app(spec.app).evaluate(model, tokenizer, spec, run, options)


def evaluate_run(run_dir: Path, options: EvalOptions, console: Console | None = None) -> dict[str, Any]:
    """Evaluate the model a `sift train` run saved; write eval/results.json and print a table."""
    console = console or Console()
    run = RunDir.open(run_dir)
    spec = run.load_spec()
    if not (run.model_dir / "config.json").is_file():
        raise SiftError(f"{run.path} has no trained model yet (no model/); finish it with `sift train --resume {run.path}`")
    model, tokenizer = load_for_eval(spec, run.model_dir)
    results = {"app": spec.app, "model": str(run.model_dir), **evaluate_model(model, tokenizer, spec, options, run)}
    write_json(run.eval_dir / RESULTS, results)
    write_model_card(run, spec, [row for row in flatten(results) if row[0] not in ("app", "model")])
    console.print(results_table(results, title=f"{spec.app}: {run.path}"))
    summary(console, f"evaluated {spec.app} on {run.path}; model card updated", run.eval_dir / RESULTS)
    return results


def flatten(results: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metrics as (dotted name, value) rows, e.g. ("lm_eval.wmdp_bio.acc", 0.31)."""
    rows = []
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def results_table(results: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in flatten(results):
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table
