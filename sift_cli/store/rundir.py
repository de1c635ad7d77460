"""The run directory contract (DESIGN §2): what `train` writes and `localize`/`evaluate` read.

Files:
- spec.yaml       resolved run spec
- env.json        versions, device, world size, seed
- metrics.jsonl   one JSON object per logged step (METRIC_FIELDS)
- alignment.csv   one row per spectral block per step (ALIGNMENT_COLUMNS)
- spectra.jsonl   optional: singular values of both momenta for candidate blocks every N steps
- history.jsonl   one record per start and resume of the run (with what a resume changed)
- data/           the held-out tables `sift evaluate` reads, copied from the prepared data at start
- checkpoints/    resumable state; model/ final model; eval/ and plots/ written later
- .lock           held by the one process writing the run (`sift_cli.store.lock`)

Logs are appended one step at a time; readers drop a torn last record so that a run killed mid-write
(or still running) stays readable.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from sift_cli.errors import SiftError
from sift_cli.spec import RunSpec, parse_yaml, validate_spec
from sift_cli.store.atomic import write_text
from sift_cli.store.lock import LOCK
from sift_cli.store.places import SPEC
from sift_cli.store.prepared import MANIFEST, PreparedData, load_prepared
from sift_cli.store.transaction import is_temporary, remove_temporary

ENV = "env.json"
METRICS = "metrics.jsonl"
ALIGNMENT = "alignment.csv"
TRAINER_SETTINGS = "sift_trainer.json"
"""What a `SiftTrainer` output directory holds instead of spec.yaml: its optimizer settings and steps."""
SPECTRA = "spectra.jsonl"
CHECKPOINTS = "checkpoints"
MODEL = "model"
EVAL = "eval"
PLOTS = "plots"
POME = "pome.json"
"""Present in a run made by `sift pome` (a post-hoc edit of another run): what was edited, from what."""
HISTORY = "history.jsonl"
DATA = "data"
RUN_MARKERS = (SPEC, POME, CHECKPOINTS)
"""Any of these makes a directory a `sift` run (one that `train --resume` or `evaluate` may address)."""

METRIC_FIELDS = (
    "step",
    "loss_f",
    "loss_g",
    "lr",
    "seconds",
    "optimizer_seconds",
    "n_sift",
    "n_blocks",
)
ALIGNMENT_COLUMNS = (
    "step",
    "block",
    "layer",
    "component",
    "tau_grad",
    "tau_momentum",
    "tau",
    "branch",
    "candidate",
    "subspace_error",
    "subspace_fallback",
)
"""subspace_error / subspace_fallback: the fast SIFT path's error estimate and whether it fell back to the
exact decomposition (NaN / False off the SIFT branch, and in logs written before they existed)."""


@dataclass(frozen=True)
class RunDir:
    """Paths and readers of one run directory."""

    path: Path

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """A run directory that must already exist (written by `sift train`)."""
        run = cls(Path(path))
        if not (run.path / SPEC).is_file():
            raise SiftError(
                f"{run.path} is not a run directory (no {SPEC}); pass the --output directory of a `sift train` run"
            )
        return run

    @property
    def spec_path(self) -> Path:
        return self.path / SPEC

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL

    def has_model(self) -> bool:
        """model/ holds a finished model: full weights, or a LoRA run's adapter."""
        return (self.model_dir / "config.json").is_file() or (self.model_dir / "adapter_config.json").is_file()

    @property
    def data_dir(self) -> Path:
        return self.path / DATA

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_MARKERS)

    def foreign_entries(self) -> list[str]:
        """What the directory holds besides a lock and temporary files: empty for a new run's target."""
        if not self.path.is_dir():
            return []
        return sorted(e.name for e in self.path.iterdir() if e.name != LOCK and not is_temporary(e.name))

    def remove_temporary(self) -> list[str]:
        """Temporary files and staging directories of writes that a killed process left; call under the lock."""
        removed = []
        for directory in (self.path, self.checkpoints, self.model_dir, self.eval_dir, self.plots_dir):
            removed += [str((directory / name).relative_to(self.path)) for name in remove_temporary(directory)]
        return removed

    def append_history(self, record: dict[str, Any]) -> None:
        _append(self.path / HISTORY, json.dumps(record, sort_keys=True) + "\n")

    def read_history(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.path / HISTORY)

    def load_spec(self) -> RunSpec:
        """The validated spec this run was trained with, its output pointing here (the directory may
        have been moved since). Every reader of a run gets its settings through this one model."""
        try:
            tree = parse_yaml(self.spec_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise SiftError(f"{self.spec_path} cannot be read ({type(exc).__name__}); restore it from the `sift train` run") from None
        if not isinstance(tree, dict):
            raise SiftError(f"{self.spec_path} does not hold a run spec; restore it from the `sift train` run")
        try:
            spec = validate_spec(tree)
        except SiftError as exc:
            raise SiftError(f"{self.spec_path} is not a valid run spec: {exc}") from None
        if Path(spec.output).resolve() != self.path.resolve():
            spec = spec.model_copy(update={"output": self.path.resolve()})
        return spec

    def read_env(self) -> dict[str, Any]:
        return json.loads((self.path / ENV).read_text(encoding="utf-8"))

    def append_metrics(self, record: dict[str, Any]) -> None:
        _append(self.path / METRICS, _json_line(METRICS, record))

    def append_alignment(self, rows: Iterable[dict[str, Any]]) -> None:
        path = self.path / ALIGNMENT
        buffer = io.StringIO()
        fresh = not path.exists() or path.stat().st_size == 0
        columns = ALIGNMENT_COLUMNS if fresh else _csv_header(path)
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        if fresh:
            writer.writeheader()
        writer.writerows(rows)
        _append(path, buffer.getvalue())

    def append_spectra(self, step: int, block: str, momentum: str, singular_values: list[float]) -> None:
        record = {"step": step, "block": block, "momentum": momentum, "singular_values": singular_values}
        _append(self.path / SPECTRA, _json_line(SPECTRA, record))

    def read_metrics(self) -> pd.DataFrame:
        return pd.DataFrame(_read_jsonl(self.path / METRICS), columns=list(METRIC_FIELDS))

    def read_alignment(self) -> pd.DataFrame:
        path = self.path / ALIGNMENT
        if not path.exists():
            return pd.DataFrame(columns=list(ALIGNMENT_COLUMNS))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SiftError(f"{path} is not UTF-8 text (it was not written by sift, or was damaged); restore it or train the run again") from None
        complete = text[: text.rfind("\n") + 1]
        if not complete.strip():
            return pd.DataFrame(columns=list(ALIGNMENT_COLUMNS))
        frame = pd.read_csv(io.StringIO(complete), on_bad_lines="skip")
        missing = [column for column in ("step", "block", "branch", "layer", "tau") if column not in frame.columns]
        if missing:
            raise SiftError(f"{path} lacks the column(s) {', '.join(missing)}: it is not a sift alignment log; restore it")
        frame = frame.dropna(subset=["step", "block", "branch"])
        try:
            frame["step"] = frame["step"].astype(int)
            frame["layer"] = frame["layer"].astype(int)
        except (TypeError, ValueError):
            raise SiftError(f"{path} has a step or layer that is not a whole number: it was damaged; restore it") from None
        frame["candidate"] = frame["candidate"].astype(str).str.lower().eq("true")
        frame["subspace_error"] = pd.to_numeric(frame.get("subspace_error", math.nan), errors="coerce")
        frame["subspace_fallback"] = frame.get("subspace_fallback", pd.Series(False, index=frame.index))
        frame["subspace_fallback"] = frame["subspace_fallback"].astype(str).str.lower().eq("true")
        return frame.reset_index(drop=True)

    def read_spectra(self) -> pd.DataFrame:
        return pd.DataFrame(
            _read_jsonl(self.path / SPECTRA), columns=["step", "block", "momentum", "singular_values"]
        )

    def truncate_logs(self, step: int) -> None:
        """Drop log records after `step`, so a resumed run does not log the replayed steps twice."""
        for name in (METRICS, SPECTRA):
            path = self.path / name
            if path.exists():
                kept = [r for r in _read_jsonl(path) if r["step"] <= step]
                write_text(path, "".join(_json_line(name, r) for r in kept))
        path = self.path / ALIGNMENT
        if path.exists():
            frame = self.read_alignment()
            kept = frame[frame["step"] <= step]
            write_text(path, kept.to_csv(index=False, lineterminator="\n") if len(kept) else "")


def _json_line(log: str, record: dict[str, Any]) -> str:
    """A JSONL log record as it is written, whether appended or rewritten after a resume: metrics with
    sorted keys, spectra in insertion order."""
    return json.dumps(record, sort_keys=log == METRICS) + "\n"


def _csv_header(path: Path) -> tuple[str, ...]:
    """The columns a CSV log was started with: a run resumed by a newer version keeps appending rows
    its header describes (columns added since are left out of that run's log)."""
    with open(path, encoding="utf-8") as fh:
        return tuple(next(csv.reader(fh)))


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def held_out_data(spec: RunSpec, run: RunDir | None) -> PreparedData:
    """The prepared data `evaluate` reads: the run's own copy (runs are self-contained), or, for a run
    written before runs kept one and for a model scored without a run, the spec's data directory."""
    if run is not None and (run.data_dir / MANIFEST).is_file():
        return load_prepared(run.data_dir, spec.app)
    return load_prepared(Path(spec.data.path), spec.app)
