"""`sift bench toy`: trade-off fronts of SIFT and Muon on small constrained problems, over seeds.

A comparison at one value of each method's trade-off knob compares one point of each front, and which
point depends on the grid. Here each method sweeps its own knob with the learning rate (Muon: `lam`, the
weight of f; SIFT: the gate's threshold `eps`), every run is read at several checkpoints (early stopping is a
point of the front too), and the fronts are compared where it matters: the f (utility loss) each method
needs to bring g (the constraint loss) below levels fixed in advance, as fractions of g at the start.

Each seed draws a new problem (data seed) and a new batch order. Three readings, all paired by seed:
- front: per seed, the best f among all points that reach the level; SIFT / Muon as a log-ratio with an
  exact sign-flip test over the seeds where both reach it, Holm-adjusted over the levels;
- chosen: per level, each method's configuration and checkpoint chosen on the first half of the seeds
  (lowest mean f with mean g at the level), then scored on the other half, so the choice does not
  flatter the report;
- area: the hypervolume (moocore) each front dominates in (f, g) / g_start up to (1, 1).
The problems differ in how much f and g share: the same inputs (opposed), half of them (toy) or none
(disjoint: the gate opens on the hidden layers only), which decides how often SIFT's gate opens; the
gate's firing rate is printed. A choice at the end of its grid is marked: that front may go on.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import moocore
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from sift_cli.compare.stats import holm, seed_sign_flip
from sift_cli.engine import OptimizerConfig, SiftOptimizer

PROBLEMS = {"opposed": (0, 32, 0, 32), "toy": (0, 24, 8, 32), "disjoint": (0, 16, 16, 32)}
"""Input dims [lo, hi) of the retain (f) and forget (g) inputs: shared dims are where f and g pull the
same weights apart. With disjoint inputs the first layer's two gradients touch different columns (cosine
0: its gate never opens) and only the hidden layers conflict."""
LEVELS = (0.5, 0.2, 0.1, 0.05)
"""g levels, as fractions of g at the start, fixed before any run."""
LRS = (3e-3, 1e-2, 3e-2, 1e-1)
KNOBS = {"muon": {"lam": (1.0, 8.0, 64.0, 512.0)}, "sift": {"eps": (-0.1, -0.3, -0.6, -0.9)}}
"""Each method's own trade-off knob, crossed with LRS; both get the same number of configurations."""
CHECKPOINTS = (0.25, 0.5, 1.0)
"""Shares of the steps at which every run is read."""


class ToyProblem:
    """An unlearning-shaped toy: a pretrained MLP must keep its outputs on retain inputs (f) while
    mapping forget inputs to a fixed control vector (g)."""

    d_in, hidden, d_out, n_samples, batch = 32, 64, 16, 512, 64

    def __init__(self, name: str, data_seed: int, order_seed: int) -> None:
        r_lo, r_hi, f_lo, f_hi = PROBLEMS[name]
        gen = torch.Generator().manual_seed(data_seed)
        with torch.random.fork_rng():
            torch.manual_seed(data_seed)
            self.teacher = nn.Sequential(
                nn.Linear(self.d_in, self.hidden), nn.Tanh(), nn.Linear(self.hidden, self.hidden), nn.Tanh(), nn.Linear(self.hidden, self.d_out)
            )
        self.teacher.requires_grad_(False)
        self.x_retain = self._inputs(gen, r_lo, r_hi)
        self.x_forget = self._inputs(gen, f_lo, f_hi)
        self.y_retain = self.teacher(self.x_retain)
        control = torch.randn(self.d_out, generator=gen)
        self.y_forget = 2.0 * control / control.norm()
        order = torch.Generator().manual_seed(order_seed)
        self.batches = torch.randint(0, self.n_samples, (10_000, 2, self.batch), generator=order)

    def _inputs(self, gen: torch.Generator, lo: int, hi: int) -> Tensor:
        x = torch.zeros(self.n_samples, self.d_in)
        x[:, lo:hi] = torch.randn(self.n_samples, hi - lo, generator=gen)
        return x

    def losses(self, model: nn.Module, step: int | None = None) -> tuple[Tensor, Tensor]:
        """(f, g) on a minibatch of `step`'s index stream, or on all samples when step is None."""
        if step is None:
            x_r, y_r, x_f = self.x_retain, self.y_retain, self.x_forget
        else:
            i_r, i_f = self.batches[step % len(self.batches)]
            x_r, y_r, x_f = self.x_retain[i_r], self.y_retain[i_r], self.x_forget[i_f]
        f = nn.functional.mse_loss(model(x_r), y_r)
        g = nn.functional.mse_loss(model(x_f), self.y_forget.expand(len(x_f), -1))
        return f, g


@dataclass(frozen=True)
class Config:
    method: str
    lr: float
    knob: str
    value: float

    @property
    def label(self) -> str:
        ((_, values),) = KNOBS[self.method].items()
        edge = " (edge)" if self.lr in (min(LRS), max(LRS)) or self.value in (min(values), max(values)) else ""
        return f"lr {self.lr:g}, {self.knob} {self.value:g}{edge}"

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(method=self.method, lr=self.lr, **{self.knob: self.value})


