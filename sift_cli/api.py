"""sift's Python API: what a script, a notebook or a sweep imports, from this one module.

Three entry points, each the same code the `sift` commands run:
- the optimizer alone (`SiftOptimizer`, `OptimizerConfig`) in your own PyTorch loop;
- whole runs as functions (`run_spec`, `train`, `resume`, `evaluate`, `compare`) that write the same
  run directories as the CLI and return typed results;
- `SiftTrainer`, a transformers `Trainer` that steps with SIFT or a baseline on two objectives.

Errors a user can fix are `SiftError` (one line: what is wrong and how to fix it); the CLI prints them
and exits 2, a script catches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rich.console import Console

from sift_cli.engine import BlockReport, OptimizerConfig, SiftOptimizer, StepReport
from sift_cli.errors import SiftError
from sift_cli.spec import RunSpec, resolve_spec

if TYPE_CHECKING:
    import pandas as pd

    from sift_cli.hf.trainer import SiftTrainer

__all__ = [
    "BlockReport", "CompareResult", "EvalResult", "OptimizerConfig", "RunSpec", "SiftError", "SiftOptimizer",
    "SiftTrainer", "StepReport", "TrainResult", "compare", "evaluate", "resume", "run_spec", "train",
]  # fmt: skip


@dataclass(frozen=True)
class TrainResult:
    """A finished run: its directory (what `sift evaluate`, `localize` and `pome` read), its spec as
    recorded, and the per-step metrics (step, loss_f, loss_g, lr, seconds, n_sift, ...)."""

    run_dir: Path
    spec: RunSpec
    metrics: pd.DataFrame

    @property
    def steps(self) -> int:
        return int(self.metrics["step"].iloc[-1])


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of a run: the app's metrics (and lm-eval's, if tasks were run) and how they were
    made; it is also appended to `run_dir/eval/results.json`."""

    run_dir: Path
    results: dict[str, Any]
    made: dict[str, Any]


@dataclass(frozen=True)
class CompareResult:
    """A comparison's record as written to `output/compare.json`: the chosen configuration per method,
    test-split intervals per metric, paired tests against the reference, the seeds and input hashes."""

    output: Path
    record: dict[str, Any]

    @property
    def choices(self) -> dict[str, Any]:
        return self.record["choices"]

    @property
    def test(self) -> dict[str, Any]:
        return self.record["test"]


def run_spec(
    app: str | None = None, preset: str | None = None, config: str | Path | None = None, settings: Mapping[str, Any] | None = None
) -> RunSpec:
    """A validated run spec, merged like `sift train`'s: preset (default `<app>_cpu`) <- config file <-
    `settings` ({"optim.lr": 0.02, "train.steps": 50}, the `--set` keys)."""
    return resolve_spec(app=app, preset=preset, config=Path(config) if config else None, overrides=dict(settings or {}))


def _train_result(run_dir: Path) -> TrainResult:
    from sift_cli.store.rundir import RunDir

    run = RunDir.open(run_dir)
    return TrainResult(run.path, run.load_spec(), run.read_metrics())


def train(spec: RunSpec, console: Console | None = None) -> TrainResult:
    """Train a new run to `spec.train.steps` into `spec.output` (which must be new or empty), as
    `sift train` does; under torchrun every rank calls it."""
    from sift_cli.training import train as run_training

    return _train_result(run_training(spec, console=console or Console()).path)


def resume(
    run_dir: str | Path, steps: int | None = None, lr: float | None = None, data: str | Path | None = None, console: Console | None = None
) -> TrainResult:
    """Continue a run from its newest readable checkpoint, optionally to more `steps`, with a new `lr`,
    or reading its prepared data from where it moved (`data`, checked to be the same data) (`sift
    train --resume`)."""
    from sift_cli.store.rundir import RunDir
    from sift_cli.training import resume_changes
    from sift_cli.training import train as run_training

    spec, changes = resume_changes(RunDir.open(run_dir).load_spec(), steps=steps, lr=lr, data=None if data is None else Path(data))
    return _train_result(run_training(spec, console=console or Console(), resume=True, changes=changes).path)


def evaluate(
    run_dir: str | Path, tasks: Sequence[str] | None = None, limit: int | None = None, batch_size: int = 8,
    console: Console | None = None,
) -> EvalResult:  # fmt: skip
    """Evaluate a run's model (`sift evaluate`): the app's metrics and lm-eval `tasks` (None: the app's
    default tasks, [] none)."""
    from sift_cli.apps.base import EvalOptions
    from sift_cli.evaluation.evaluate import evaluate_run

    options = EvalOptions(tasks=None if tasks is None else list(tasks), limit=limit, batch_size=batch_size)
    entry = evaluate_run(Path(run_dir), options, console=console or Console())
    results = {key: value for key, value in entry.items() if key != "made"}
    return EvalResult(Path(run_dir).resolve(), results, entry["made"])


def compare(
    base: RunSpec,
    output: str | Path,
    grid: Mapping[str, Sequence[float]] | None = None,
    axes: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    seeds: Sequence[int] = (0,),
    report_seeds: Sequence[int] | None = None,
    steps: int | None = None,
    tasks: Sequence[str] = (),
    tolerance: float = 0.10,
    reference: str = "muon",
    console: Console | None = None,
) -> CompareResult:
    """Compare methods on `base`'s task (`sift compare`): every configuration of `grid` ({method: lrs},
    default the app's) crossed with `axes` ({method: {spec key: values}}) is trained on `seeds`, each
    method's configuration is chosen on validation, and the choices are reported on test over
    `report_seeds` with intervals and paired tests. An interrupted comparison continues where it was."""
    from pydantic import ValidationError

    from sift_cli.apps import get_app
    from sift_cli.compare.grid import CompareOptions
    from sift_cli.compare.run import run_compare
    from sift_cli.spec import describe_validation_error

    try:
        options = CompareOptions(
            grid={method: list(lrs) for method, lrs in (grid or get_app(base.app).COMPARE_GRID).items()},
            axes={method: {key: list(values) for key, values in found.items()} for method, found in (axes or {}).items()},
            seeds=list(seeds), report_seeds=None if report_seeds is None else list(report_seeds), steps=steps,
            utility_tolerance=tolerance, reference=reference,
        )  # fmt: skip
    except ValidationError as exc:
        raise SiftError(describe_validation_error(exc)) from None
    record = run_compare(base, options, Path(output), list(tasks), console=console or Console())
    return CompareResult(Path(output).resolve(), record)


def __getattr__(name: str) -> Any:
    """`SiftTrainer` imports transformers' Trainer (seconds): loaded on first use only."""
    if name == "SiftTrainer":
        from sift_cli.hf.trainer import SiftTrainer

        return SiftTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
