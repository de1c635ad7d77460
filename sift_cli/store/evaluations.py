"""A run's evaluation history, `eval/results.json`: every `sift evaluate` appends one entry, and the
model card shows the newest (so every command that rewrites the card keeps it)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sift_cli.errors import SiftError

if TYPE_CHECKING:
    from sift_cli.store.rundir import RunDir

RESULTS = "results.json"


def read_evaluations(run: RunDir) -> list[dict[str, Any]]:
    """The evaluations results.json already holds; a file from before the history (one flat result)
    becomes the first entry, marked as made in an unrecorded way."""
    path = run.eval_dir / RESULTS
    if not path.is_file():
        return []
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SiftError(f"{path} cannot be read ({type(exc).__name__}); move it aside to start a new history") from None
    if isinstance(stored, dict) and isinstance(stored.get("evaluations"), list):
        return stored["evaluations"]
    return [{**stored, "made": {"recorded": False}}] if isinstance(stored, dict) else []


def flatten(results: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metrics as (dotted name, value) rows, e.g. ("lm_eval.wmdp_bio.acc", 0.31)."""
    rows = []
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def latest_metrics(run: RunDir) -> list[tuple[str, Any]] | None:
    """The newest evaluation's metrics as (name, value) rows for the model card; None before any."""
    evaluations = read_evaluations(run)
    if not evaluations:
        return None
    newest = {key: value for key, value in evaluations[-1].items() if key not in ("app", "model", "made")}
    return flatten(newest)
