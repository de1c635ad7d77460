"""`sift compare`: train the grid, score every run per example, choose on validation, report on test.

The comparison directory holds `compare.yaml` (the base spec and the comparison's options: running the
same command again continues an interrupted comparison, a different one is refused), `runs/` (ordinary
run directories), `scores/` (per-example scores of the base model and of every run), `tasks/` (the
validation and test halves of the MCQ files), and the report: `compare.json`, `results.csv`,
`pareto.png/.csv`, `curves.png/.csv`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from sift_cli.apps import get_app
from sift_cli.apps.base import CompareMetrics
from sift_cli.compare.grid import POME, Cell, CompareOptions, cell_spec, cells
from sift_cli.compare.report import (
    curves,
    is_binary,
    paired_test,
    pareto,
    results_rows,
    results_table,
    stacked,
    test_intervals,
    write_rows,
)
from sift_cli.compare.scores import build_examples, cached_scores, score_model
from sift_cli.compare.select import Choice, choose, rule_text
from sift_cli.compare.stats import bootstrap_interval
from sift_cli.errors import SiftError
from sift_cli.output import summary
from sift_cli.spec import RunSpec
from sift_cli.store.atomic import write_json, write_text
from sift_cli.store.rundir import RunDir

RECORD = "compare.yaml"


def claim(output: Path, record: str) -> None:
    """A new or empty directory, or the same comparison's own (which then continues)."""
    marker = output / RECORD
    if marker.is_file():
        if marker.read_text(encoding="utf-8") != record:
            raise SiftError(f"{output} holds a different comparison ({RECORD} differs); pass a new --output")
        return
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SiftError(f"--output {output} exists and is not a comparison directory; pass a new --output")
    write_text(marker, record)


