"""The loop a started or resumed run goes through: steps with a progress bar, checkpoints on schedule
and on Ctrl-C, then the model, the card and the summary."""

from __future__ import annotations

import math
import signal
import time
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sift_cli.hf.model_card import write_model_card
from sift_cli.output import summary
from sift_cli.store.atomic import write_json
from sift_cli.store.rundir import ENV, RunDir
from sift_cli.training import tracking
from sift_cli.training.objectives import fit_lines
from sift_cli.training.state import environment
from sift_cli.training.trainer import Trainer, TrainingStopped

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Ctrl-C, and what `timeout`, Kubernetes, SLURM and torchrun send before SIGKILL."""


@contextmanager
def stop_requests() -> Iterator[dict[str, int]]:
    """Turn SIGINT and SIGTERM into a flag (the signal's number) the loop checks between steps, so that
    the step in flight finishes and a checkpoint is written before the process exits."""
    flag = {"signal": 0}

    def handler(signum: int, frame: Any) -> None:
        flag["signal"] = signum

    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)


def stopped(signum: int, trainer: Trainer) -> TrainingStopped:
    """The one line of a run stopped by a signal; the exit code is the shell's 128 + signal (130 for
    SIGINT, 143 for SIGTERM), so a job script can tell a resumable stop from bad input (2)."""
    name = signal.Signals(signum).name if signum else "a signal to another rank"
    stop = TrainingStopped(
        f"stopped by {name} at step {trainer.step}; checkpoint written, continue with `sift train --resume {trainer.run.path}`"
    )
    stop.exit_code = 128 + (signum or signal.SIGTERM)
    return stop


def run_to_end(trainer: Trainer, console: Console) -> RunDir:
    """Step a built (started or resumed) trainer to train.steps, then write model/, its card and the summary."""
    run, spec, ranks = trainer.run, trainer.spec, trainer.ranks
    if ranks.main:
        for note in [*trainer.objectives.notes, *fit_lines(trainer.objectives, spec.data.max_length)]:
            console.print(note)
        run.truncate_logs(trainer.step)
        write_json(run.path / ENV, environment(trainer.device, ranks.world, spec.train.seed, spec.train.parallel))
    tracking.start(trainer.accelerator, spec.train.report_to, spec.model_dump(mode="json"), run.path.name)
    try:
        step_until_done(trainer, console)
        trainer.save_model()
    finally:
        # Ends the trackers, and under a launcher the process group: every collective is done by now.
        trainer.accelerator.end_training()
    if ranks.main:
        write_model_card(run, spec)
        last = run.read_metrics().iloc[-1]
        processes = f" on {ranks.world} processes ({spec.train.parallel})" if ranks.distributed else ""
        summary(
            console,
            f"trained {spec.app} with {spec.optim.method}{processes}: {trainer.step} steps, "
            f"loss_f {last['loss_f']:.4g}, loss_g {last['loss_g']:.4g}; model/ with its model card",
            run.path,
        )
    return run


def step_until_done(trainer: Trainer, console: Console) -> None:
    spec = trainer.spec
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("f={task.fields[loss_f]:.4g} g={task.fields[loss_g]:.4g} sift={task.fields[n_sift]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with stop_requests() as flag, Progress(*columns, console=console, transient=False, disable=not trainer.ranks.main) as progress:
        task = progress.add_task(
            f"{spec.app}/{spec.optim.method}", total=spec.train.steps, completed=trainer.step, loss_f=math.nan, loss_g=math.nan, n_sift=0
        )
        while trainer.step < spec.train.steps:
            started = time.perf_counter()
            loss_f, loss_g, report = trainer.train_step()
            trainer.log(loss_f, loss_g, report, time.perf_counter() - started)
            progress.update(task, completed=trainer.step, loss_f=loss_f, loss_g=loss_g, n_sift=report.n_sift)
            saved = trainer.step % spec.train.checkpoint_every == 0 or trainer.step == spec.train.steps
            if saved:
                trainer.save_checkpoint()
            if trainer.ranks.any(bool(flag["signal"])):
                if not saved:
                    trainer.save_checkpoint()
                raise stopped(flag["signal"], trainer)
