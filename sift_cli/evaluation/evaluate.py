"""`sift evaluate`: a finished run's model through its app's metrics, written to run_dir/eval/results.json.

Reads only the run directory (the held-out tables a run copied at its start), so any run can be
re-evaluated later, from any directory, with other tasks. `results.json` keeps every evaluation, each
with how it was made (command, tasks, limit, batch size, sample sizes, versions); the newest is last.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
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
from sift_cli.store.evaluations import RESULTS, flatten, read_evaluations
from sift_cli.store.lock import locked
from sift_cli.store.rundir import RunDir


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


def check_options(options: EvalOptions) -> None:
    """Refuse options that could only fail after the model has loaded (or after a whole lm-eval pass)."""
    from sift_cli.evaluation.lmeval import describe_tasks

    if options.limit is not None and options.limit < 1:
        raise SiftError(f"--limit {options.limit} evaluates nothing; pass a positive number or leave it out")
    if options.batch_size < 1:
        raise SiftError(f"--batch-size {options.batch_size} must be at least 1")
    describe_tasks(options.tasks or [])


def evaluate_run(run_dir: Path, options: EvalOptions, console: Console | None = None) -> dict[str, Any]:
    """Evaluate the model a `sift train` run saved; add the evaluation to eval/results.json and print a
    table. Returns the new evaluation: the results, and under `made` how they were made."""
    console = console or Console()
    run = RunDir.open(run_dir)
    spec = run.load_spec()
    if not run.has_model():
        raise SiftError(f"{run.path} has no trained model yet (no model/); finish it with `sift train --resume {run.path}`")
    check_options(options)
    with locked(run.path, "evaluate it"):
        run.remove_temporary()  # what a killed evaluate left (a model card's temporary file in model/)
        earlier = read_evaluations(run)
        model, tokenizer = load_for_eval(spec, run.model_dir)
        results = {"app": spec.app, "model": str(run.model_dir), **evaluate_model(model, tokenizer, spec, options, run)}
        entry = {**results, "made": provenance(options)}
        write_json(run.eval_dir / RESULTS, {"evaluations": [*earlier, entry]})
        write_model_card(run, spec)
    console.print(results_table(results, title=f"{spec.app}: {run.path}"))
    summary(console, f"evaluated {spec.app} (evaluation {len(earlier) + 1}); model card updated", run.eval_dir / RESULTS)
    return entry


def provenance(options: EvalOptions) -> dict[str, Any]:
    """How an evaluation was made: enough to repeat it, and to tell a `--limit` run from a full one."""
    import lm_eval
    import transformers

    import sift_cli
    from sift_cli.evaluation.lmeval import describe_tasks

    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["sift", *sys.argv[1:]]),
        "tasks": describe_tasks(options.tasks) if options.tasks is not None else "the app's defaults",
        "limit": options.limit,
        "batch_size": options.batch_size,
        "overrides": options.extra,
        "versions": {
            "sift": sift_cli.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lm_eval": getattr(lm_eval, "__version__", "unknown"),
            "python": sys.version.split()[0],
        },
    }


def results_table(results: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in flatten(results):
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table
