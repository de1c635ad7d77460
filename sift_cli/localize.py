"""Where in the network and when in training f and g conflict, read back from a run directory.

`sift localize` turns the alignment log into the paper's Figure 2 (steps x layers heatmap of tau with
the conflict counts on the margins and a marker where SIFT fired), the same per component, the
temporal/spatial sparsity of the SIFT branch, and the effective rank of the momenta when `train`
logged their singular values. It reads only the run directory, so it works on a run that is still
training: every number is recomputed from whatever the logs hold now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sift_cli.errors import SiftError
from sift_cli.output import summary
from sift_cli.store.atomic import write_text, write_with
from sift_cli.store.places import check_output_place
from sift_cli.store.rundir import ALIGNMENT, SPEC, TRAINER_SETTINGS, RunDir

ENERGY_LEVELS = (0.90, 0.95, 0.99)
COMPONENT_ORDER = ("q", "k", "v", "qkv", "qkv.q", "qkv.k", "qkv.v", "o", "gate", "up", "down")
OTHER_LAYER = -1
MAX_ROW_LABELS = 40
HEAT_WIDTH_IN = 11.0
TOP_ROWS = 5


@dataclass(frozen=True)
class RunLog:
    """One run's settings and logs; the alignment log gains the two flags every count is built from:
    `conflict` (tau < eps, NaN tau never conflicts) and `fired` (the block took the SIFT branch)."""

    name: str
    run: RunDir
    eps: float
    method: str
    tau_source: str
    total_steps: int | None
    k: int | None
    alignment: pd.DataFrame
    spectra: pd.DataFrame

    @property
    def steps_logged(self) -> int:
        return int(self.alignment["step"].nunique())

    def progress(self) -> str:
        """'1000 steps', or '437 of 1000 steps' for a run that is still training or was stopped."""
        logged = self.steps_logged
        if self.total_steps and logged < self.total_steps:
            return f"{logged} of {self.total_steps} steps"
        return f"{logged} steps"


@dataclass(frozen=True)
class RunStats:
    """The per-step, per-block and per-layer counts that the CSVs, the margins and the summary share."""

    steps: pd.DataFrame
    blocks: pd.DataFrame
    layers: pd.DataFrame
    sparsity: dict[str, Any]
    subspace: pd.DataFrame


@dataclass(frozen=True)
class Heatmap:
    """A steps x rows tau matrix and its margins, ready to draw (rows are layers or layer.component)."""

    tau: pd.DataFrame
    fired: pd.DataFrame
    conflicts_per_step: pd.Series
    n_blocks: int
    conflicts_per_row: pd.Series
    row_labels: list[str]
    row_groups: list[str]
    row_title: str
    tau_label: str
    title: str


def localize(run_dirs: list[Path], output: Path | None = None, console: Console | None = None) -> dict:
    """Write the plots and CSVs of every run, compare their sparsity, and print a summary.

    Each run's files go to `<run>/plots/`, or to `<output>/<run name>/` when `output` is given; the
    cross-run comparison (several runs only) goes to `output`, or to every run's plots directory so
    that each run can be read next to the ones it was compared with.
    """
    if not run_dirs:
        raise SiftError("no run directory given; pass one or more `sift train` output directories")
    if output is not None:
        check_output_place(output)
        if output.exists() and not output.is_dir():
            raise SiftError(f"--output {output} is a file; pass a directory for the plots")
    console = console or Console()
    logs = [load_run(Path(path), name) for path, name in zip(run_dirs, run_names(run_dirs))]
    results = []
    for log in logs:
        stats = run_stats(log)
        out = output / log.name if output else log.run.plots_dir
        files = write_run(log, stats, out)
        results.append(
            {
                "name": log.name,
                "run_dir": str(log.run.path),
                "plots_dir": str(out),
                "files": files,
                "sparsity": stats.sparsity,
            }
        )
        print_run_summary(console, log, stats, out)
    comparison = []
    if len(logs) > 1:
        sparsity = pd.DataFrame([result["sparsity"] for result in results])
        targets = [output] if output else [log.run.plots_dir for log in logs]
        for target in targets:
            comparison += write_sparsity(sparsity, target, "sparsity_comparison", "runs compared")
        print_comparison(console, sparsity)
    return {"runs": results, "comparison": comparison}


def run_names(paths: list[Path]) -> list[str]:
    """Directory names, prefixed by their parent's where two runs share one (a/run, b/run -> a-run, b-run)."""
    resolved = [Path(p).resolve() for p in paths]
    names = [p.name for p in resolved]
    return [f"{p.parent.name}-{p.name}" if names.count(p.name) > 1 else p.name for p in resolved]


