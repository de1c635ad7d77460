"""What a comparison shows: each chosen configuration on test over its report seeds with intervals, paired
differences against the reference method with exact tests over seeds (the app's primary comparison
first, the rest Holm-adjusted and gated by it), a non-inferiority test of utility, the Pareto picture and the training curves, as a
Rich table, CSV and PNG."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from rich.table import Table

from sift_cli.apps.base import CompareMetrics
from sift_cli.compare.select import Choice, SeedScores
from sift_cli.compare.stats import ALPHA, RESAMPLES, Interval, PairedDifference, Sample, holm, mean_interval, noninferiority, paired_difference
from sift_cli.localize import save_figure, write_csv

NLL_NOTE = (
    "NLL: mean over examples of each example's mean NLL per token, in nats (per-text means; `sift evaluate`'s "
    "perplexity weights texts by their tokens)"
)


@dataclass(frozen=True)
class Tests:
    """Every paired difference against the reference, by method and metric, and the utility
    non-inferiority p of each method (None with one seed)."""

    differences: dict[str, dict[str, PairedDifference]]
    noninferior: dict[str, float | None]
    noninferior_adjusted: dict[str, float | None]
    primary: tuple[str, str] | None
    margin: float


def sample(scores: SeedScores, split: str, metric: str, binary: bool) -> Sample:
    """(seeds, examples) scores of one metric with the examples' clusters; every seed must hold the
    same examples in the same order (they are scored on one split)."""
    first = scores[0][split][metric]
    for seed in scores[1:]:
        if seed[split][metric]["id"] != first["id"]:
            raise ValueError(f"the seeds of one configuration scored different {metric} examples")
    return Sample(np.array([seed[split][metric]["score"] for seed in scores]), np.array(first["cluster"]), binary)


def is_binary(metric: str, metrics: CompareMetrics) -> bool:
    """Whether a metric's per-example scores are 1/0 outcomes: MCQ answers, and the app's binary metrics."""
    return metric.startswith("acc:") or any(m.binary for m in metrics.metrics if m.name == metric)


def intervals(scores: SeedScores, metrics: CompareMetrics) -> dict[str, Interval]:
    return {metric: mean_interval(sample(scores, "test", metric, is_binary(metric, metrics))) for metric in scores[0]["test"]}


def paired_tests(chosen: dict[str, SeedScores], reference: str, metrics: CompareMetrics, tolerance: float, resamples: int = RESAMPLES) -> Tests:
    """Each method against the reference on every metric, paired by seed and example id.

    Serial gatekeeping keeps the whole table's family-wise error at 5%: the primary comparison (SIFT
    against the reference on the constraint) is tested first at its raw p; every other difference and
    every utility non-inferiority test (margin: the tolerance, log(1 + tolerance) nats) is one family,
    Holm-adjusted, and its adjusted p is at least the primary's, so nothing in it is called a difference
    unless the primary one is. Without SIFT in the grid the family is the whole table."""
    reference_scores = chosen[reference]
    differences: dict[str, dict[str, PairedDifference]] = {}
    for method, scores in chosen.items():
        if method == reference:
            continue
        differences[method] = {}
        for metric in scores[0]["test"]:
            binary = is_binary(metric, metrics)
            ours, theirs = sample(scores, "test", metric, binary), sample(reference_scores, "test", metric, binary)
            if scores[0]["test"][metric]["id"] != reference_scores[0]["test"][metric]["id"]:
                raise ValueError(f"{method} and {reference} were scored on different {metric} examples")
            differences[method][metric] = paired_difference(ours, theirs, resamples=resamples)
    margin = math.log1p(tolerance)
    utility = metrics.utility.name
    noninferior = {
        method: noninferiority(sample(chosen[method], "test", utility, False), sample(reference_scores, "test", utility, False), margin)
        for method in differences
    }
    primary = ("sift", metrics.constraint.name) if "sift" in differences else None
    family = [(method, metric) for method, found in differences.items() for metric in found if (method, metric) != primary]
    adjusted = holm([differences[m][k].p_value for m, k in family] + list(noninferior.values()))
    gate = None if primary is None else differences["sift"][primary[1]].p_value
    if gate is not None:
        adjusted = [None if p is None else max(p, gate) for p in adjusted]
    for (method, metric), p in zip(family, adjusted):
        differences[method][metric] = replace(differences[method][metric], p_adjusted=p)
    if primary is not None:
        differences["sift"][primary[1]] = replace(differences["sift"][primary[1]], p_adjusted=differences["sift"][primary[1]].p_value)
    noninferior_adjusted = dict(zip(noninferior, adjusted[len(family) :]))
    return Tests(differences, noninferior, noninferior_adjusted, primary, margin)


def results_table(title: str, rows: dict[str, dict[str, Interval]], choices: dict[str, Choice], tests: Tests, metrics: CompareMetrics) -> Table:
    """Mean and 95% interval per chosen configuration and metric, and its paired difference to the
    reference (with its interval, relative size and adjusted p; * only when the adjusted p and the
    interval both say it differs). Columns: the app's metrics in declared order, then MCQ accuracies,
    each headed with its test sample size and clusters; 1/0 outcomes show as percentages."""
    first = next(iter(rows.values()))
    declared = [m.name for m in metrics.metrics if m.name in first]
    names = declared + [name for name in first if name not in declared]
    table = Table(title=title, title_justify="left", caption_justify="left")
    table.add_column("model", no_wrap=True)
    for metric in names:
        size = first[metric]
        clusters = "" if size.clusters == size.n else f" ({size.clusters} clusters)"
        table.add_column(f"{column_label(metric, metrics)}\nn={size.n}{clusters}", justify="right")
    for name, found in rows.items():
        choice = choices.get(name)
        label = name if choice is None else f"{name}\n{choice.config.label}" + ("" if choice.qualified else " (!)")
        if choice is not None and choice.edges:
            label += f"\nedge: {', '.join(choice.edges)}"
        if name in tests.noninferior and tests.noninferior_adjusted[name] is not None:
            keeps = tests.noninferior_adjusted[name] < ALPHA
            label += f"\nutility non-inferior: {'yes' if keeps else 'not shown'} (p={_p(tests.noninferior_adjusted[name])})"
        table.add_row(label, *[_cell(found[metric], tests.differences.get(name, {}).get(metric), is_binary(metric, metrics)) for metric in names])
    return table


def _cell(interval: Interval, test: PairedDifference | None, binary: bool) -> str:
    if binary:
        cell = f"{interval.mean:.0%}\n[{interval.low:.0%}, {interval.high:.0%}]"
    else:
        cell = f"{interval.mean:.3g}\n[{interval.low:.3g}, {interval.high:.3g}]"
    if test is None:
        return cell
    if binary:
        change = f"{100 * test.difference:+.0f} pts [{100 * test.low:+.0f}, {100 * test.high:+.0f}]"
    else:
        change = f"{test.difference:+.2g} [{test.low:+.2g}, {test.high:+.2g}]"
    relative = f" ({test.relative:+.0%})" if test.relative is not None and not binary else ""
    p_text = "no test" if test.p_adjusted is None else f"p={_p(test.p_adjusted)}{' *' if test.significant else ''}"
    return f"{cell}\nΔ {change}{relative}\n{p_text}"


def _p(p: float) -> str:
    return f"{p:.2g}"


def column_label(metric: str, metrics: CompareMetrics) -> str:
    """The app's label with its direction (`forget_nll` -> "forget NLL ↑"); `acc:forget_mcq_cloze` ->
    "forget_mcq acc"."""
    if metric.startswith("acc:"):
        return metric.removeprefix("acc:").removesuffix("_cloze") + " acc"
    declared = {m.name: m for m in metrics.metrics}.get(metric)
    return metric if declared is None else f"{declared.label} {declared.arrow}"


def test_caption(tests: Tests, report_seeds: int, reference: str) -> str:
    """What the Δ lines mean, including what this number of seeds can and cannot show."""
    if report_seeds < 2:
        return (f"Δ vs {reference} on the same test examples; one report seed: the numbers are conditional on one "
                "training run per method, so no difference is tested or marked")  # fmt: skip
    floor = 2.0 / 2.0**report_seeds
    primary = (f"primary: {tests.primary[0]} on {tests.primary[1]}, tested first; all other tests Holm-adjusted and "
               "gated by it (adjusted p at least the primary's)") if tests.primary else "all tests Holm-adjusted"  # fmt: skip
    return (
        f"Δ vs {reference} over {report_seeds} paired seeds: exact sign-flip test over seeds (smallest possible p "
        f"{floor:.2g}{', so nothing can be marked' if floor >= ALPHA else ''}); {primary}; "
        f"* adjusted p < 0.05 and interval excludes 0; utility non-inferior: {reference}'s + log(1 + tolerance) = "
        f"{tests.margin:.3g} nats, one-sided exact test"
    )


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of dicts as a CSV, through localize's atomic writer."""
    write_csv(pd.DataFrame(rows), path)


