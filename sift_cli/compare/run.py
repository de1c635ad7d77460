"""`sift compare`: train the grid on selection seeds, score every run per example, choose each method's
configuration on validation, train the chosen ones on report seeds, report on test.

The comparison directory holds `compare.yaml` (the base spec, the comparison's options and the hashes of
the prepared data and MCQ files: running the same command again continues an interrupted comparison, a
different command or changed data is refused), `runs/` (ordinary run directories), `scores/` (per-example
scores with example ids and clusters, of the base model and of every run), `tasks/` (the validation and
test halves of the MCQ files), and the report: `compare.json`, `results.csv`, `pareto.png/.csv`,
`curves.png/.csv`.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml
from rich.console import Console

from sift_cli.apps import get_app
from sift_cli.apps.base import CompareMetrics
from sift_cli.compare.grid import POME, Cell, CompareOptions, Config, cell_spec, grid_sizes, on_edge, report_cells, selection_cells
from sift_cli.compare.report import (
    NLL_NOTE,
    curves,
    intervals,
    paired_tests,
    pareto,
    results_rows,
    results_table,
    sample,
    test_caption,
    write_rows,
)
from sift_cli.compare.scores import Scored, build_examples, cached_scores, examples_digest, score_model
from sift_cli.compare.select import Choice, SeedScores, choose, rule_text
from sift_cli.compare.stats import mean_interval
from sift_cli.errors import SiftError
from sift_cli.evaluation.lmeval import CLOZE
from sift_cli.output import summary
from sift_cli.spec import RunSpec
from sift_cli.store.atomic import write_json, write_text
from sift_cli.store.lock import LOCK, locked
from sift_cli.store.places import check_output_place
from sift_cli.store.prepared import PreparedData, file_sha256, load_prepared
from sift_cli.store.rundir import RunDir

RECORD = "compare.yaml"


def check_claimable(output: Path) -> None:
    """Before anything is written: a new or empty directory, or a comparison's own."""
    check_output_place(output)
    if (output / RECORD).is_file():
        return
    if output.exists() and (not output.is_dir() or any(entry.name != LOCK for entry in output.iterdir())):
        raise SiftError(f"--output {output} exists and is not a comparison directory; pass a new --output")


def claim(output: Path, record: str) -> bool:
    """Under the output's lock: write the comparison's record, or check that it is this comparison's
    own (which then continues). Returns whether this call started the comparison."""
    marker = output / RECORD
    if marker.is_file():
        if marker.read_text(encoding="utf-8") != record:
            raise SiftError(f"{output} holds a different comparison ({RECORD} differs: another command, or the data changed); pass a new --output")
        return False
    check_claimable(output)
    write_text(marker, record)
    return True


@contextmanager
def claimed(output: Path, record: str) -> Iterator[None]:
    """The comparison directory, locked for this process; a refusal before any run was trained takes
    back what this call wrote (the record, the task splits, cached scores), so that the corrected
    command finds the directory as it was."""
    check_claimable(output)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        with locked(output, "compare into it"):
            started = claim(output, record)
            try:
                yield
            except SiftError:
                runs = output / "runs"
                if started and not (runs.is_dir() and any(runs.iterdir())):
                    for name in (RECORD, "tasks", "scores", "runs"):
                        target = output / name
                        if target.is_dir():
                            shutil.rmtree(target)
                        else:
                            target.unlink(missing_ok=True)
                raise
    finally:
        if created and [entry.name for entry in output.iterdir()] == [LOCK]:
            shutil.rmtree(output)


def input_hashes(data: PreparedData, tasks: list[str]) -> dict[str, Any]:
    """sha256 of every prepared-data file (from its verified manifest) and of every MCQ file."""
    hashes: dict[str, Any] = {"prepared": dict(sorted((data.manifest.get("sha256") or {}).items()))}
    files = {}
    for task in tasks:
        path = Path(task.removeprefix(CLOZE))
        if not path.is_file():
            raise SiftError(f"--tasks {task}: sift compare splits local MCQ files into validation and test; {path} is not a file")
        files[task] = file_sha256(path)
    hashes["tasks"] = files
    return hashes


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
    for cell in selection_cells(options):
        cell_spec(base, cell, output / "runs", options.steps)  # every axis value is a valid spec, before anything is written
    data = load_prepared(Path(base.data.path), base.app)
    hashes = input_hashes(data, tasks)
    record = {"base": base.model_dump(mode="json"), "compare": options.model_dump(mode="json"), "tasks": tasks, "inputs": hashes}
    with claimed(output, yaml.safe_dump(record, sort_keys=True)):
        return _compare(base, options, output, tasks, data, hashes, console, batch_size, title, notes)