def configs(method: str) -> list[Config]:
    ((knob, values),) = KNOBS[method].items()
    return [Config(method, lr, knob, value) for lr, value in itertools.product(LRS, values)]


def train_points(problem: ToyProblem, config: Config, steps: int) -> tuple[list[tuple[int, float, float]], float]:
    """(step, f, g) on all samples at each checkpoint, and the share of block-steps that took SIFT's branch."""
    model = copy.deepcopy(problem.teacher).requires_grad_(True)
    opt = SiftOptimizer(list(model.named_parameters()), config.optimizer())
    marks = sorted({max(1, round(share * steps)) for share in CHECKPOINTS})
    points, fired, blocks = [], 0, 0
    for step in range(steps):
        f, g = problem.losses(model, step)
        f.backward()
        opt.capture("f")
        g.backward()
        opt.capture("g")
        report = opt.step()
        fired += report.n_sift
        blocks += sum(1 for block in report.blocks if block.branch in ("sift", "muon"))
        if step + 1 in marks:
            with torch.no_grad():
                f_all, g_all = problem.losses(model)
            points.append((step + 1, float(f_all), float(g_all)))
    return points, fired / max(blocks, 1)


@dataclass
class SeedRuns:
    """Every (config, checkpoint) point of one seed, g normalized by its start."""

    g_start: float
    points: dict[tuple[Config, int], tuple[float, float]]


def run_seed(name: str, seed: int, steps: int, methods: Sequence[str]) -> tuple[SeedRuns, dict[Config, float]]:
    problem = ToyProblem(name, data_seed=seed, order_seed=10_000 + seed)
    with torch.no_grad():
        g_start = float(problem.losses(problem.teacher)[1])
    points, firing = {}, {}
    for method in methods:
        for config in configs(method):
            found, firing[config] = train_points(problem, config, steps)
            for step, f, g in found:
                points[(config, step)] = (f, g / g_start)
    return SeedRuns(g_start, points), firing


def best_f(runs: SeedRuns, method: str, level: float) -> float:
    """The lowest f among the method's points whose g is at most `level` (inf: the level was not reached)."""
    found = [f for (config, _), (f, g) in runs.points.items() if config.method == method and g <= level and math.isfinite(f)]
    return min(found, default=math.inf)


def area(runs: SeedRuns, method: str) -> float:
    """Hypervolume dominated by the method's points in (f / g_start, g / g_start) up to (1, 1)."""
    pts = np.array([(f / runs.g_start, g) for (config, _), (f, g) in runs.points.items() if config.method == method and math.isfinite(f + g)])
    pts = pts[(pts[:, 0] < 1.0) & (pts[:, 1] < 1.0)] if len(pts) else pts
    return float(moocore.hypervolume(pts, ref=np.array([1.0, 1.0]))) if len(pts) else 0.0


def chosen_on(selection: list[SeedRuns], method: str, level: float) -> tuple[Config, int] | None:
    """The method's (config, checkpoint) with the lowest mean f among those whose mean g reaches `level`
    on the selection seeds."""
    keys = [key for key in selection[0].points if key[0].method == method]
    candidates = []
    for key in keys:
        f = np.mean([runs.points[key][0] for runs in selection])
        g = np.mean([runs.points[key][1] for runs in selection])
        if math.isfinite(f) and g <= level:
            candidates.append((f, key))
    return min(candidates, key=lambda item: item[0])[1] if candidates else None


def log_ratio_test(ours: list[float], theirs: list[float]) -> dict[str, float | int | None]:
    """Paired log(ours / theirs) over seeds where both are finite: median, share of seeds ours is lower,
    exact two-sided sign-flip p."""
    pairs = [(a, b) for a, b in zip(ours, theirs) if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0]
    ratios = np.log([a / b for a, b in pairs]) if pairs else np.array([])
    p, floor = seed_sign_flip(ratios) if len(ratios) else (None, None)
    return {"seeds": len(pairs), "ratio": float(np.exp(np.median(ratios))) if len(ratios) else None,
            "lower": int(np.sum(ratios < 0)), "p": p, "floor": floor}  # fmt: skip


def run_front_bench(
    problems: Sequence[str] = ("toy", "disjoint"), seeds: int = 8, steps: int = 100, console: Console | None = None
) -> dict[str, dict]:
    """Every configuration of SIFT and Muon on every seed of each problem; prints one table per problem
    and returns its numbers."""
    console = console or Console()
    results = {}
    for name in problems:
        per_seed: list[SeedRuns] = []
        firing: dict[Config, list[float]] = {}
        with console.status(f"{name}: training") as status:
            for seed in range(seeds):
                status.update(f"{name}: seed {seed + 1}/{seeds}, {len(configs('sift')) + len(configs('muon'))} configurations")
                runs, rates = run_seed(name, seed, steps, ("sift", "muon"))
                per_seed.append(runs)
                for config, rate in rates.items():
                    firing.setdefault(config, []).append(rate)
        results[name] = _analyse(per_seed, firing)
        console.print(_table(name, seeds, steps, results[name]))
    return results