def results_rows(rows: dict[str, dict[str, Interval]], choices: dict[str, Choice], tests: Tests) -> list[dict[str, Any]]:
    out = []
    for name, found in rows.items():
        choice = choices.get(name)
        for metric, interval in found.items():
            test = tests.differences.get(name, {}).get(metric)
            difference = {} if test is None else {f"diff_{key}": value for key, value in asdict(test).items()}
            out.append({"model": name, "config": choice.config.label if choice else "", "metric": metric,
                        **asdict(interval), **difference, "significant": test.significant if test else ""})  # fmt: skip
    return out


def pareto(path: Path, points: list[dict[str, Any]], metrics: CompareMetrics) -> list[Path]:
    """Utility (x) against constraint (y) on validation, one point per configuration with its interval,
    chosen points ringed; PNG and the CSV it was drawn from."""
    write_rows(path.with_suffix(".csv"), points)
    figure = Figure(figsize=(6.4, 4.8))
    axes = figure.add_subplot()
    methods = sorted({point["method"] for point in points})
    colors = {method: f"C{i}" for i, method in enumerate(methods)}
    for point in points:
        xerr = [[point["utility"] - point["utility_low"]], [point["utility_high"] - point["utility"]]]
        yerr = [[point["constraint"] - point["constraint_low"]], [point["constraint_high"] - point["constraint"]]]
        marker = "*" if point["method"] == "base" else "o"
        axes.errorbar(point["utility"], point["constraint"], xerr=xerr, yerr=yerr, fmt=marker, color=colors[point["method"]],
                      markersize=12 if point["chosen"] else 6, markeredgecolor="black" if point["chosen"] else colors[point["method"]],
                      capsize=2, alpha=0.9)  # fmt: skip
        if point["method"] != "base":
            axes.annotate(point["config"], (point["utility"], point["constraint"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for method in methods:
        axes.plot([], [], "o", color=colors[method], label=method)
    better = {True: "higher is better", False: "lower is better"}
    axes.set_xlabel(f"{metrics.utility.label}, validation (utility: {better[metrics.utility.higher_is_better]})")
    axes.set_ylabel(f"{metrics.constraint.label}, validation (constraint: {better[metrics.constraint.higher_is_better]})")
    axes.set_title("each configuration on its selection seeds, chosen ones ringed")
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path.with_suffix(".png"))
    return [path.with_suffix(".png"), path.with_suffix(".csv")]


def curves(path: Path, curves_by_method: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """loss_f and loss_g per step of each chosen configuration (mean over its report seeds); PNG and CSV."""
    rows = [{"method": method, "step": int(step), "loss_f": float(f), "loss_g": float(g)}
            for method, curve in curves_by_method.items() for step, f, g in zip(curve["step"], curve["loss_f"], curve["loss_g"])]  # fmt: skip
    write_rows(path.with_suffix(".csv"), rows)
    figure = Figure(figsize=(9.6, 3.6))
    for column, (key, label) in enumerate((("loss_f", "f (keep)"), ("loss_g", "g (constraint)"))):
        axes = figure.add_subplot(1, 2, column + 1)
        for method, curve in curves_by_method.items():
            axes.plot(curve["step"], curve[key], label=method)
        axes.set_xlabel("step")
        axes.set_title(label)
        axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path.with_suffix(".png"))
    return [path.with_suffix(".png"), path.with_suffix(".csv")]
