"""Starting and resuming a run as transactions: nothing is written until every rank has loaded and
checked what it needs, the run directory is locked while written, and a refusal on any rank is the
same one line on every rank."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from sift_cli.apps import get_app
from sift_cli.errors import SiftError
from sift_cli.output import summary
from sift_cli.spec import RunSpec, validate_spec
from sift_cli.store.atomic import write_text
from sift_cli.store.lock import busy, holder, locked
from sift_cli.store.places import check_output_place
from sift_cli.store.prepared import MANIFEST, copy_tables, load_prepared
from sift_cli.store.rundir import POME, RunDir
from sift_cli.training import tracking
from sift_cli.training.checkpoints import latest_checkpoint
from sift_cli.training.launch import Ranks, make_accelerator, process_group_closed
from sift_cli.training.loop import run_to_end
from sift_cli.training.trainer import Trainer


def check_new_output(path: Path) -> None:
    """Refuse, before anything loads, an --output a new run cannot own: a file, a run (resume it), a
    directory holding anything else, or a place that cannot be created."""
    run = RunDir(path)
    check_output_place(path)
    if path.exists() and not path.is_dir():
        raise SiftError(f"--output {path} is a file; pass a directory for the run")
    pid = holder(path)
    if pid is not None:
        raise busy(path, "train into it", pid)
    if run.holds_run():
        raise SiftError(
            f"{path} already holds a run; resume it with `sift train --resume {path}` or pass a new --output"
        )
    foreign = run.foreign_entries()
    if foreign:
        raise SiftError(
            f"--output {path} holds files that are not a sift run ({', '.join(foreign[:3])}); pass a new or empty directory"
        )
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise SiftError(f"--output {path} cannot be written ({ancestor} is not a writable directory); pass another directory")


def absolute_spec(spec: RunSpec) -> RunSpec:
    """The spec with every path that exists here made absolute (data, output, a local model, local
    files in the app's options), so the run directory means the same thing from any directory."""

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            return str(Path(value).expanduser().resolve())
        if isinstance(value, list):
            return [absolute(item) for item in value]
        return value

    tree = spec.model_dump(mode="json")
    tree["data"]["path"] = str(Path(spec.data.path).resolve())
    tree["output"] = str(Path(spec.output).resolve())
    tree["model"]["name"] = absolute(spec.model.name)
    tree["objective"] = {key: absolute(value) for key, value in spec.objective.items()}
    return type(spec).model_validate(tree)


def history_record(event: str, **fields: Any) -> dict[str, Any]:
    return {
        "event": event,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["sift", *sys.argv[1:]]),
        **fields,
    }


def resume_changes(
    spec: RunSpec, steps: int | None = None, lr: float | None = None, data: Path | None = None
) -> tuple[RunSpec, dict[str, list[Any]]]:
    """The run's spec with what a resume may change (more steps; a new learning rate, e.g. after a
    non-finite stop; the place of its prepared data, after a move) and {setting: [before, after]} of
    what did change."""
    tree = spec.model_dump(mode="json")
    changes: dict[str, list[Any]] = {}
    if data is None and not (Path(spec.data.path) / MANIFEST).is_file():
        raise SiftError(f"the run's prepared data is no longer at {spec.data.path}; if it moved, resume with `--data NEW_PLACE`")
    if data is not None and Path(data).resolve() != Path(spec.data.path).resolve():
        check_same_data(RunDir(Path(spec.output)), Path(data), spec.app)
        changes["data.path"] = [str(spec.data.path), str(Path(data).resolve())]
        tree["data"]["path"] = str(Path(data).resolve())
    if steps is not None and steps != spec.train.steps:
        changes["train.steps"] = [spec.train.steps, steps]
        tree["train"]["steps"] = steps
    if lr is not None and lr != spec.optim.lr:
        changes["optim.lr"] = [spec.optim.lr, lr]
        tree["optim"]["lr"] = lr
    return (validate_spec(tree), changes) if changes else (spec, changes)


def check_same_data(run: RunDir, data: Path, app: str) -> None:
    """`data` holds the prepared data `run` was trained on: made by the same `sift prepare` (its
    creation time) with the same tables, by SHA-256, as the copy the run keeps in data/."""
    kept = load_prepared(run.data_dir, app).manifest
    offered = load_prepared(data, app).manifest
    differ = [name for name, digest in kept.get("sha256", {}).items() if offered.get("sha256", {}).get(name) != digest]
    if differ or kept.get("created") != offered.get("created"):
        what = f"its {differ[0]} table differs" if differ else "it was prepared at another time"
        raise SiftError(f"--data {data} is not the data {run.path} was trained on ({what}); pass the moved copy of that prepared data")