def run_settings(path: Path) -> tuple[RunDir, dict[str, Any], int | None]:
    """The run (a `sift train` run directory, or a `SiftTrainer` output directory), its optimizer
    settings and its planned steps."""
    trainer_settings = Path(path) / TRAINER_SETTINGS
    if not (Path(path) / SPEC).is_file() and trainer_settings.is_file():
        try:
            settings = json.loads(trainer_settings.read_text(encoding="utf-8"))
            return RunDir(Path(path)), dict(settings["optim"]), int(settings["steps"])
        except (ValueError, KeyError, TypeError):
            raise SiftError(f"{trainer_settings} is damaged; it is rewritten when the SiftTrainer run is resumed") from None
    run = RunDir.open(path)
    spec = run.load_spec()
    return run, vars(spec.optim), spec.train.steps


def load_run(path: Path, name: str) -> RunLog:
    run, optim, steps = run_settings(path)
    alignment = run.read_alignment()
    if alignment.empty:
        raise SiftError(
            f"{path} has no alignment records ({ALIGNMENT} is missing or empty); "
            "wait until `sift train` has logged a step, or pass another run"
        )
    alignment["tau"] = pd.to_numeric(alignment["tau"], errors="coerce")
    alignment["component"] = alignment["component"].astype(str)
    alignment["conflict"] = alignment["tau"] < optim["eps"]
    alignment["fired"] = alignment["branch"].eq("sift")
    return RunLog(
        name=name,
        run=run,
        eps=optim["eps"],
        method=optim["method"],
        tau_source=optim["tau_source"],
        total_steps=steps,
        k=optim["k"],
        alignment=alignment,
        spectra=run.read_spectra(),
    )


def run_stats(log: RunLog) -> RunStats:
    align = log.alignment
    return RunStats(
        steps=step_stats(align),
        blocks=group_stats(align, ["block", "layer", "component"]),
        layers=group_stats(align, ["layer"]),
        sparsity=sparsity_row(log),
        subspace=subspace_stats(align),
    )


def write_run(log: RunLog, stats: RunStats, out: Path) -> list[str]:
    """All of one run's files; returns their paths so the CLI can list them."""
    out.mkdir(parents=True, exist_ok=True)
    align = log.alignment
    files = [
        write_csv(stats.steps, out / "steps.csv"),
        write_csv(stats.blocks.sort_values(["layer", "component", "block"]), out / "blocks.csv"),
        write_csv(stats.layers, out / "layers.csv"),
    ]
    files += write_heatmap(layer_heatmap(log, stats), log.eps, out / "tau_layers")
    if has_component_detail(align):
        components = group_stats(align, ["layer", "component"])
        files += write_heatmap(component_heatmap(log, stats, components), log.eps, out / "tau_components")
    files += write_sparsity(pd.DataFrame([stats.sparsity]), out, "sparsity", log.name)
    if not stats.subspace.empty:
        files.append(write_csv(stats.subspace, out / "subspace.csv"))
    if not log.spectra.empty:
        ranks = effective_ranks(log.spectra)
        files.append(write_csv(ranks, out / "effective_rank.csv"))
        files.append(save_figure(effective_rank_figure(ranks, log), out / "effective_rank.png"))
    return files


def step_stats(align: pd.DataFrame) -> pd.DataFrame:
    """Per step: how many blocks conflicted (tau < eps) and how many took the SIFT branch."""
    grouped = align.groupby("step")
    return pd.DataFrame(
        {
            "blocks": grouped["block"].size(),
            "conflict_blocks": grouped["conflict"].sum().astype(int),
            "sift_blocks": grouped["fired"].sum().astype(int),
            "min_tau": grouped["tau"].min(),
            "mean_tau": grouped["tau"].mean(),
        }
    ).reset_index()


