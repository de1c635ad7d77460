"""Per-example scores of one model on the comparison's validation and test examples.

Learning rates are chosen on validation and only the chosen runs are reported on test, so the two must
never share an example: every group of held-out examples an app declares (`compare_examples`) is split
once, by content, into two disjoint halves (`split_rows`), and each MCQ file into two files. Scores are
kept per example (the app's `compare_scores`: a text's mean NLL per token, a prompt refused or not; a
question's right/wrong) so that intervals can resample examples and two models can be paired example by
example.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sift_cli.apps import get_app
from sift_cli.errors import SiftError
from sift_cli.evaluation.lmeval import CLOZE, task_correctness
from sift_cli.spec import RunSpec
from sift_cli.store.atomic import write_json, write_jsonl
from sift_cli.store.prepared import load_prepared, read_jsonl

SPLITS = ("validation", "test")


@dataclass(frozen=True)
class Examples:
    """The examples of one split: the app's held-out examples per group, and lm-eval MCQ task files."""

    groups: dict[str, list[Any]]
    tasks: list[str]


def example_key(example: Any) -> str:
    """What decides an example's half: its text, or a JSON row's canonical form."""
    return example if isinstance(example, str) else json.dumps(example, sort_keys=True)


def split_rows(keys: list[str]) -> dict[str, list[int]]:
    """Indices of `keys` split into validation and test halves, balanced and decided by content.

    Rows are ordered by a hash of their text and dealt alternately, so the split does not depend on file
    order and the halves differ in size by at most one. Identical texts are dealt to the same half, so
    a duplicated example cannot sit on both sides."""
    order = sorted(range(len(keys)), key=lambda i: (hashlib.sha256(keys[i].encode("utf-8")).hexdigest(), i))
    halves: dict[str, list[int]] = {split: [] for split in SPLITS}
    seen: dict[str, str] = {}
    turn = 0
    for i in order:
        split = seen.get(keys[i])
        if split is None:
            split = SPLITS[turn % 2]
            seen[keys[i]] = split
            turn += 1
        halves[split].append(i)
    return {split: sorted(indices) for split, indices in halves.items()}


def build_examples(spec: RunSpec, tasks: list[str], directory: Path) -> dict[str, Examples]:
    """The validation and test examples of a comparison, MCQ files split into `directory`."""
    groups = get_app(spec.app).compare_examples(spec, load_prepared(Path(spec.data.path), spec.app))
    by_split: dict[str, Examples] = {split: Examples({}, []) for split in SPLITS}
    for group, rows in groups.items():
        halves = split_rows([example_key(row) for row in rows])
        if not all(halves.values()):
            raise SiftError(
                f"the {spec.app} app's held-out {group} examples number {len(rows)}; a comparison needs at least two "
                "(one for validation, one for test), and intervals need far more"
            )
        for split, indices in halves.items():
            by_split[split].groups[group] = [rows[i] for i in indices]
    for task in tasks:
        for split, path in _split_task(task, directory).items():
            by_split[split].tasks.append(f"{CLOZE}{path}" if task.startswith(CLOZE) else str(path))
    return by_split


def _split_task(task: str, directory: Path) -> dict[str, Path]:
    source = Path(task.removeprefix(CLOZE))
    if not source.is_file():
        raise SiftError(f"--tasks {task}: sift compare splits local MCQ files into validation and test; {source} is not a file")
    rows = list(read_jsonl(source))
    halves = split_rows([json.dumps(row, sort_keys=True) for row in rows])
    paths = {}
    for split, indices in halves.items():
        path = (directory / f"{source.stem}_{split}.jsonl").resolve()
        write_jsonl(path, [rows[i] for i in indices])
        paths[split] = path
    return paths


def score_model(model: Any, tokenizer: Any, spec: RunSpec, examples: dict[str, Examples], batch_size: int) -> dict[str, dict[str, list[float]]]:
    """{split: {metric: per-example scores}}: the app's metrics (`compare_scores`) and `acc:<task>`
    (1.0 right, 0.0 wrong per question)."""
    app = get_app(spec.app)
    scores: dict[str, dict[str, list[float]]] = {}
    for split, chosen in examples.items():
        metrics = app.compare_scores(model, tokenizer, spec, chosen.groups, batch_size)
        empty = [name for name, values in metrics.items() if not values]
        if empty:
            raise SiftError(f"the {split} half of the held-out data has no example to score {empty[0]} on; hold out more examples")
        if chosen.tasks:
            for name, correct in task_correctness(model, tokenizer, chosen.tasks, batch_size).items():
                metrics[f"acc:{name.replace(f'_{split}', '', 1)}"] = correct.tolist()
        scores[split] = metrics
    return scores


def cached_scores(path: Path, compute: Any) -> dict[str, dict[str, list[float]]]:
    """Scores saved at `path` by an earlier (possibly interrupted) comparison, or computed and saved."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    scores = compute()
    write_json(path, scores)
    return scores