def _compare(
    base: RunSpec, options: CompareOptions, output: Path, tasks: list[str], data: PreparedData, hashes: dict[str, Any],
    console: Console, batch_size: int, title: str | None, notes: tuple[str, ...],
) -> dict[str, Any]:  # fmt: skip
    examples = build_examples(base, tasks, output / "tasks", data)
    digest = examples_digest(examples)
    metrics: CompareMetrics = get_app(base.app).COMPARE_METRICS
    with console.status("scoring the base model") as status:
        base_scores = cached_scores(output / "scores" / "base.json", digest, lambda: _score(base, None, examples, batch_size))
        selection = _run_cells(selection_cells(options), base, options, output, examples, digest, batch_size, status)
        base_utility = float(np.mean(base_scores["validation"][metrics.utility.name]["score"]))
        choices: dict[str, Choice] = {}
        for method in options.grid:
            by_config: dict[Config, SeedScores] = {}
            for cell, scores in selection.items():
                if cell.method == method:
                    by_config.setdefault(cell.config, []).append(scores)
            choice = choose(by_config, base_utility, options.utility_tolerance, metrics)
            choices[method] = replace(choice, edges=tuple(on_edge(choice.config, options)))
        reported = _run_cells(report_cells(options, {m: c.config for m, c in choices.items()}), base, options, output, examples, digest, batch_size, status)
    runs = {**selection, **reported}
    chosen = {method: [runs[Cell(choice.config, seed)] for seed in options.reported_on] for method, choice in choices.items()}
    return _report(base, options, output, base_scores, selection, chosen, choices, hashes, console, title, notes)


def _run_cells(
    cells: list[Cell], base: RunSpec, options: CompareOptions, output: Path, examples: Any, digest: str, batch_size: int, status: Any
) -> dict[Cell, dict[str, dict[str, Scored]]]:
    """Train (or resume, or POME-edit) and score each cell; finished runs and their scores are reused."""
    scores = {}
    for number, cell in enumerate(cells, 1):
        counter = f"[{number}/{len(cells)}]"
        run_dir = _ensure_run(cell, base, options, output / "runs", status, counter)
        spec = cell_spec(base, cell, output / "runs", options.steps)
        status.update(f"{counter} scoring {cell.name}")
        scores[cell] = cached_scores(output / "scores" / f"{cell.name}.json", digest, lambda: _score(spec, run_dir, examples, batch_size))
    return scores


def _ensure_run(cell: Cell, base: RunSpec, options: CompareOptions, runs: Path, status: Any, counter: str) -> Path:
    """The finished run directory of `cell`: trained, resumed, or POME-edited as needed."""
    run_dir = runs / cell.name
    if RunDir(run_dir).has_model():
        return run_dir
    quiet = Console(quiet=True)
    if cell.method == POME:
        from sift_cli.pome import pome_run

        trained = Cell(cell.config.trained(), cell.seed)
        if not RunDir(runs / trained.name).has_model():
            _ensure_run(trained, base, options, runs, status, counter)
        status.update(f"{counter} POME edit of {trained.name}")
        pome_run(runs / trained.name, run_dir, options.pome_rank_fraction, console=quiet)
        return run_dir
    from sift_cli.training import train

    spec = cell_spec(base, cell, runs, options.steps)
    resume = (run_dir / "spec.yaml").is_file()
    status.update(f"{counter} {'resuming' if resume else 'training'} {cell.name}")
    train(spec, console=quiet, resume=resume)
    return run_dir


def _score(spec: RunSpec, run_dir: Path | None, examples: Any, batch_size: int) -> dict[str, dict[str, Scored]]:
    from sift_cli.evaluation.evaluate import load_for_eval

    model, tokenizer = load_for_eval(spec, None if run_dir is None else run_dir / "model")
    return score_model(model, tokenizer, spec, examples, batch_size)