def train(spec: RunSpec, console: Console | None = None, resume: bool = False, changes: dict[str, list[Any]] | None = None) -> RunDir:
    """Run a new `spec` (or resume the run it belongs to, with `changes` from `resume_changes`) to
    completion and return its run directory.

    A new run writes nothing until the model, the data and the plan have loaded and been checked; the
    run directory is locked against other processes for as long as this one writes it. Under a
    launcher (torchrun, accelerate launch) every rank runs this: all ranks check and load, rank 0
    alone takes the lock and writes while the others wait for it, and a refusal on any rank is the
    same one-line error on every rank."""
    console = console or Console()
    tracking.check_tracker(spec.train.report_to)
    if not resume:
        check_output_place(Path(spec.output))  # before resolving: a link must be refused, not followed
        spec = absolute_spec(spec)
    run = RunDir(Path(spec.output))
    with process_group_closed():
        accelerator = make_accelerator(spec, run.path)
        ranks = Ranks(accelerator)
        if not ranks.main:
            console = Console(quiet=True)
        with ExitStack() as held:
            if resume:
                return _resume(spec, run, console, changes or {}, accelerator, held)
            return _start(spec, run, console, accelerator, held)


def _start(spec: RunSpec, run: RunDir, console: Console, accelerator: Any, held: ExitStack) -> RunDir:
    ranks = Ranks(accelerator)
    # Every rank checks the target before any rank writes it, so none finds rank 0's spec.yaml.
    ranks.agreed(lambda: check_new_output(run.path))
    trainer = ranks.agreed(lambda: Trainer(spec, run, console, accelerator))
    trainer.distribute()

    def claim() -> None:
        if not ranks.main:
            return
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SiftError(f"cannot create {run.path} ({exc.strerror}); pass another --output") from None
        held.enter_context(locked(run.path, "train into it"))
        check_new_output(run.path)
        run.remove_temporary()
        write_text(run.spec_path, spec.to_yaml())
        copy_tables(trainer.data, run.data_dir, get_app(spec.app).EVAL_TABLES)
        run.append_history(history_record("start", step=0, processes=ranks.world))

    ranks.agreed(claim)
    return run_to_end(trainer, console)


def _resume(spec: RunSpec, run: RunDir, console: Console, changes: dict[str, list[Any]], accelerator: Any, held: ExitStack) -> RunDir:
    ranks = Ranks(accelerator)

    def claim() -> None:
        if (run.path / POME).is_file():
            raise SiftError(f"{run.path} is a POME edit of another run, not a training run; resume the source run instead")
        if ranks.main:
            held.enter_context(locked(run.path, "resume it"))
            removed = run.remove_temporary()
            if removed:
                console.print(f"removed {len(removed)} temporary file(s) of an interrupted write: {', '.join(removed[:3])}")

    ranks.agreed(claim)
    latest = latest_checkpoint(run)
    done = int(latest.stem.removeprefix("step-")) if latest is not None else 0
    if done == spec.train.steps and not changes and run.has_model():
        summary(console, f"nothing to do: {run.path.name} finished its {done} steps and wrote model/; pass --steps N to train longer", run.path)
        return run

    def load() -> Trainer:
        if spec.train.steps < done:
            raise SiftError(f"{run.path} is at step {done}; --steps {spec.train.steps} would undo training, pass at least {done}")
        return Trainer(spec, run, console, accelerator)

    trainer = ranks.agreed(load)
    trainer.distribute()
    checkpoint, skipped = ranks.agreed(trainer.restore_latest)

    def record() -> None:
        if changes:
            trainer.use_spec_learning_rates()
        if not ranks.main:
            return
        if changes:
            write_text(run.spec_path, spec.to_yaml())
            console.print("resume changes " + ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items()))
        if checkpoint is not None:
            console.print(f"resumed from {checkpoint.name} (step {trainer.step})")
        if not run.data_dir.is_dir():
            copy_tables(trainer.data, run.data_dir, get_app(spec.app).EVAL_TABLES)
        run.append_history(history_record(
            "resume", step=trainer.step, checkpoint=checkpoint.name if checkpoint else None, changes=changes,
            unreadable=skipped, processes=ranks.world,
        ))  # fmt: skip

    ranks.agreed(record)
    return run_to_end(trainer, console)
