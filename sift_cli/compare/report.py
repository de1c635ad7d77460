"""What a comparison shows: chosen runs on test with intervals, paired tests against the reference method,
the Pareto picture and the training curves, as a Rich table, CSV and PNG."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from sift_cli.compare.select import CONSTRAINT, UTILITY, Choice
from sift_cli.compare.stats import (
    Interval,
    PairedDifference,
    bootstrap_interval,
    mcnemar_exact,
    paired_bootstrap,
)
from sift_cli.store.atomic import write_text, write_with

Scores = list[dict[str, dict[str, list[float]]]]
"""One dict per seed: {split: {metric: per-example scores}}."""

DIRECTION = {UTILITY: "lower is better", CONSTRAINT: "higher is better"}


def stacked(scores: Scores, split: str, metric: str) -> np.ndarray:
    """(seeds, examples) scores of one metric."""
    return np.array([seed[split][metric] for seed in scores], dtype=np.float64)


def test_intervals(scores: Scores) -> dict[str, Interval]:
    return {metric: bootstrap_interval(stacked(scores, "test", metric)) for metric in scores[0]["test"]}


def paired_test(ours: Scores, reference: Scores, metric: str) -> PairedDifference:
    """McNemar on right/wrong answers of single runs; a paired bootstrap otherwise."""
    a, b = stacked(ours, "test", metric), stacked(reference, "test", metric)
    if metric.startswith("acc:") and a.shape[0] == b.shape[0] == 1:
        return mcnemar_exact(a[0].astype(bool), b[0].astype(bool))
    return paired_bootstrap(a, b)


def results_table(title: str, rows: dict[str, dict[str, Interval]], choices: dict[str, Choice],
                  tests: dict[str, dict[str, PairedDifference]]) -> Table:  # fmt: skip
    """Mean and 95% interval per chosen configuration and metric, and its paired difference to the
    reference method (marked * only when the test and the interval both say it differs)."""
    metrics = list(next(iter(rows.values())))
    table = Table(title=title, title_justify="left", caption_justify="left")
    table.add_column("model")
    for metric in metrics:
        table.add_column(column_label(metric), justify="right")
    for name, intervals in rows.items():
        choice = choices.get(name)
        label = name if choice is None else f"{name}\nlr {choice.lr:g}" + ("" if choice.qualified else " (!)")
        cells = []
        for metric in metrics:
            interval, test = intervals[metric], tests.get(name, {}).get(metric)
            if metric.startswith("acc:"):
                cell = f"{interval.mean:.0%}\n[{interval.low:.0%}, {interval.high:.0%}]"
                change = f"{100 * test.difference:+.0f} pts" if test is not None else ""
            else:
                cell = f"{interval.mean:.3g}\n[{interval.low:.3g}, {interval.high:.3g}]"
                change = f"{test.difference:+.2g}" if test is not None else ""
            if test is not None:
                cell += f"\nΔ {change} p={test.p_value:.2g}{' *' if test.significant else ''}"
            cells.append(cell)
        table.add_row(label, *cells)
    return table


def column_label(metric: str) -> str:
    """`forget_nll` -> "forget NLL", `acc:forget_mcq_cloze` -> "forget_mcq acc"."""
    if metric.startswith("acc:"):
        return metric.removeprefix("acc:").removesuffix("_cloze") + " acc"
    return metric.replace("_nll", " NLL")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def results_rows(rows: dict[str, dict[str, Interval]], tests: dict[str, dict[str, PairedDifference]]) -> list[dict[str, Any]]:
    out = []
    for name, intervals in rows.items():
        for metric, interval in intervals.items():
            test = tests.get(name, {}).get(metric)
            out.append({"model": name, "metric": metric, **asdict(interval),
                        "difference": test.difference if test else "", "p_value": test.p_value if test else "",
                        "test": test.test if test else "", "significant": test.significant if test else ""})  # fmt: skip
    return out


def pareto(path: Path, points: list[dict[str, Any]]) -> list[Path]:
    """Utility (x, retain NLL) against constraint (y, forget NLL) on validation, one point per configuration
    with its interval, chosen points ringed; PNG and the CSV it was drawn from."""
    write_csv(path.with_suffix(".csv"), points)
    figure = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(figure)
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
    axes.set_xlabel("retain NLL, validation (utility: lower is better)")
    axes.set_ylabel("forget NLL, validation (constraint: higher is better)")
    axes.set_title("each configuration (lr labelled), chosen ones ringed")
    axes.legend(fontsize=8)
    figure.tight_layout()
    write_with(path.with_suffix(".png"), lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    return [path.with_suffix(".png"), path.with_suffix(".csv")]


def curves(path: Path, curves_by_method: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """loss_f and loss_g per step of each chosen configuration (mean over its seeds); PNG and CSV."""
    rows = [{"method": method, "step": int(step), "loss_f": float(f), "loss_g": float(g)}
            for method, curve in curves_by_method.items() for step, f, g in zip(curve["step"], curve["loss_f"], curve["loss_g"])]  # fmt: skip
    write_csv(path.with_suffix(".csv"), rows)
    figure = Figure(figsize=(9.6, 3.6))
    FigureCanvasAgg(figure)
    for column, (key, label) in enumerate((("loss_f", "f (keep)"), ("loss_g", "g (constraint)"))):
        axes = figure.add_subplot(1, 2, column + 1)
        for method, curve in curves_by_method.items():
            axes.plot(curve["step"], curve[key], label=method)
        axes.set_xlabel("step")
        axes.set_title(label)
        axes.legend(fontsize=8)
    figure.tight_layout()
    write_with(path.with_suffix(".png"), lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    return [path.with_suffix(".png"), path.with_suffix(".csv")]
