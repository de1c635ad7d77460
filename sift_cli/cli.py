"""The `sift` command line: thin wrappers that parse flags and call the modules that do the work."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console

from sift_cli.errors import SiftError

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


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a `SiftError` as one red line and exit 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SiftError as exc:
            error_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


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


@prepare_app.command("unlearning")
@user_errors
def prepare_unlearning(
    output: Path = typer.Option(Path("data/unlearning"), "--output", "-o", help="prepared-data directory to write"),
    forget: List[str] = typer.Option(
        ["cyber"], "--forget", help="'cyber' (cais/wmdp-corpora), or a local jsonl/parquet with a text column; repeatable"
    ),
    retain: str = typer.Option("wikitext", "--retain", help="'wikitext' (wikitext-2-raw-v1) or a local file"),
    min_chars: int = typer.Option(50, help="drop retain rows with at most this many characters"),
    max_rows: Optional[int] = typer.Option(None, help="keep at most this many rows per source"),
) -> None:
    """Forget text (WMDP corpora) and retain text (wikitext) for RMU unlearning."""
    from sift_cli.apps import unlearning

    unlearning.prepare(output, forget=forget, retain=retain, min_chars=min_chars, max_rows=max_rows, console=console)


@prepare_app.command("speech")
@user_errors
def prepare_speech(
    dataset: str = typer.Option(..., "--dataset", help="cose, esnli or openbookqa"),
    output: Path = typer.Option(Path("data/speech"), "--output", "-o", help="prepared-data directory to write"),
    source: Optional[str] = typer.Option(
        None, "--source", help="hub id (default Salesforce/cos_e, esnli, allenai/openbookqa) or a local directory of <split>.jsonl files in its schema"
    ),
    tts: str = typer.Option("auto", "--tts", help="auto, coqui (the paper's VCTK p347 voice), piper or espeak"),
    voice: Optional[str] = typer.Option(None, "--voice", help="coqui speaker id, piper .onnx voice file, or espeak-ng voice"),
    speech_tokenizer: str = typer.Option(
        "THUDM/glm-4-voice-tokenizer", "--speech-tokenizer", help="hub id or local directory of the GLM-4-Voice tokenizer, or 'local' (small, offline, untrained)"
    ),
    train_split: Optional[str] = typer.Option(None, "--train-split", help="default: train"),
    test_split: Optional[str] = typer.Option(None, "--test-split", help="default: validation for cose, test otherwise"),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", help="keep at most this many train rows, sampled with --seed"),
    test_rows: Optional[int] = typer.Option(None, "--test-rows", help="keep at most this many test rows, sampled with --seed"),
    seed: int = typer.Option(0, help="seed of the row samples"),
) -> None:
    """Spoken question-answering data (CoS-E, e-SNLI, OpenBookQA) for speech adaptation: TTS + speech tokens."""
    from sift_cli.apps import speech

    speech.prepare(
        output,
        dataset,
        source=source,
        tts=tts,
        voice=voice,
        speech_tokenizer=speech_tokenizer,
        train_split=train_split,
        test_split=test_split,
        max_rows=max_rows,
        test_rows=test_rows,
        seed=seed,
        console=console,
    )


@prepare_app.command("safety")
@user_errors
def prepare_safety(
    output: Path = typer.Option(Path("data/safety"), "--output", "-o", help="prepared-data directory to write"),
    pku: str = typer.Option("hub", "--pku", help="'hub' (PKU-Alignment/PKU-SafeRLHF) or a local file in its schema"),
    pku_config: str = typer.Option("default", "--pku-config", help="default, alpaca-7b, alpaca2-7b or alpaca3-8b"),
    pku_split: str = typer.Option("train", "--pku-split", help="PKU-SafeRLHF split (train or test)"),
    prefer: str = typer.Option("safer", "--prefer", help="chosen response: 'safer' (safer_response_id) or 'better'"),
    exactly_one_safe: bool = typer.Option(
        True, "--exactly-one-safe/--no-exactly-one-safe", help="keep only pairs where exactly one response is safe"
    ),
    alpaca: str = typer.Option("hub", "--alpaca", help="'hub' (tatsu-lab/alpaca) or a local file with instruction/input/output"),
    max_rows: Optional[int] = typer.Option(None, help="keep at most this many rows per table, sampled with --seed"),
    seed: int = typer.Option(0, help="seed of the --max-rows sample"),
) -> None:
    """SFT examples (Alpaca) for f and DPO preference pairs (PKU-SafeRLHF) for g."""
    from sift_cli.apps import safety

    safety.prepare(
        output,
        pku=pku,
        pku_config=pku_config,
        pku_split=pku_split,
        prefer=prefer,
        exactly_one_safe=exactly_one_safe,
        alpaca=alpaca,
        max_rows=max_rows,
        seed=seed,
        console=console,
    )


@prepare_app.command("hallucination")
@user_errors
def prepare_hallucination(
    output: Path = typer.Option(Path("data/hallucination"), "--output", "-o", help="prepared-data directory to write"),
    source: Optional[str] = typer.Option(
        None, "--source", help="RAGTruth dataset/ directory or its URL (default: the ParticleMedia/RAGTruth repository)"
    ),
    task_type: List[str] = typer.Option([], "--task-type", help="QA, Summary or Data2txt; repeatable (default: all)"),
    generator: List[str] = typer.Option(
        [], "--generator", help="keep responses of this generator (RAGTruth 'model', e.g. llama-2-7b-chat); repeatable (default: all)"
    ),
    label_type: List[str] = typer.Option(
        [], "--label-type", help="span type that counts as hallucinated, e.g. 'Evident Conflict'; repeatable (default: all four)"
    ),
    keep_implicit_true: bool = typer.Option(
        False, "--keep-implicit-true", help="keep spans marked implicit_true (correct but unsupported) as hallucinated"
    ),
    quality: str = typer.Option("good", help="keep responses of this quality; 'any' keeps all"),
    max_rows: Optional[int] = typer.Option(None, help="keep at most this many responses per split"),
) -> None:
    """Responses with hallucinated spans (RAGTruth) for hallucination mitigation: train and test splits."""
    from sift_cli.apps import hallucination, ragtruth

    filters = ragtruth.Filters(
        task_types=tuple(task_type) or ragtruth.TASK_TYPES,
        generators=tuple(generator),
        label_types=tuple(label_type) or ragtruth.LABEL_TYPES,
        drop_implicit_true=not keep_implicit_true,
        quality=None if quality == "any" else quality,
        max_rows=max_rows,
    )
    hallucination.prepare(output, source=source or ragtruth.DEFAULT_SOURCE, filters=filters, console=console)


@app.command()
@user_errors
def train(
    app_name: Optional[str] = typer.Option(None, "--app", help="unlearning, hallucination, safety or speech"),
    preset: Optional[str] = typer.Option(None, help="a preset from sift_cli/configs (default: <app>_cpu)"),
    config: Optional[Path] = typer.Option(None, "--config", help="your own YAML spec; flags override it"),
    method: Optional[str] = typer.Option(None, help="sift, muon, adamw or blur"),
    eps: Optional[float] = typer.Option(None, help="SIFT gate: a block takes the SIFT branch when tau < eps"),
    k: Optional[str] = typer.Option(None, "--k", help="top-K subspace size, or 'full'"),
    lr: Optional[float] = typer.Option(None, help="learning rate"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps"),
    model: Optional[str] = typer.Option(None, help="HF hub id or local directory"),
    data: Optional[Path] = typer.Option(None, help="prepared-data directory"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="run directory to write"),
    assignments: List[str] = typer.Option([], "--set", help="any spec field: --set train.batch_size=8"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved spec, routing and memory; train nothing"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this directory from its last checkpoint"),
) -> None:
    """Train a model on f (utility) under the constraint g."""
    from sift_cli.spec import resolve_spec

    if resume is not None:
        from sift_cli.rundir import RunDir
        from sift_cli.train import train as run_training

        run_training(RunDir.open(resume).load_spec(), console=console, resume=True)
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
        from sift_cli.dryrun import print_dry_run

        print_dry_run(spec, console)
        return
    from sift_cli.train import train as run_training

    run_training(spec, console=console)


@app.command()
@user_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory written by `sift train`"),
    tasks: Optional[str] = typer.Option(None, help="comma-separated lm-eval task names or local task files"),
    limit: Optional[int] = typer.Option(None, help="evaluate at most this many examples per task"),
    batch_size: int = typer.Option(8, help="evaluation batch size"),
) -> None:
    """Evaluate a trained run: the app's metrics and lm-eval utility tasks, written to run_dir/eval/."""
    from sift_cli.apps.base import EvalOptions
    from sift_cli.evaluate import evaluate_run

    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    evaluate_run(run_dir, EvalOptions(tasks=task_list, limit=limit, batch_size=batch_size), console=console)


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
def demo(
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="where the demo writes its data and runs"),
    steps: Optional[int] = typer.Option(None, help="override the demo's number of steps"),
) -> None:
    """Offline unlearning demo on SmolLM2-135M: SIFT vs AdamW, one comparison table."""
    from sift_cli.demo import run_demo

    run_demo(output, console=console, steps=steps)


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
    from sift_cli.bench import STREAMS, run_engine_bench

    unknown = [name for name in stream if name not in STREAMS]
    if unknown:
        raise SiftError(f"--stream {unknown[0]!r}: expected one of {', '.join(STREAMS)}")
    if steps < 1:
        raise SiftError(f"--steps {steps} must be at least 1")
    run_engine_bench(k=k, streams=stream, steps=steps, tol=tol, device=device, console=console)


@bench_app.command("toy")
@user_errors
def bench_toy(
    steps: int = typer.Option(200, help="optimizer steps per method"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """A two-task MLP with conflicting objectives: final (f, g) of SIFT, Muon, AdamW and BLUR."""
    from sift_cli.bench import run_toy_comparison

    run_toy_comparison(steps=steps, seed=seed, console=console)


def main() -> None:
    app(prog_name="sift")


if __name__ == "__main__":
    sys.exit(main())