def _report(
    base: RunSpec, options: CompareOptions, output: Path, base_scores: Any, selection: dict[Cell, Any], chosen: dict[str, SeedScores],
    choices: dict[str, Choice], hashes: dict[str, Any], console: Console, title: str | None, notes: tuple[str, ...],
) -> dict[str, Any]:  # fmt: skip
    metrics: CompareMetrics = get_app(base.app).COMPARE_METRICS
    rows = {"base": intervals([base_scores], metrics), **{method: intervals(value, metrics) for method, value in chosen.items()}}
    try:
        tests = paired_tests(chosen, options.reference, metrics, options.utility_tolerance)
    except ValueError as exc:
        raise SiftError(f"{exc}; delete {output / 'scores'} and run the comparison again") from None
    files = [output / "results.csv"]
    write_rows(output / "results.csv", results_rows(rows, choices, tests))
    files += pareto(output / "pareto", _pareto_points(base_scores, selection, choices, metrics), metrics)
    files += curves(output / "curves", {method: _mean_curve(output / "runs", choice.config, options.reported_on) for method, choice in choices.items()})
    sizes = grid_sizes(options)
    base_utility = float(np.mean(base_scores["validation"][metrics.utility.name]["score"]))
    first = rows["base"]
    record = {
        "app": base.app,
        "rule": rule_text(metrics, options.utility_tolerance, base_utility),
        "metrics": {m.name: {"role": role, "higher_is_better": m.higher_is_better, "binary": m.binary}
                    for m, role in zip(metrics.metrics, ("utility", "constraint", *["reported"] * len(metrics.extra)))},  # fmt: skip
        "choices": {method: {"config": choice.config.name, "lr": choice.config.lr, "settings": dict(choice.config.settings),
                             "validation_utility": choice.utility, "validation_constraint": choice.constraint,
                             "qualified": choice.qualified, "on_grid_edge": list(choice.edges)} for method, choice in choices.items()},  # fmt: skip
        "grid_sizes": sizes,
        "test": {name: {metric: vars(interval) for metric, interval in found.items()} for name, found in rows.items()},
        "paired_vs_reference": {method: {metric: {**vars(test), "significant": test.significant} for metric, test in found.items()}
                                for method, found in tests.differences.items()},  # fmt: skip
        "utility_noninferiority": {method: {"margin_nats": tests.margin, "p_value": tests.noninferior[method],
                                            "p_adjusted": tests.noninferior_adjusted[method]} for method in tests.noninferior},  # fmt: skip
        "primary": None if tests.primary is None else {"method": tests.primary[0], "metric": tests.primary[1]},
        "multiplicity": "the primary test first at 5%; every other test Holm-adjusted and gated by it (adjusted p >= the primary's)",
        "reference": options.reference,
        "selection_seeds": options.seeds,
        "report_seeds": options.reported_on,
        "reported_on_selection_seeds": options.report_seeds is None,
        "clusters": {metric: {"test_examples": interval.n, "test_clusters": interval.clusters} for metric, interval in first.items()},
        "inputs": hashes,
        "nll": NLL_NOTE,
    }
    write_json(output / "compare.json", record)
    caption = [_seeds_text(options), test_caption(tests, len(options.reported_on), options.reference), NLL_NOTE]
    if len(set(sizes.values())) > 1:
        caption.append(f"unequal grids ({', '.join(f'{m} {n}' for m, n in sizes.items())} configurations): a larger grid is favoured by choosing")
    if any(choice.edges for choice in choices.values()):
        caption.append("edge: the chosen configuration is at the end of its grid along these axes; its front may go on, extend the grid")
    unqualified = [method for method, choice in choices.items() if not choice.qualified]
    if unqualified:
        caption.append(
            f"(!) no configuration of {', '.join(unqualified)} kept its validation {metrics.utility.label} within "
            f"{options.utility_tolerance:.0%} of base in perplexity"
        )
    table = results_table(title or f"{base.app}: {', '.join(options.grid)}", rows, choices, tests, metrics)
    table.caption = "\n".join([*caption, *notes])
    console.print(table)
    total = len(selection) + (len(options.reported_on) * len(choices) if options.report_seeds is not None else 0)
    summary(console, f"compared {total} runs ({', '.join(p.name for p in files)}, compare.json)", output)
    return record


def _seeds_text(options: CompareOptions) -> str:
    sizes = ", ".join(f"{m} {n}" for m, n in grid_sizes(options).items())
    chosen = f"configurations ({sizes}) chosen on validation over selection seeds {_list(options.seeds)}"
    if options.report_seeds is None:
        return f"{chosen}, reported on test over the same seeds (the chosen run's score is biased upward; pass --report-seeds)"
    return f"{chosen}, reported on test over fresh seeds {_list(options.report_seeds)}"


def _list(seeds: list[int]) -> str:
    return ",".join(str(seed) for seed in seeds)


def _pareto_points(base_scores: Any, selection: dict[Cell, Any], choices: dict[str, Choice], metrics: CompareMetrics) -> list[dict[str, Any]]:
    points = [_point("base", "", [base_scores], True, metrics)]
    by_config: dict[Config, list[Any]] = {}
    for cell, scores in selection.items():
        by_config.setdefault(cell.config, []).append(scores)
    for config, scores in by_config.items():
        points.append(_point(config.method, config.label, scores, choices[config.method].config == config, metrics))
    return points


def _point(method: str, label: str, scores: list[Any], chosen: bool, metrics: CompareMetrics) -> dict[str, Any]:
    utility = mean_interval(sample(scores, "validation", metrics.utility.name, False))
    constraint = mean_interval(sample(scores, "validation", metrics.constraint.name, metrics.constraint.binary))
    return {"method": method, "config": label, "chosen": chosen, "seeds": len(scores),
            "utility": utility.mean, "utility_low": utility.low, "utility_high": utility.high,
            "constraint": constraint.mean, "constraint_low": constraint.low, "constraint_high": constraint.high}  # fmt: skip


def _mean_curve(runs: Path, config: Config, seeds: list[int]) -> dict[str, np.ndarray]:
    """loss_f and loss_g per step averaged over seeds (a POME edit shows its Muon run's training)."""
    frames = [RunDir(runs / Cell(config.trained(), seed).name).read_metrics() for seed in seeds]
    steps = min(len(frame) for frame in frames)
    return {
        "step": frames[0]["step"].to_numpy()[:steps],
        "loss_f": np.mean([frame["loss_f"].to_numpy()[:steps] for frame in frames], axis=0),
        "loss_g": np.mean([frame["loss_g"].to_numpy()[:steps] for frame in frames], axis=0),
    }