def _analyse(per_seed: list[SeedRuns], firing: dict[Config, list[float]]) -> dict:
    half = len(per_seed) // 2
    selection, report = per_seed[:half], per_seed[half:]
    levels = {}
    for level in LEVELS:
        front = log_ratio_test([best_f(r, "sift", level) for r in per_seed], [best_f(r, "muon", level) for r in per_seed])
        picks = {method: chosen_on(selection, method, level) for method in ("sift", "muon")}
        chosen: dict[str, object] = {"sift": None, "muon": None, "test": None}
        if all(picks.values()):
            scored = {method: [r.points[key] for r in report] for method, key in picks.items()}  # type: ignore[index]
            chosen = {
                **{method: {"config": f"{key[0].label}, step {key[1]}", "reached": sum(g <= level for _, g in scored[method])}  # type: ignore[index]
                   for method, key in picks.items()},  # fmt: skip
                "test": log_ratio_test([f for f, _ in scored["sift"]], [f for f, _ in scored["muon"]]),
            }
        levels[level] = {"front": front, "chosen": chosen}
    for tests in ([found["front"] for found in levels.values()], [found["chosen"]["test"] for found in levels.values()]):
        adjusted = holm([None if test is None else test["p"] for test in tests])
        for test, p in zip(tests, adjusted):
            if test is not None:
                test["p_holm"] = p
    areas = {method: [area(r, method) for r in per_seed] for method in ("sift", "muon")}
    diff = np.array(areas["sift"]) - np.array(areas["muon"])
    area_p, area_floor = seed_sign_flip(diff)
    sift_rates = [rate for config, rates in firing.items() if config.method == "sift" for rate in rates]
    by_eps = {config.value: float(np.mean(rates)) for config, rates in firing.items() if config.method == "sift"}
    return {
        "levels": levels,
        "area": {"sift": float(np.mean(areas["sift"])), "muon": float(np.mean(areas["muon"])), "sift_larger": int(np.sum(diff > 0)),
                 "p": area_p, "floor": area_floor},  # fmt: skip
        "gate_firing": {"mean": float(np.mean(sift_rates)), "by_eps": by_eps},
        "selection_seeds": half,
        "report_seeds": len(per_seed) - half,
    }


def _table(name: str, seeds: int, steps: int, result: dict) -> Table:
    firing = ", ".join(f"eps {eps:g}: {rate:.0%}" for eps, rate in sorted(result["gate_firing"]["by_eps"].items(), reverse=True))
    table = Table(
        title=f"{name}: SIFT vs Muon fronts, {seeds} seeds, {steps} steps; SIFT's gate open on {firing} of block-steps",
        title_justify="left",
        caption_justify="left",
    )
    for column in ("g ≤ (share of start)", "front: f SIFT/Muon", "seeds SIFT lower", "p", "chosen SIFT", "chosen Muon", "chosen: f SIFT/Muon", "p "):
        table.add_column(column, justify="left" if column.startswith("chosen S") or column.startswith("chosen M") else "right")
    for level, found in result["levels"].items():
        front, chosen = found["front"], found["chosen"]
        test = chosen["test"]
        table.add_row(
            f"{level:g}",
            _ratio(front["ratio"]),
            f"{front['lower']}/{front['seeds']}",
            _p(front["p_holm"]),
            "not reached" if chosen["sift"] is None else f"{chosen['sift']['config']} (g reached {chosen['sift']['reached']}/{result['report_seeds']})",
            "not reached" if chosen["muon"] is None else f"{chosen['muon']['config']} (g reached {chosen['muon']['reached']}/{result['report_seeds']})",
            "" if test is None else f"{_ratio(test['ratio'])} ({test['lower']}/{test['seeds']} lower)",
            "" if test is None else _p(test["p_holm"]),
        )
    area = result["area"]
    table.caption = (
        f"front: per seed, the lowest f of any configuration and checkpoint reaching the g level; ratio = median over seeds where "
        f"both reach it; p: exact sign-flip over those seeds (smallest possible 2/2^seeds), Holm-adjusted over the levels. chosen: configuration picked on "
        f"{result['selection_seeds']} selection seeds, scored on {result['report_seeds']} fresh ones. area dominated up to "
        f"(f, g) = (1, 1) x g_start: SIFT {area['sift']:.3f}, Muon {area['muon']:.3f}, SIFT larger on {area['sift_larger']}/{seeds} "
        f"seeds, p={_p(area['p'])}. Grids: lr {', '.join(f'{lr:g}' for lr in LRS)} x Muon lam "
        f"{', '.join(f'{v:g}' for v in KNOBS['muon']['lam'])} / SIFT eps {', '.join(f'{v:g}' for v in KNOBS['sift']['eps'])}"
    )
    return table


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"
