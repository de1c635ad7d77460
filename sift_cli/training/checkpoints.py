"""Checkpoints of a run: where they live, reading one without executing code, writing one atomically,
keeping the newest two, and falling back past ones a kill left unreadable."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console

from sift_cli.errors import SiftError, first_line
from sift_cli.store.atomic import write_with
from sift_cli.store.rundir import RunDir

CHECKPOINT_GLOB = "step-*"
"""`step-NNNNNNN.pt` (one process, DDP) or `step-NNNNNNN/` (FSDP2: sharded, see sift_cli.training.fsdp)."""


KEEP_CHECKPOINTS = 2


def latest_checkpoint(run: RunDir) -> Path | None:
    found = sorted(run.checkpoints.glob(CHECKPOINT_GLOB))
    return found[-1] if found else None


class UnreadableCheckpoint(Exception):
    """A checkpoint file that does not load (truncated, empty, not a torch archive)."""


def read_checkpoint(path: Path, rank: int = 0) -> dict[str, Any]:
    """A checkpoint's state (of a sharded one, this rank's unsharded part), loaded without executing
    code; any failure to load it is UnreadableCheckpoint."""
    try:
        if path.is_dir():
            from sift_cli.training.fsdp import read_rank_file

            state = read_rank_file(path, rank)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises EOFError, RuntimeError, UnpicklingError... for a damaged file
        raise UnreadableCheckpoint(first_line(exc, 100)) from None
    if not isinstance(state, dict) or "step" not in state:
        raise UnreadableCheckpoint("not a sift checkpoint")
    return state


WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
"""How torch's archive writer words a write that the file system refused."""


def checkpoint_path(run: RunDir, step: int, sharded: bool = False) -> Path:
    """`step-NNNNNNN.pt`, or the directory of a sharded checkpoint."""
    return run.checkpoints / (f"step-{step:07d}" if sharded else f"step-{step:07d}.pt")


def write_checkpoint(run: RunDir, step: int, state: dict[str, Any]) -> None:
    """One process's whole state as `step-NNNNNNN.pt`, written atomically (a kill leaves the previous
    checkpoints as they were)."""
    path = checkpoint_path(run, step)
    try:
        write_with(path, lambda tmp: torch.save(state, tmp))
    except RuntimeError as exc:
        # torch's archive writer reports a failed write (full disk, file-size limit) as a RuntimeError
        if not any(sign in str(exc) for sign in WRITE_FAILED):
            raise
        raise OSError(errno.ENOSPC, "the checkpoint could not be written", str(path)) from None


def prune_checkpoints(run: RunDir) -> None:
    """Keep the newest KEEP_CHECKPOINTS (the one before the newest is the fallback if a kill truncated it)."""
    for old in sorted(run.checkpoints.glob(CHECKPOINT_GLOB))[:-KEEP_CHECKPOINTS]:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()


def restore_latest(run: RunDir, rank: int, console: Console, load: Callable[[dict[str, Any], str], None]) -> tuple[Path | None, list[str]]:
    """Hand the newest readable checkpoint's state to `load`; return it and the names of newer
    unreadable ones, which a kill during the write of a checkpoint can leave (a warning names each)."""
    skipped = []
    for path in sorted(run.checkpoints.glob(CHECKPOINT_GLOB), reverse=True):
        try:
            state = read_checkpoint(path, rank)
        except UnreadableCheckpoint as exc:
            skipped.append(path.name)
            console.print(f"[yellow]warning:[/yellow] {path.name} is unreadable ({exc}); trying the one before it")
            continue
        load(state, path.name)
        return path, skipped
    if skipped:
        raise SiftError(f"no checkpoint in {run.checkpoints} can be read ({', '.join(skipped)}); start again with a new --output")
    return None, skipped
