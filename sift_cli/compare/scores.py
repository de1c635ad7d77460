"""Per-example scores of one model on the comparison's validation and test examples.

Learning rates are chosen on validation and only the chosen runs are reported on test, so the two must
never share an example: every held-out set is split once, by content, into two disjoint halves
(`split_rows`), and each MCQ file into two files. Scores are kept per example (a text's mean NLL per
token, a question's right/wrong) so that intervals can resample examples and two models can be paired
example by example.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sift_cli.errors import SiftError
from sift_cli.evaluation.lmeval import CLOZE, task_correctness
from sift_cli.spec import RunSpec
from sift_cli.store.atomic import write_json, write_jsonl
from sift_cli.store.prepared import load_prepared, read_jsonl

SPLITS = ("validation", "test")


@dataclass(frozen=True)
class Examples:
    """The examples of one split: held-out texts per topic, and lm-eval MCQ task files."""

    texts: dict[str, list[str]]
    tasks: list[str]


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
    if spec.app != "unlearning":
        raise SiftError(
            f"sift compare scores held-out text per example, which the {spec.app} app does not provide yet; "
            "compare unlearning runs, or compare the others with `sift evaluate` per run"
        )
    from sift_cli.apps.unlearning.app import heldout_texts

    texts = heldout_texts(load_prepared(Path(spec.data.path), spec.app))
    if set(texts) != {"forget", "retain"}:
        raise SiftError(f"the prepared data at {spec.data.path} has no held-out forget and retain texts to compare on")
    by_split: dict[str, Examples] = {split: Examples({}, []) for split in SPLITS}
    for topic, rows in texts.items():
        for split, indices in split_rows(rows).items():
            by_split[split].texts[topic] = [rows[i] for i in indices]
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
    """{split: {metric: per-example scores}}: `<topic>_nll` (mean NLL per token of each text) and
    `acc:<task>` (1.0 right, 0.0 wrong per question)."""
    from sift_cli.apps.unlearning.app import text_nll

    scores: dict[str, dict[str, list[float]]] = {}
    for split, chosen in examples.items():
        metrics: dict[str, list[float]] = {}
        for topic, texts in chosen.texts.items():
            nll, tokens = text_nll(model, tokenizer, texts, spec.data.max_length, batch_size)
            metrics[f"{topic}_nll"] = (nll / np.maximum(tokens, 1)).tolist()
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