def group_stats(align: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of blocks: on how many steps at least one of them conflicted / took the SIFT branch."""
    per_step = align.groupby(by + ["step"]).agg(conflict=("conflict", "any"), fired=("fired", "any"))
    counts = per_step.groupby(level=by).agg(
        steps=("conflict", "size"), conflict_steps=("conflict", "sum"), sift_steps=("fired", "sum")
    )
    grouped = align.groupby(by)
    stats = counts.assign(
        blocks=grouped["block"].nunique(), mean_tau=grouped["tau"].mean(), min_tau=grouped["tau"].min()
    )
    columns = ["blocks", "steps", "conflict_steps", "sift_steps", "mean_tau", "min_tau"]
    return stats[columns].reset_index()


def subspace_stats(align: pd.DataFrame) -> pd.DataFrame:
    """Per component, over the SIFT steps of the fast path: the error estimate's median, p95 and max
    and how often the exact decomposition was taken. Empty when no SIFT step logged an estimate (other
    methods, exact=True logs 0.0, runs written before the estimate was logged)."""
    fired = align[align["fired"] & align["subspace_error"].notna()]
    if fired.empty:
        return pd.DataFrame()
    grouped = fired.groupby("component")["subspace_error"]
    return pd.DataFrame(
        {
            "sift_records": grouped.size(),
            "median_error": grouped.median(),
            "p95_error": grouped.quantile(0.95),
            "max_error": grouped.max(),
            "fallbacks": fired.groupby("component")["subspace_fallback"].sum().astype(int),
        }
    ).reset_index()


def has_component_detail(align: pd.DataFrame) -> bool:
    """Whether a component view adds anything: some layer holds more than one kind of block."""
    return len(align[["layer", "component"]].drop_duplicates()) > align["layer"].nunique()


def layer_heatmap(log: RunLog, stats: RunStats) -> Heatmap:
    """Min tau per (step, layer): a cell is below eps exactly when one of the layer's blocks conflicted."""
    layers = stats.layers
    layer_order = sorted(layers["layer"], key=layer_rank)
    labels = [str(layer) for layer in layer_order]
    key = log.alignment["layer"].astype(str)
    return Heatmap(
        tau=tau_matrix(log.alignment, key, labels),
        fired=fired_matrix(log.alignment, key, labels),
        conflicts_per_step=stats.steps.set_index("step")["conflict_blocks"],
        n_blocks=len(stats.blocks),
        conflicts_per_row=layers.set_index(layers["layer"].astype(str))["conflict_steps"].reindex(labels),
        row_labels=[layer_label(layer) for layer in layer_order],
        row_groups=labels,
        row_title="layer",
        tau_label="min τ over the layer's blocks",
        title=figure_title(log, "alignment τ per step and layer"),
    )


def component_heatmap(log: RunLog, stats: RunStats, components: pd.DataFrame) -> Heatmap:
    """Min tau per (step, layer.component); min only matters where blocks share a label (e.g. MoE)."""
    rank = {
        i: (layer_rank(layer), component_rank(comp))
        for i, layer, comp in components[["layer", "component"]].itertuples()
    }
    ordered = components.loc[sorted(components.index, key=rank.__getitem__)]
    labels = component_keys(ordered).tolist()
    keys = component_keys(log.alignment)
    return Heatmap(
        tau=tau_matrix(log.alignment, keys, labels),
        fired=fired_matrix(log.alignment, keys, labels),
        conflicts_per_step=stats.steps.set_index("step")["conflict_blocks"],
        n_blocks=len(stats.blocks),
        conflicts_per_row=pd.Series(ordered["conflict_steps"].to_numpy(), index=labels),
        row_labels=[f"{layer_label(layer)}.{comp}" for layer, comp in zip(ordered["layer"], ordered["component"])],
        row_groups=[layer_label(layer) for layer in ordered["layer"]],
        row_title=component_row_title(ordered["component"]),
        tau_label="τ per block (min if blocks share a label)",
        title=figure_title(log, "alignment τ per step and component"),
    )


def component_row_title(components: pd.Series) -> str:
    """Rows are labelled one by one when they fit; past that only layers are, so name the order."""
    if len(components) <= MAX_ROW_LABELS:
        return "layer.component"
    order = sorted(set(components), key=component_rank)
    return f"layer (rows within a layer: {', '.join(order)})"


def component_keys(frame: pd.DataFrame) -> pd.Series:
    return frame["layer"].astype(str) + "." + frame["component"]


def component_rank(component: str) -> tuple[int, str]:
    """Attention before MLP, in the order the forward pass meets them; unknown modules last."""
    if component in COMPONENT_ORDER:
        return COMPONENT_ORDER.index(component), ""
    return len(COMPONENT_ORDER), component


def layer_rank(layer: int) -> tuple[bool, int]:
    """Blocks outside the layer stack go after the last layer."""
    return layer == OTHER_LAYER, layer


def layer_label(layer: int) -> str:
    return "other" if layer == OTHER_LAYER else str(layer)


def tau_matrix(align: pd.DataFrame, key: pd.Series, labels: list[str]) -> pd.DataFrame:
    matrix = align.groupby([align["step"], key.rename("row")])["tau"].min().unstack("row")
    return matrix.reindex(columns=labels)


def fired_matrix(align: pd.DataFrame, key: pd.Series, labels: list[str]) -> pd.DataFrame:
    matrix = align.groupby([align["step"], key.rename("row")])["fired"].any().unstack("row", fill_value=False)
    return matrix.reindex(columns=labels, fill_value=False)


def figure_title(log: RunLog, what: str) -> str:
    settings = f"method {log.method}, ε = {log.eps:g}, τ from {log.tau_source}, {log.progress()}"
    return f"{log.name}: {what}   ({settings})"


def write_heatmap(heatmap: Heatmap, eps: float, stem: Path) -> list[str]:
    """The plotted matrix as CSV (steps as rows, one column per heatmap row) and the figure.

    Six decimals are far below what a colour shows and halve the size of a 1000 x 210 matrix.
    """
    matrix = heatmap.tau.round(6).rename_axis(columns=None).reset_index()
    csv = write_csv(matrix, stem.with_suffix(".csv"))
    return [csv, save_figure(heatmap_figure(heatmap, eps), stem.with_suffix(".png"))]


def heatmap_figure(heatmap: Heatmap, eps: float) -> Figure:
    """Figure 2's layout: tau heatmap, conflicts per step on top, per row on the right, SIFT markers."""
    n_rows = len(heatmap.row_labels)
    heat_height = float(np.clip(0.22 * n_rows, 3.0, 10.0))
    fig = Figure(figsize=(14, heat_height + 2.4), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[1.4, heat_height], width_ratios=[1, 0.13, 0.02])
    ax = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    right = fig.add_subplot(grid[1, 1], sharey=ax)
    corner = fig.add_subplot(grid[0, 1:])
    steps = heatmap.tau.index.to_numpy()
    x_edges = cell_edges(steps)
    mesh = ax.pcolormesh(
        x_edges,
        np.arange(n_rows + 1) - 0.5,
        np.ma.masked_invalid(heatmap.tau.to_numpy(dtype=float).T),
        cmap=diverging_cmap(),
        norm=symmetric_norm(heatmap.tau, eps),
        shading="flat",
    )
    mesh.set_in_layout(False)
    draw_markers(ax, heatmap, steps, heat_height)
    label_rows(ax, heatmap)
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(step_locator())
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_ylim(-0.5, n_rows - 0.5)
    per_step = heatmap.conflicts_per_step.reindex(steps, fill_value=0).to_numpy()
    top.stairs(per_step, x_edges, fill=True, color="#b2182b")
    top.set_ylabel(f"blocks with τ < ε\n(of {heatmap.n_blocks})")
    top.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    top.tick_params(labelbottom=False)
    top.set_title(heatmap.title, loc="left", fontsize=11)
    right.barh(np.arange(n_rows), heatmap.conflicts_per_row.fillna(0).to_numpy(), height=0.85, color="#b2182b")
    right.set_xlabel("steps with τ < ε")
    right.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    right.tick_params(labelleft=False)
    colorbar = fig.colorbar(mesh, cax=fig.add_subplot(grid[1, 2]))
    colorbar.set_label(f"{heatmap.tau_label}\nblack line: ε = {eps:g}")
    colorbar.ax.axhline(eps, color="black", linewidth=2)
    draw_legend(corner, heatmap)
    return fig


def step_locator() -> MaxNLocator:
    """Round step ticks (100, 200... not 150, 300...) and never more than a dozen of them."""
    return MaxNLocator(nbins=12, integer=True, steps=[1, 2, 5, 10])


def cell_edges(values: np.ndarray) -> np.ndarray:
    """Cell boundaries halfway between logged steps, so gaps in the log keep their true width."""
    values = values.astype(float)
    if len(values) == 1:
        return np.array([values[0] - 0.5, values[0] + 0.5])
    middle = (values[:-1] + values[1:]) / 2
    first = 2 * values[0] - middle[0]
    last = 2 * values[-1] - middle[-1]
    return np.concatenate([[first], middle, [last]])


def diverging_cmap() -> Colormap:
    """Red for conflict (tau < 0), blue for agreement; grey where a block logged no finite tau."""
    return colormaps["RdBu"].with_extremes(bad="#d9d9d9")


def symmetric_norm(tau: pd.DataFrame, eps: float) -> Normalize:
    """Centred at 0 and no wider than the data, so the small taus of real runs are not washed out."""
    values = tau.to_numpy(dtype=float)
    finite = np.abs(values[np.isfinite(values)])
    bound = max(float(finite.max()) if finite.size else 1.0, abs(eps), 0.05)
    return Normalize(vmin=-min(bound, 1.0), vmax=min(bound, 1.0))


def draw_markers(ax: Axes, heatmap: Heatmap, steps: np.ndarray, heat_height: float) -> None:
    """One dot per (step, row) where SIFT fired: half a cell where cells are large, a fine streak where
    a thousand steps share the axis, so the tau colours stay visible under dense firing."""
    fired = heatmap.fired.to_numpy()
    step_idx, row_idx = np.nonzero(fired)
    if not len(step_idx):
        return
    cell_h = heat_height * 72 / fired.shape[1]
    cell_w = HEAT_WIDTH_IN * 72 / fired.shape[0]
    diameter = float(np.clip(0.5 * min(cell_h, cell_w), 1.8, 9.0))
    dots = ax.scatter(steps[step_idx], row_idx, s=diameter**2, c="black", marker="o", linewidths=0)
    dots.set_in_layout(False)


def label_rows(ax: Axes, heatmap: Heatmap) -> None:
    """Every row labelled when they fit; past that one label per layer, with a line between layers."""
    n_rows = len(heatmap.row_labels)
    ax.set_ylabel(heatmap.row_title)
    if n_rows <= MAX_ROW_LABELS:
        ax.set_yticks(np.arange(n_rows), heatmap.row_labels, fontsize=8 if n_rows > 20 else 9)
        return
    groups = pd.Series(heatmap.row_groups)
    starts = groups.index[groups.ne(groups.shift())].to_numpy()
    if len(starts) == n_rows:
        every = int(np.ceil(n_rows / MAX_ROW_LABELS))
        ax.set_yticks(np.arange(0, n_rows, every), heatmap.row_labels[::every], fontsize=8)
        return
    ends = np.append(starts[1:], n_rows)
    every = int(np.ceil(len(starts) / MAX_ROW_LABELS))
    centres = (starts + ends - 1) / 2
    ax.set_yticks(centres[::every], groups[starts].to_numpy()[::every], fontsize=8)
    for boundary in starts[1:] - 0.5:
        ax.axhline(boundary, color="white", linewidth=0.6)


def draw_legend(ax: Axes, heatmap: Heatmap) -> None:
    ax.axis("off")
    fired = int(heatmap.fired.to_numpy().sum())
    cells = heatmap.fired.size
    marker = Line2D([], [], marker="o", color="black", linestyle="none", markersize=4)
    label = f"SIFT branch fired\n({fired} of {cells} cells)" if fired else "SIFT branch never fired"
    ax.legend(handles=[marker], labels=[label], loc="center", frameon=False, fontsize=9)


def sparsity_row(log: RunLog) -> dict[str, Any]:
    """How rarely the gate triggers: share of steps, of blocks and of (step, block) records.

    Temporal = steps where at least one block fired; spatial = blocks that fired at least once;
    density = all (step, block) records. The same three for tau < eps, which baselines log too.
    """
    align = log.alignment
    row: dict[str, Any] = {
        "run": log.name,
        "method": log.method,
        "eps": log.eps,
        "steps": log.steps_logged,
        "blocks": int(align["block"].nunique()),
    }
    for flag, name in (("fired", "sift"), ("conflict", "conflict")):
        row[f"temporal_{name}"] = float(align.groupby("step")[flag].any().mean())
        row[f"spatial_{name}"] = float(align.groupby("block")[flag].any().mean())
        row[f"density_{name}"] = float(align[flag].mean())
    return row


def write_sparsity(sparsity: pd.DataFrame, out: Path, stem: str, subject: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    csv = write_csv(sparsity, out / f"{stem}.csv")
    return [csv, save_figure(sparsity_figure(sparsity, subject), out / f"{stem}.png")]


def sparsity_figure(sparsity: pd.DataFrame, subject: str) -> Figure:
    """Grouped bars, one colour per run: where SIFT fired (left) and where tau < eps (right)."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    kinds = ("temporal", "spatial", "density")
    captions = ("temporal\n(share of steps)", "spatial\n(share of blocks)", "density\n(share of step×block)")
    width = 0.8 / len(sparsity)
    for ax, flag, title in zip(axes, ("sift", "conflict"), ("SIFT branch fired", "τ < ε (conflict)")):
        for i, row in enumerate(sparsity.itertuples(index=False)):
            values = [getattr(row, f"{kind}_{flag}") for kind in kinds]
            x = np.arange(len(kinds)) - 0.4 + width * (i + 0.5)
            bars = ax.bar(x, values, width=width * 0.92, label=f"{row.run} ({row.method}, ε={row.eps:g})")
            ax.bar_label(bars, labels=[percent(v) for v in values], fontsize=8, padding=2)
        ax.set_xticks(np.arange(len(kinds)), captions)
        ax.set_title(title)
        ax.set_ylim(0, 1.12)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0].set_ylabel("fraction")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"Sparsity of SIFT: {subject}")
    return fig


def percent(value: float) -> str:
    """Whole percents, but one decimal below 10% so a rare branch does not read as 0%."""
    return f"{value:.0%}" if value >= 0.1 or value == 0 else f"{value:.1%}"


def effective_ranks(spectra: pd.DataFrame) -> pd.DataFrame:
    """Smallest K whose top singular values hold 90/95/99% of a momentum's energy (sum of sigma^2)."""
    records = []
    for record in spectra.itertuples(index=False):
        sigma = np.sort(np.abs(np.asarray(record.singular_values, dtype=float)))[::-1]
        row = {"step": record.step, "block": record.block, "momentum": record.momentum, "logged": len(sigma)}
        row.update(energy_ranks(sigma))
        records.append(row)
    frame = pd.DataFrame(records)
    return frame.sort_values(["momentum", "block", "step"]).reset_index(drop=True)


def energy_ranks(sigma: np.ndarray) -> dict[str, float]:
    """NaN for an all-zero momentum, whose energy no K reaches."""
    energy = sigma**2
    total = energy.sum()
    if not total > 0:
        return {level_column(level): np.nan for level in ENERGY_LEVELS}
    share = np.cumsum(energy) / total
    return {
        level_column(level): float(np.searchsorted(share, level - 1e-9) + 1) for level in ENERGY_LEVELS
    }


def level_column(level: float) -> str:
    return f"k{round(level * 100)}"


def effective_rank_figure(ranks: pd.DataFrame, log: RunLog) -> Figure:
    """One panel per momentum: median K over blocks with its interquartile band, per energy level."""
    momenta = sorted(ranks["momentum"].unique())
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, len(momenta), sharey=True, squeeze=False)[0]
    colours = ("#1b9e77", "#d95f02", "#7570b3")
    k_line = log.k if log.k and log.k < ranks["logged"].max() else None
    for ax, momentum in zip(axes, momenta):
        subset = ranks[ranks["momentum"] == momentum]
        n_blocks = subset["block"].nunique()
        for level, colour in zip(ENERGY_LEVELS, colours):
            spread = subset.groupby("step")[level_column(level)].quantile([0.25, 0.5, 0.75]).unstack()
            ax.plot(spread.index, spread[0.5], color=colour, marker="." if len(spread) < 40 else None,
                    label=f"{level:.0%} of Σσ²")
            ax.fill_between(spread.index, spread[0.25], spread[0.75], color=colour, alpha=0.2, linewidth=0)
        if k_line:
            ax.axhline(k_line, color="black", linestyle="--", linewidth=1, label=f"SIFT K = {k_line}")
        ax.set_title(f"momentum of {momentum}: median over {n_blocks} block{'s' * (n_blocks > 1)}, band 25–75%")
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(step_locator())
    drawn = [ranks[level_column(level)].max() for level in ENERGY_LEVELS] + [k_line or 0]
    axes[0].set_ylim(0, 1.05 * np.nanmax(drawn) + 1)
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel(f"effective rank K (of up to {ranks['logged'].max()} singular directions)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"{log.name}: effective rank of the momenta   (method {log.method}, ε = {log.eps:g})")
    return fig


def write_csv(frame: pd.DataFrame, path: Path) -> str:
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    return str(path)


def save_figure(fig: Figure, path: Path) -> str:
    """Agg canvas per figure: no pyplot state, nothing left open after the file is written."""
    FigureCanvasAgg(fig)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return str(path)


def print_run_summary(console: Console, log: RunLog, stats: RunStats, out: Path) -> None:
    sparsity = stats.sparsity
    settings = f"method {log.method} · ε = {log.eps:g} · {log.progress()} · {len(stats.blocks)} blocks"
    console.rule(f"[bold]{escape(log.name)}[/]  {settings}")
    console.print(
        f"SIFT fired on {sparsity['temporal_sift']:.1%} of steps, {sparsity['spatial_sift']:.1%} of blocks, "
        f"{sparsity['density_sift']:.1%} of (step, block) records"
    )
    console.print(
        f"τ < ε on {sparsity['temporal_conflict']:.1%} of steps, {sparsity['spatial_conflict']:.1%} of blocks, "
        f"{sparsity['density_conflict']:.1%} of (step, block) records"
    )
    console.print(top_blocks_table(stats.blocks))
    console.print(top_steps_table(stats.steps))
    if not stats.subspace.empty:
        console.print(subspace_table(stats.subspace))
    summary(console, f"localized {log.name}: plots and CSVs", out)


def top_blocks_table(blocks: pd.DataFrame) -> Table:
    ranked = blocks.sort_values(["conflict_steps", "mean_tau"], ascending=[False, True]).head(TOP_ROWS)
    title = "Top conflicting blocks (most steps with τ < ε, then lowest mean τ)"
    table = Table(title=title, title_justify="left")
    table.add_column("block", overflow="fold")
    for column in ("steps τ<ε", "SIFT steps", "mean τ", "min τ"):
        table.add_column(column, justify="right")
    for row in ranked.itertuples(index=False):
        table.add_row(
            escape(row.block.removesuffix(".weight")),
            f"{row.conflict_steps}/{row.steps}",
            str(row.sift_steps),
            f"{row.mean_tau:.3f}",
            f"{row.min_tau:.3f}",
        )
    return table


def subspace_table(subspace: pd.DataFrame) -> Table:
    title = "Fast SIFT path: estimated error of the top-K direction per component (exact fallbacks)"
    table = Table(title=title, title_justify="left")
    for column in ("component", "SIFT steps", "median", "p95", "max", "fallbacks"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for row in subspace.itertuples(index=False):
        table.add_row(
            escape(row.component),
            str(row.sift_records),
            f"{row.median_error:.2%}",
            f"{row.p95_error:.2%}",
            f"{row.max_error:.2%}",
            str(row.fallbacks),
        )
    return table


def top_steps_table(steps: pd.DataFrame) -> Table:
    ranked = steps.sort_values(["conflict_blocks", "min_tau"], ascending=[False, True]).head(TOP_ROWS)
    table = Table(title="Steps with the most conflicts", title_justify="left")
    for column in ("step", "blocks τ<ε", "SIFT blocks", "min τ"):
        table.add_column(column, justify="right")
    for row in ranked.itertuples(index=False):
        blocks = f"{row.conflict_blocks}/{row.blocks}"
        table.add_row(str(row.step), blocks, str(row.sift_blocks), f"{row.min_tau:.3f}")
    return table


def print_comparison(console: Console, sparsity: pd.DataFrame) -> None:
    table = Table(title="Sparsity across runs (share of steps / blocks / records)", title_justify="left")
    for column in ("run", "method", "ε", "steps", "SIFT fired", "τ < ε"):
        table.add_column(column, justify="left" if column in ("run", "method") else "right")
    for row in sparsity.itertuples(index=False):
        table.add_row(
            escape(row.run),
            row.method,
            f"{row.eps:g}",
            str(row.steps),
            f"{row.temporal_sift:.0%} / {row.spatial_sift:.0%} / {row.density_sift:.1%}",
            f"{row.temporal_conflict:.0%} / {row.spatial_conflict:.0%} / {row.density_conflict:.1%}",
        )
    console.rule("[bold]comparison")
    console.print(table)
