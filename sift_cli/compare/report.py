"""What a comparison shows: chosen runs on test with intervals, paired tests against the reference method,
the Pareto picture and the training curves, as a Rich table, CSV and PNG."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from rich.table import Table

from sift_cli.apps.base import CompareMetrics
from sift_cli.compare.select import Choice
from sift_cli.compare.stats import (
    RESAMPLES,
    Interval,
    PairedDifference,
    bootstrap_interval,
    mcnemar_exact,
    paired_bootstrap,
)
from sift_cli.localize import save_figure, write_csv

Scores = list[dict[str, dict[str, list[float]]]]
"""One dict per seed: {split: {metric: per-example scores}}."""

def stacked(scores: Scores, split: str, metric: str) -> np.ndarray:
    """(seeds, examples) scores of one metric."""
    return np.array([seed[split][metric] for seed in scores], dtype=np.float64)


def test_intervals(scores: Scores) -> dict[str, Interval]:
    return {metric: bootstrap_interval(stacked(scores, "test", metric)) for metric in scores[0]["test"]}


def is_binary(metric: str, metrics: CompareMetrics) -> bool:
    """Whether a metric's per-example scores are 1/0 outcomes: MCQ answers, and the app's binary metrics."""
    return metric.startswith("acc:") or any(m.binary for m in metrics.metrics if m.name == metric)


def paired_test(ours: Scores, reference: Scores, metric: str, binary: bool) -> PairedDifference:
    """McNemar on 1/0 outcomes (right/wrong, refused or not) of single runs; a paired bootstrap otherwise."""
    a, b = stacked(ours, "test", metric), stacked(reference, "test", metric)
    if binary and a.shape[0] == b.shape[0] == 1:
        return mcnemar_exact(a[0].astype(bool), b[0].astype(bool))
    return paired_bootstrap(a, b)


def results_table(title: str, rows: dict[str, dict[str, Interval]], choices: dict[str, Choice],
                  tests: dict[str, dict[str, PairedDifference]], metrics: CompareMetrics) -> Table:  # fmt: skip
    """Mean and 95% interval per chosen configuration and metric, and its paired difference to the
    reference method (marked * only when the test and the interval both say it differs). Columns: the
    app's metrics in declared order (utility, constraint, the rest), then MCQ accuracies, each headed with
    its test sample size; 1/0 outcomes show as percentages."""
    first = next(iter(rows.values()))
    declared = [m.name for m in metrics.metrics if m.name in first]
    names = declared + [name for name in first if name not in declared]
    table = Table(title=title, title_justify="left", caption_justify="left")
    table.add_column("model")
    for metric in names:
        table.add_column(f"{column_label(metric, metrics)}\nn={first[metric].n}", justify="right")
    for name, intervals in rows.items():
        choice = choices.get(name)
        label = name if choice is None else f"{name}\nlr {choice.lr:g}" + ("" if choice.qualified else " (!)")
        cells = []
        for metric in names:
            interval, test = intervals[metric], tests.get(name, {}).get(metric)
            if is_binary(metric, metrics):
                cell = f"{interval.mean:.0%}\n[{interval.low:.0%}, {interval.high:.0%}]"
                change = f"{100 * test.difference:+.0f} pts" if test is not None else ""
            else:
                cell = f"{interval.mean:.3g}\n[{interval.low:.3g}, {interval.high:.3g}]"
                change = f"{test.difference:+.2g}" if test is not None else ""
            if test is not None:
                # a bootstrap p of 0 means no resample crossed zero: below its resolution, not zero
                p_text = f"p<{2 / RESAMPLES:.0g}" if test.p_value == 0.0 else f"p={test.p_value:.2g}"
                cell += f"\nΔ {change} {p_text}{' *' if test.significant else ''}"
            cells.append(cell)
        table.add_row(label, *cells)
    return table


def column_label(metric: str, metrics: CompareMetrics) -> str:
    """The app's label with its direction (`forget_nll` -> "forget NLL ↑"); `acc:forget_mcq_cloze` ->
    "forget_mcq acc"."""
    if metric.startswith("acc:"):
        return metric.removeprefix("acc:").removesuffix("_cloze") + " acc"
    declared = {m.name: m for m in metrics.metrics}.get(metric)
    return metric if declared is None else f"{declared.label} {declared.arrow}"


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of dicts as a CSV, through localize's atomic writer."""
    write_csv(pd.DataFrame(rows), path)


def results_rows(rows: dict[str, dict[str, Interval]], tests: dict[str, dict[str, PairedDifference]]) -> list[dict[str, Any]]:
    out = []
    for name, intervals in rows.items():
        for metric, interval in intervals.items():
            test = tests.get(name, {}).get(metric)
            out.append({"model": name, "metric": metric, **asdict(interval),
                        "difference": test.difference if test else "", "p_value": test.p_value if test else "",
                        "test": test.test if test else "", "significant": test.significant if test else ""})  # fmt: skip
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
            axes.annotate(f"{point['lr']:g}", (point["utility"], point["constraint"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for method in methods:
        axes.plot([], [], "o", color=colors[method], label=method)
    better = {True: "higher is better", False: "lower is better"}
    axes.set_xlabel(f"{metrics.utility.label}, validation (utility: {better[metrics.utility.higher_is_better]})")
    axes.set_ylabel(f"{metrics.constraint.label}, validation (constraint: {better[metrics.constraint.higher_is_better]})")
    axes.set_title("each configuration (lr labelled), chosen ones ringed")
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path.with_suffix(".png"))
    return [path.with_suffix(".png"), path.with_suffix(".csv")]


def curves(path: Path, curves_by_method: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """loss_f and loss_g per step of each chosen configuration (mean over its seeds); PNG and CSV."""
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
