"""`sift pome`: the paper's POME baseline applied to a finished run, written as a new run directory.

POME edits a trained model after the fact (no training): for every trained 2-D block it keeps the top
fraction of the weight change's singular directions at one shared scale (`sift_cli.engine.pome`). The
result is a run directory like any other, so `sift evaluate` and `sift localize` read it unchanged: the
source run's spec (its `output` pointing at the new directory), its training logs (the edit was computed
from that training), its copy of the held-out data, the edited `model/`, and `pome.json`, which says what was edited and from what. It
holds no checkpoints: an edit is not resumable training, and `sift train --resume` refuses it.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from sift_cli.engine import pome_edit
from sift_cli.errors import SiftError
from sift_cli.hf.loading import load_model, load_tokenizer
from sift_cli.store.atomic import write_json, write_text
from sift_cli.store.lock import locked
from sift_cli.store.places import check_output_place
from sift_cli.store.rundir import ALIGNMENT, DATA, ENV, METRICS, POME, SPECTRA, RunDir
from sift_cli.store.transaction import staged_directory
from sift_cli.training.plan import trainable_regex

COPIED_LOGS = (ENV, METRICS, ALIGNMENT, SPECTRA)


def check_target(output: Path, source: RunDir) -> None:
    """The new run goes into a directory that does not exist yet or is empty: never over anything, and
    never inside a run."""
    if output.resolve() == source.path.resolve():
        raise SiftError(f"--output {output} is the source run itself; pass a new directory")
    check_output_place(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SiftError(f"--output {output} already exists and is not an empty directory; pass a new directory")


def pome_run(
    run_dir: Path, output: Path, rank_fraction: float = 0.5, scale: str | float = "mean", console: Console | None = None
) -> RunDir:
    """Apply POME to the finished run in `run_dir` and write the edited run to `output`. The source run
    is held with a shared lock throughout: a `sift train --resume` of it cannot change its model and
    spec under the edit (and is refused while the edit runs)."""
    console = console or Console()
    if not 0.0 < rank_fraction <= 1.0:
        raise SiftError(f"--rank-fraction {rank_fraction} must be in (0, 1]")
    if not isinstance(scale, str) and not (math.isfinite(scale) and scale > 0):
        raise SiftError(f"--scale {scale} must be 'mean' or a positive finite number (the singular value every kept direction gets)")
    source = RunDir.open(run_dir)
    with locked(source.path, "edit it with POME", shared=True):
        spec = source.load_spec()
        if not source.has_model():
            raise SiftError(f"{source.path} has no trained model yet (no model/); finish it with `sift train --resume {source.path}`")
        if spec.train.lora is not None:
            raise SiftError(
                f"{source.path} trained LoRA adapters (rank {spec.train.lora.rank}): their change is low-rank already and POME "
                "edits full weight changes; run POME on a full fine-tuning run"
            )
        check_target(output, source)
        _edit(source, spec, output, rank_fraction, scale, console)
    return RunDir(output)


def _edit(source: RunDir, spec: Any, output: Path, rank_fraction: float, scale: str | float, console: Console) -> None:
    """The edit itself, while the source run is held against writers (a resume changing model/ and spec.yaml)."""
    pattern = trainable_regex(spec)
    base = load_model(spec.model)
    trained = load_model(spec.model, path=str(source.model_dir))
    tokenizer = load_tokenizer(spec.model, path=str(source.model_dir))
    edited = pome_edit(base.state_dict(), trained.state_dict(), rank_fraction, scale, name_regex=pattern)
    regex = re.compile(pattern)
    blocks = sorted(name for name, tensor in trained.state_dict().items() if tensor.ndim == 2 and regex.search(name))
    trained.load_state_dict(edited)
    record: dict[str, Any] = {
        "source_run": str(source.path.resolve()),
        "rank_fraction": rank_fraction,
        "scale": scale,
        "edited_blocks": blocks,
        "base_model": spec.model.name,
    }
    _write_atomically(output, source, spec.model_copy(update={"output": output.resolve()}).to_yaml(), trained, tokenizer, record)
    console.print(f"POME edit of {source.path} ({len(blocks)} blocks, top {rank_fraction:g} of each change's rank) written to {output}")


def _write_atomically(output: Path, source: RunDir, spec_yaml: str, model: Any, tokenizer: Any, record: dict[str, Any]) -> None:
    """Build the run in a temporary sibling and rename it into place, so no half-written run is ever seen."""
    with staged_directory(output) as staging:
        write_text(staging / "spec.yaml", spec_yaml)
        for name in COPIED_LOGS:
            if (source.path / name).is_file():
                shutil.copy2(source.path / name, staging / name)
        if source.data_dir.is_dir():
            shutil.copytree(source.data_dir, staging / DATA)
        model.save_pretrained(staging / "model")
        tokenizer.save_pretrained(staging / "model")
        write_json(staging / POME, record)
