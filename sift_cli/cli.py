"""The `sift` command line: thin wrappers that parse flags and call the modules that do the work."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from sift_cli.errors import SiftError, describe_os_error

app = typer.Typer(
    help="Constrained model steering with SIFT: keep utility (f) while satisfying a constraint (g).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
prepare_app = typer.Typer(help="Build a prepared-data directory for one application.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks, printed as ratios to a baseline measured in the same run.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")
app.add_typer(bench_app, name="bench")

console = Console()
error_console = Console(stderr=True)
LOG_WIDTH = 240
"""Width of output that goes to a file or a pipe: Rich's default there is 80 columns, which cuts table
headers ("optim…") in a log; a terminal keeps its own width."""


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a `SiftError`, or a file-system `OSError`, as one red line and exit 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SiftError as exc:
            error_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except OSError as exc:
            # the one boundary for file-system failures no module foresaw: a full disk, a read-only directory
            error_console.print(f"[red]error:[/red] {escape(describe_os_error(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


@app.callback()
def global_options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also show third-party progress bars, warnings and logs"),
) -> None:
    """Constrained model steering with SIFT: keep utility (f) while satisfying a constraint (g)."""
    from sift_cli.output import configure_output

    configure_output(verbose)
    for stream in (console, error_console):
        if not stream.is_terminal:
            stream.width = LOG_WIDTH


def parse_k(text: str) -> Optional[int]:
    """`--k 128`, or `--k full` (None: full numerical rank, the paper's setting for speech and hallucination)."""
    if text.lower() in ("full", "none", "null"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise SiftError(f"--k {text!r} is not a number; pass a positive integer or 'full'") from None
    if value < 1:
        raise SiftError(f"--k {value} must be at least 1 (or 'full')")
    return value


@app.command()
@user_errors
def train(
    app_name: Optional[str] = typer.Option(None, "--app", help="unlearning, hallucination, safety or speech"),
    preset: Optional[str] = typer.Option(None, help="a preset from configs/presets (default: <app>_cpu)"),
    config: Optional[Path] = typer.Option(None, "--config", help="your own YAML spec; flags override it"),
    method: Optional[str] = typer.Option(None, help="sift, muon, adamw or blur"),
    eps: Optional[float] = typer.Option(None, help="SIFT gate: a block takes the SIFT branch when tau < eps"),
    k: Optional[str] = typer.Option(None, "--k", help="top-K subspace size, or 'full'"),
    lr: Optional[float] = typer.Option(None, help="learning rate"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps"),
    model: Optional[str] = typer.Option(None, help="HF hub id or local directory"),
    data: Optional[Path] = typer.Option(None, help="prepared-data directory (with --resume: where the run's data moved)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="run directory to write"),
    assignments: List[str] = typer.Option([], "--set", help="any spec field: --set train.batch_size=8"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved spec, routing and memory; train nothing"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this directory from its last checkpoint"),
    gpu_memory: Optional[str] = typer.Option(None, "--gpu-memory", help="with --dry-run: say whether the run fits one GPU of this size, e.g. 80GiB"),
    processes: Optional[int] = typer.Option(None, "--processes", help="with --dry-run: memory per rank for this many processes (default: the launcher's WORLD_SIZE, or 1)"),
) -> None:
    """Train a model on f (utility) under the constraint g."""
    from sift_cli.spec import resolve_spec

    for flag, value in (("--gpu-memory", gpu_memory), ("--processes", processes)):
        if value is not None and not dry_run:
            raise SiftError(f"{flag} only sizes a --dry-run; add --dry-run, or drop {flag} to train")
    if gpu_memory is not None:
        from sift_cli.memory import parse_size

        parse_size(gpu_memory)  # a bad size is refused before the plan is printed

    if resume is not None:
        fixed = {"--app": app_name, "--preset": preset, "--config": config, "--method": method, "--eps": eps, "--k": k,
                 "--model": model, "--output": output, "--set": assignments or None}  # fmt: skip
        given = [flag for flag, value in fixed.items() if value is not None]
        if given:
            raise SiftError(
                f"--resume continues a run with its own spec and takes only --steps, --lr, --data and --dry-run, not {given[0]}; "
                "start a new run with --output to change other settings"
            )
        _resume(resume, steps=steps, lr=lr, data=data, dry_run=dry_run)
        return
    overrides = {
        "optim.method": method,
        "optim.eps": eps,
        "optim.lr": lr,
        "train.steps": steps,
        "model.name": model,
        "data.path": str(data) if data else None,
        "output": str(output) if output else None,
    }
    if k is not None:
        k_value = parse_k(k)
        assignments = [f"optim.k={'null' if k_value is None else k_value}", *assignments]
    spec = resolve_spec(app=app_name, preset=preset, config=config, overrides=overrides, assignments=assignments)
    if dry_run:
        import os

        from sift_cli.memory import print_memory
        from sift_cli.training.plan import print_dry_run

        count = processes if processes is not None else int(os.environ.get("WORLD_SIZE", "1") or 1)
        if count < 1:
            raise SiftError(f"--processes {count} must be at least 1")
        print_memory(spec, print_dry_run(spec, console), console, gpu_memory, count)
        return
    from sift_cli import api

    api.train(spec, console=console)


def _resume(path: Path, steps: Optional[int], lr: Optional[float], data: Optional[Path], dry_run: bool) -> None:
    """`sift train --resume`: continue a run, with more steps, a new learning rate or its moved data if
    asked; a dry run prints what would happen and writes nothing."""
    from sift_cli import api
    from sift_cli.store.rundir import RunDir
    from sift_cli.training import latest_checkpoint, resume_changes

    if not dry_run:
        api.resume(path, steps=steps, lr=lr, data=data, console=console)
        return
    from sift_cli.training.plan import print_dry_run

    run = RunDir.open(path)
    spec, changes = resume_changes(run.load_spec(), steps=steps, lr=lr, data=data)
    print_dry_run(spec, console)
    checkpoint = latest_checkpoint(run)
    changed = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items()) or "nothing"
    console.print(f"would resume {run.path} from {checkpoint.name if checkpoint else 'the start'}, changing {changed}")


@app.command()
@user_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory written by `sift train`"),
    tasks: Optional[str] = typer.Option(None, help="comma-separated lm-eval task names or local task files"),
    limit: Optional[int] = typer.Option(None, help="evaluate at most this many examples per task"),
    batch_size: int = typer.Option(8, help="evaluation batch size"),
) -> None:
    """Evaluate a trained run: the app's metrics and lm-eval utility tasks, written to run_dir/eval/."""
    from sift_cli import api

    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    api.evaluate(run_dir, tasks=task_list, limit=limit, batch_size=batch_size, console=console)


@app.command()
@user_errors
def localize(
    run_dirs: List[Path] = typer.Argument(..., help="one or more run directories"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write plots here instead of run_dir/plots"),
) -> None:
    """Where and when f and g conflicted: heatmaps, sparsity and effective rank, as PNG and CSV."""
    from sift_cli.localize import localize as run_localize

    run_localize(run_dirs, output=output, console=console)


@app.command()
@user_errors
def compare(
    app_name: Optional[str] = typer.Option(None, "--app", help="the application (its CPU preset is the base spec)"),
    preset: Optional[str] = typer.Option(None, help="base preset (default: <app>_cpu)"),
    config: Optional[Path] = typer.Option(None, "--config", help="your own base YAML spec"),
    assignments: List[str] = typer.Option([], "--set", help="any base spec field: --set train.batch_size=8"),
    methods: List[str] = typer.Option([], "--method", help="METHOD=LR[,LR...]; repeatable (sift, muon, adamw, blur, muon+pome); default: the app's grid"),
    axes: List[str] = typer.Option([], "--axis", help="METHOD:KEY=V[,V...]; repeatable: a method's own knob crossed with its lrs, e.g. muon:optim.lam=1,10,100"),
    seeds: str = typer.Option("0", help="comma-separated selection seeds: every configuration is trained on each"),
    report_seeds: Optional[str] = typer.Option(None, "--report-seeds", help="comma-separated seeds, disjoint from --seeds, the chosen configurations are reported on (default: the selection seeds)"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps per run (default: the base spec's)"),
    tasks: Optional[str] = typer.Option(None, help="comma-separated local MCQ files (or cloze:FILE), split into validation and test"),
    tolerance: float = typer.Option(0.10, help="a learning rate qualifies while the validation utility's perplexity (e.g. retain text's) is within this share of the base model's"),
    reference: str = typer.Option("muon", help="the method every other is tested against"),
    output: Path = typer.Option(..., "--output", "-o", help="the comparison directory (new, or an interrupted comparison to continue)"),
) -> None:
    """Compare methods on one task: choose each method's configuration on validation, report test metrics over seeds with intervals and exact tests."""
    from sift_cli import api
    from sift_cli.spec import resolve_spec

    base = resolve_spec(app=app_name, preset=preset, config=config, assignments=assignments)
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else []
    api.compare(
        base, output, grid=dict(parse_method(text) for text in methods) or None, axes=parse_axes(axes), seeds=parse_ints(seeds, "--seeds"),
        report_seeds=None if report_seeds is None else parse_ints(report_seeds, "--report-seeds"), steps=steps, tasks=task_list,
        tolerance=tolerance, reference=reference, console=console,
    )  # fmt: skip


def parse_method(text: str) -> tuple[str, list[float]]:
    """`sift=2e-2,5e-2` -> ("sift", [0.02, 0.05])."""
    name, _, rates = text.partition("=")
    try:
        values = [float(rate) for rate in rates.split(",") if rate.strip()]
    except ValueError:
        values = []
    if not name or not values:
        raise SiftError(f"--method {text!r} is not METHOD=LR[,LR...] (e.g. --method sift=2e-2,5e-2)")
    return name.strip(), values


def require_known(flag: str, given: List[str], allowed: Any) -> None:
    """One line naming the first value of a repeatable choice flag that is not one of `allowed`."""
    unknown = [name for name in given if name not in allowed]
    if unknown:
        raise SiftError(f"{flag} {unknown[0]!r}: expected one of {', '.join(allowed)}")


def parse_axes(texts: List[str]) -> dict[str, dict[str, list[Any]]]:
    """`muon:optim.lam=1,10` -> {"muon": {"optim.lam": [1, 10]}}; values are read as YAML scalars."""
    import yaml

    axes: dict[str, dict[str, list[Any]]] = {}
    for text in texts:
        method, _, assignment = text.partition(":")
        key, _, values = assignment.partition("=")
        parts = [part.strip() for part in values.split(",") if part.strip()]
        if not method or not key.strip() or not parts:
            raise SiftError(f"--axis {text!r} is not METHOD:KEY=V[,V...] (e.g. --axis muon:optim.lam=1,10,100)")
        try:
            parsed = [yaml.safe_load(part) for part in parts]
        except yaml.YAMLError:
            raise SiftError(f"--axis {text!r}: a value is not a number or word") from None
        if key.strip() in axes.setdefault(method.strip(), {}):
            raise SiftError(f"--axis {method}:{key} is given twice; list all its values in one --axis")
        axes[method.strip()][key.strip()] = parsed
    return axes


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SiftError(f"{flag} {text!r} is not a comma-separated list of integers") from None


@app.command()
@user_errors
def pome(
    run_dir: Path = typer.Argument(..., help="a finished run directory (e.g. a Muon run)"),
    output: Path = typer.Option(..., "--output", "-o", help="the new run directory to write (must not exist or be empty)"),
    rank_fraction: float = typer.Option(0.5, "--rank-fraction", help="share of each weight change's rank to keep"),
    scale: str = typer.Option("mean", "--scale", help="'mean' (mean kept singular value) or a number"),
) -> None:
    """POME baseline: equalize the spectrum of each trained block's weight change, as a new run directory."""
    from sift_cli.pome import pome_run

    if scale != "mean":
        try:
            scale_value: str | float = float(scale)
        except ValueError:
            raise SiftError(f"--scale {scale!r} is neither 'mean' nor a number") from None
    else:
        scale_value = scale
    pome_run(run_dir, output, rank_fraction=rank_fraction, scale=scale_value, console=console)


@app.command()
@user_errors
def demo(
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="where the demo writes its data and runs"),
    steps: Optional[int] = typer.Option(None, help="override the demo's number of steps"),
) -> None:
    """Offline unlearning demo on SmolLM2-135M-Instruct (4-bit GGUF, dequantized): Muon and SIFT compared."""
    from sift_cli.demo.run import run_demo

    run_demo(output, console=console, steps=steps)


@app.command("env")
@user_errors
def env() -> None:
    """Versions, devices and settings to paste into a bug report."""
    from sift_cli.envinfo import collect, env_table
    from sift_cli.output import summary

    console.print(env_table(collect()))
    summary(console, "paste the table above into your bug report")


@bench_app.command("engine")
@user_errors
def bench_engine(
    k: int = typer.Option(128, "--k", help="top-K subspace size"),
    stream: list[str] = typer.Option(
        ["training", "drifting"],
        help="momentum streams: 'training' (SmolLM2-135M trained on the unlearning CPU preset, about a "
        "minute on CPU) and/or 'drifting' (rotating low-rank signal plus noise, per block shape)",
    ),
    steps: int = typer.Option(30, help="steps per stream"),
    tol: Optional[float] = typer.Option(None, help="optim.subspace_tol (default: the engine's)"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when present)"),
) -> None:
    """Fast SIFT direction along momentum streams: error vs exact (median, p95, max) and time vs Muon."""
    import re

    from sift_cli.bench.engine import STREAMS, run_engine_bench

    require_known("--stream", stream, STREAMS)
    if steps < 1:
        raise SiftError(f"--steps {steps} must be at least 1")
    if k < 1:
        raise SiftError(f"--k {k} must be at least 1")
    if tol is not None and not 0.0 < tol < 1.0:
        raise SiftError(f"--tol {tol} must be between 0 and 1 (e.g. 0.01)")
    if device is not None:
        import torch

        if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
            raise SiftError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SiftError(f"--device {device} but no CUDA device is visible; use cpu")
    run_engine_bench(k=k, streams=stream, steps=steps, tol=tol, device=device, console=console)


@bench_app.command("toy")
@user_errors
def bench_toy(
    problem: List[str] = typer.Option(["toy", "disjoint"], help="opposed, toy and/or disjoint: how many input dims f and g share (all, half, none)"),
    seeds: int = typer.Option(8, help="seeds (each a new problem and batch order); half choose configurations, half report them"),
    steps: int = typer.Option(100, help="optimizer steps per run; every run is also read at 1/4 and 1/2 of them"),
) -> None:
    """SIFT's and Muon's trade-off fronts over seeds on small constrained MLPs: f needed at fixed g levels, paired exact tests."""
    from sift_cli.bench.toy import PROBLEMS, run_front_bench

    require_known("--problem", problem, PROBLEMS)
    if seeds < 4:
        raise SiftError(f"--seeds {seeds}: at least 4 (half choose, half report, and each half needs two for a test)")
    if steps < 4:
        raise SiftError(f"--steps {steps} must be at least 4")
    run_front_bench(problems=problem, seeds=seeds, steps=steps, console=console)


@bench_app.command("train")
@user_errors
def bench_train(
    k: int = typer.Option(128, "--k", help="top-K subspace size"),
    steps: int = typer.Option(2, help="timed steps per method (after one warm-up step)"),
    batch_size: int = typer.Option(4, "--batch-size", help="sequences per objective"),
    length: int = typer.Option(128, help="tokens per sequence"),
) -> None:
    """Whole training steps of Muon, SIFT (gated, forced) and AdamW on SmolLM2, as ratios to Muon."""
    from sift_cli.bench.train import run_train_bench

    for flag, value in (("--k", k), ("--steps", steps), ("--batch-size", batch_size), ("--length", length)):
        if value < 1:
            raise SiftError(f"{flag} {value} must be at least 1")
    try:
        run_train_bench(k=k, steps=steps, batch_size=batch_size, length=length, console=console)
    except RuntimeError as exc:
        raise SiftError(str(exc)) from None


@bench_app.command("memory")
@user_errors
def bench_memory() -> None:
    """Optimizer state per trained parameter, measured: SIFT's settings vs mixed-precision AdamW."""
    from sift_cli.memory import run_memory_bench

    run_memory_bench(console=console)


@bench_app.command("precision")
@user_errors
def bench_precision(
    steps: int = typer.Option(100, help="optimizer steps"),
    lr: float = typer.Option(1e-4, help="learning rate"),
    k: int = typer.Option(128, "--k", help="top-K subspace size of SIFT"),
) -> None:
    """bf16 training with and without master weights, Kahan or stochastic rounding, against fp32."""
    import math

    from sift_cli.bench.precision import run_precision_bench

    if steps < 1 or k < 1:
        raise SiftError(f"--steps {steps} and --k {k} must be at least 1")
    if not (math.isfinite(lr) and lr > 0):
        raise SiftError(f"--lr {lr} must be a positive finite number (e.g. 1e-4)")
    run_precision_bench(steps=steps, lr=lr, k=k, console=console)


@bench_app.command("distributed")
@user_errors
def bench_distributed(
    processes: int = typer.Option(2, "--processes", help="processes of the sharded run (against 1)"),
    layers: int = typer.Option(6, "--layers", help="SmolLM2-135M-shaped decoder layers whose 7 matrices are trained"),
    steps: int = typer.Option(3, "--steps", help="timed optimizer steps (after 2 warm-up steps)"),
) -> None:
    """The sharded (FSDP2) optimizer step on 1 and N CPU processes: seconds per step and memory per rank, as ratios."""
    import os

    from sift_cli.bench.distributed import run_distributed_bench

    if processes < 2 or layers < 1 or steps < 1:
        raise SiftError("--processes must be at least 2, --layers and --steps at least 1")
    cores = os.cpu_count() or 1
    if processes > cores:
        raise SiftError(f"--processes {processes}: this machine has {cores} CPU cores and each process takes one; pass at most {cores}")
    run_distributed_bench(processes=processes, layers=layers, steps=steps, console=console)


def _register_prepare_commands() -> None:
    from sift_cli.apps import APPS, prepare_command

    for name in APPS:
        prepare_app.command(name)(user_errors(output_locked(prepare_command(name))))


def output_locked(command: Callable[..., Any]) -> Callable[..., Any]:
    """Hold `sift prepare`'s output place for the whole command, so that a second prepare into the same
    place is refused instead of renaming over the first one's data."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sift_cli.store.lock import parent_locked

        with parent_locked(kwargs["output"], "prepare into it"):
            return command(*args, **kwargs)

    return wrapper


_register_prepare_commands()


def main() -> None:
    """The `sift` command. A usage error (a bad flag value, an unknown option) is one line and exit 2,
    like every other refusal, instead of click's boxed panel."""
    # click's UsageError, from whichever click typer runs on (recent typer vendors its own)
    usage_error = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "UsageError")
    try:
        code = app(prog_name="sift", standalone_mode=False)
    except usage_error as exc:
        where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx is not None else ""
        error_console.print(f"[red]error:[/red] {escape(exc.format_message().rstrip('.'))}{where}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        error_console.print("[red]error:[/red] aborted", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