def run_compare(
    base: RunSpec,
    options: CompareOptions,
    output: Path,
    tasks: list[str],
    console: Console,
    batch_size: int = 8,
    title: str | None = None,
    notes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run, score, choose and report; progress is a transient status line, so what stays on the screen
    is the table (titled `title`, with `notes` in its caption) and one summary line."""
    if options.reference not in options.grid:
        raise SiftError(f"reference method {options.reference!r} is not in the grid ({', '.join(options.grid)}); add it or pass --reference")
    output = Path(output)
    claim(output, yaml.safe_dump({"base": base.model_dump(mode="json"), "compare": options.model_dump(mode="json"), "tasks": tasks}, sort_keys=True))
    examples = build_examples(base, tasks, output / "tasks")
    grid = cells(options)
    with console.status("scoring the base model") as status:
        base_scores = cached_scores(output / "scores" / "base.json", lambda: _score(base, None, examples, batch_size))
        scores: dict[Cell, dict[str, dict[str, list[float]]]] = {}
        for number, cell in enumerate(grid, 1):
            run_dir = _ensure_run(cell, base, options, output / "runs", status, f"[{number}/{len(grid)}]")
            spec = cell_spec(base, cell, output / "runs", options.steps)
            status.update(f"[{number}/{len(grid)}] scoring {cell.name}")
            scores[cell] = cached_scores(output / "scores" / f"{cell.name}.json", lambda: _score(spec, run_dir, examples, batch_size))
    return _report(base, options, output, base_scores, scores, console, title, notes)


def _ensure_run(cell: Cell, base: RunSpec, options: CompareOptions, runs: Path, status: Any, counter: str) -> Path:
    """The finished run directory of `cell`: trained, resumed, or POME-edited as needed."""
    run_dir = runs / cell.name
    if (run_dir / "model" / "config.json").is_file():
        return run_dir
    quiet = Console(quiet=True)
    if cell.method == POME:
        from sift_cli.pome import pome_run

        status.update(f"{counter} POME edit of {Cell('muon', cell.lr, cell.seed).name}")
        pome_run(runs / Cell("muon", cell.lr, cell.seed).name, run_dir, options.pome_rank_fraction, console=quiet)
        return run_dir
    from sift_cli.train import train

    spec = cell_spec(base, cell, runs, options.steps)
    resume = (run_dir / "spec.yaml").is_file()
    status.update(f"{counter} {'resuming' if resume else 'training'} {cell.name}")
    train(spec, console=quiet, resume=resume)
    return run_dir


def _score(spec: RunSpec, run_dir: Path | None, examples: Any, batch_size: int) -> dict[str, dict[str, list[float]]]:
    from sift_cli.evaluation.evaluate import load_for_eval

    model, tokenizer = load_for_eval(spec, None if run_dir is None else run_dir / "model")
    return score_model(model, tokenizer, spec, examples, batch_size)


def _report(
    base: RunSpec, options: CompareOptions, output: Path, base_scores: Any, scores: dict[Cell, Any], console: Console,
    title: str | None, notes: tuple[str, ...],
) -> dict[str, Any]:  # fmt: skip
    metrics: CompareMetrics = get_app(base.app).COMPARE_METRICS
    by_config: dict[tuple[str, float], list[Any]] = {}
    for cell, value in scores.items():
        by_config.setdefault(cell.config, []).append(value)
    base_utility = float(np.mean(base_scores["validation"][metrics.utility.name]))
    choices: dict[str, Choice] = {}
    for method in options.grid:
        by_lr = {lr: value for (name, lr), value in by_config.items() if name == method}
        choices[method] = choose(method, by_lr, base_utility, options.utility_tolerance, metrics)
    chosen = {method: by_config[(method, choice.lr)] for method, choice in choices.items()}
    rows = {"base": test_intervals([base_scores]), **{method: test_intervals(value) for method, value in chosen.items()}}
    reference = chosen[options.reference]
    tests = {
        method: {metric: paired_test(value, reference, metric, is_binary(metric, metrics)) for metric in value[0]["test"]}
        for method, value in chosen.items()
        if method != options.reference
    }
    files = [output / "results.csv"]
    write_rows(output / "results.csv", results_rows(rows, tests))
    files += pareto(output / "pareto", _pareto_points(base_scores, by_config, choices, metrics), metrics)
    files += curves(output / "curves", {method: _mean_curve(output / "runs", method, choices[method].lr, options.seeds) for method in choices})
    record = {
        "app": base.app,
        "rule": rule_text(metrics, options.utility_tolerance, base_utility),
        "metrics": {m.name: {"role": role, "higher_is_better": m.higher_is_better, "binary": m.binary}
                    for m, role in zip(metrics.metrics, ("utility", "constraint", *["reported"] * len(metrics.extra)))},  # fmt: skip
        "choices": {method: vars(choice) for method, choice in choices.items()},
        "test": {name: {metric: vars(interval) for metric, interval in intervals.items()} for name, intervals in rows.items()},
        "paired_vs_reference": {method: {metric: {**vars(test), "significant": test.significant} for metric, test in found.items()} for method, found in tests.items()},
        "reference": options.reference,
        "seeds": options.seeds,
    }
    write_json(output / "compare.json", record)
    seeds = f"{len(options.seeds)} seed{'s' if len(options.seeds) > 1 else ''}"
    caption = [f"lr chosen on validation, reported on test ({seeds}); 95% intervals; Δ vs {options.reference} on the "
               "same test examples, * significant; NLL in nats per token (perplexity = exp NLL)"]  # fmt: skip
    unqualified = [method for method, choice in choices.items() if not choice.qualified]
    if unqualified:
        caption.append(
            f"(!) no lr of {', '.join(unqualified)} kept its validation {metrics.utility.label} within "
            f"{options.utility_tolerance:.0%} of base in perplexity"
        )
    table = results_table(title or f"{base.app}: {', '.join(options.grid)}", rows, choices, tests, metrics)
    table.caption = "\n".join([*caption, *notes])
    console.print(table)
    summary(console, f"compared {len(scores)} runs ({', '.join(p.name for p in files)}, compare.json)", output)
    return record


def _pareto_points(
    base_scores: Any, by_config: dict[tuple[str, float], list[Any]], choices: dict[str, Choice], metrics: CompareMetrics
) -> list[dict[str, Any]]:
    points = [_point("base", 0.0, [base_scores], True, metrics)]
    for (method, lr), value in sorted(by_config.items()):
        points.append(_point(method, lr, value, choices[method].lr == lr, metrics))
    return points


def _point(method: str, lr: float, scores: list[Any], chosen: bool, metrics: CompareMetrics) -> dict[str, Any]:
    utility = bootstrap_interval(stacked(scores, "validation", metrics.utility.name))
    constraint = bootstrap_interval(stacked(scores, "validation", metrics.constraint.name))
    return {"method": method, "lr": lr, "chosen": chosen, "seeds": len(scores),
            "utility": utility.mean, "utility_low": utility.low, "utility_high": utility.high,
            "constraint": constraint.mean, "constraint_low": constraint.low, "constraint_high": constraint.high}  # fmt: skip


def _mean_curve(runs: Path, method: str, lr: float, seeds: list[int]) -> dict[str, np.ndarray]:
    """loss_f and loss_g per step averaged over seeds (a POME edit shows its Muon run's training)."""
    trained = "muon" if method == POME else method
    frames = [RunDir(runs / Cell(trained, lr, seed).name).read_metrics() for seed in seeds]
    steps = min(len(frame) for frame in frames)
    return {
        "step": frames[0]["step"].to_numpy()[:steps],
        "loss_f": np.mean([frame["loss_f"].to_numpy()[:steps] for frame in frames], axis=0),
        "loss_g": np.mean([frame["loss_g"].to_numpy()[:steps] for frame in frames], axis=0),
    }
