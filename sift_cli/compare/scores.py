"""Per-example scores of one model on the comparison's validation and test examples, with ids and clusters.

Configurations are chosen on validation and reported on test, so the two halves must never share an
example, nor two examples that are not independent: every held-out row gets a cluster (the app's
`compare_cluster`, e.g. a RAGTruth response's source passage; by default the row itself), clusters are
merged where rows are near-duplicates (the same normalized text, or overlapping windows of one text),
and whole clusters are dealt to the halves. MCQ files are split the same way. Each score is stored
with its example's id (a content hash) and cluster, so that two models are paired by id and intervals
resample clusters.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sift_cli.apps import get_app
from sift_cli.errors import SiftError
from sift_cli.evaluation.lmeval import CLOZE, task_correctness
from sift_cli.spec import RunSpec
from sift_cli.store.atomic import write_json, write_jsonl
from sift_cli.store.prepared import PreparedData, load_prepared, read_jsonl

SPLITS = ("validation", "test")
SHINGLE_WORDS = 8
"""Rows sharing a run of this many normalized words in one field (overlapping windows of one text, a
quoted passage) are one cluster: conservative, since it can only make fewer, larger clusters."""
SHINGLE_ROWS = (3, 0.02)
"""A run of words found in more rows than max(3, 2% of the rows) is boilerplate (an instruction
template, a licence line) and links nothing; overlapping windows share a run with their neighbours only."""

Scored = dict[str, list[Any]]
"""One metric's scores: {"id": [...], "cluster": [...], "score": [...]}, aligned."""


@dataclass(frozen=True)
class Examples:
    """The examples of one split: the app's held-out rows per group, lm-eval MCQ task files, and the
    cluster of every example id (rows and questions)."""

    groups: dict[str, list[Any]]
    tasks: list[str]
    task_rows: dict[str, list[Any]] = field(default_factory=dict)
    clusters: dict[str, str] = field(default_factory=dict)


def example_key(example: Any) -> str:
    """What identifies an example: its text, or a JSON row's canonical form."""
    return example if isinstance(example, str) else json.dumps(example, sort_keys=True)


def example_id(example: Any) -> str:
    """A short content hash: pairing and provenance key of an example."""
    return hashlib.sha256(example_key(example).encode("utf-8")).hexdigest()[:16]


def normalized_fields(example: Any) -> dict[str, list[str]]:
    """Each text field of the example (the example itself if it is a text), lower-cased, punctuation
    dropped, split into words; keyed by the field's path, so that only like fields are compared."""
    return {path: re.sub(r"[^\w\s]", " ", text.lower()).split() for path, text in _strings(example, "")}


def _strings(value: Any, path: str) -> Any:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key in sorted(value):
            yield from _strings(value[key], f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item, f"{path}[]")


def cluster_rows(rows: list[Any], declared: Callable[[Any], str] | None = None) -> list[str]:
    """A cluster label per row: rows with the same declared cluster, the same normalized text, or a shared
    run of SHINGLE_WORDS words in one field share one; the label is the smallest member id, so it does
    not depend on row order."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first: dict[str, int] = {}
    shingles: list[set[str]] = []
    for i, row in enumerate(rows):
        fields = normalized_fields(row)
        whole = json.dumps(sorted((path, " ".join(words)) for path, words in fields.items()))
        for key in ((f"declared:{declared(row)}",) if declared else ()) + (f"text:{whole}",):
            if key in first:
                union(i, first[key])
            else:
                first[key] = i
        shingles.append({f"{path}:{' '.join(words[k : k + SHINGLE_WORDS])}" for path, words in fields.items()
                         for k in range(len(words) - SHINGLE_WORDS + 1)})  # fmt: skip
    holders: dict[str, list[int]] = {}
    for i, found in enumerate(shingles):
        for shingle in found:
            holders.setdefault(shingle, []).append(i)
    most = max(SHINGLE_ROWS[0], int(SHINGLE_ROWS[1] * len(rows)))
    for members in holders.values():
        if len(members) <= most:
            for other in members[1:]:
                union(other, members[0])
    ids = [example_id(row) for row in rows]
    label: dict[int, str] = {}
    for i in range(len(rows)):
        root = find(i)
        label[root] = min(label.get(root, ids[i]), ids[i])
    return [label[find(i)] for i in range(len(rows))]


def split_clusters(clusters: list[str]) -> dict[str, list[int]]:
    """Row indices split into validation and test by cluster: clusters are ordered by a hash of their
    label and dealt alternately, so the split does not depend on file order, no cluster has rows on
    both sides, and the halves differ by at most one cluster."""
    order = sorted(set(clusters), key=lambda label: hashlib.sha256(label.encode("utf-8")).hexdigest())
    side = {label: SPLITS[turn % 2] for turn, label in enumerate(order)}
    halves: dict[str, list[int]] = {split: [] for split in SPLITS}
    for i, label in enumerate(clusters):
        halves[side[label]].append(i)
    return halves


def build_examples(spec: RunSpec, tasks: list[str], directory: Path, data: PreparedData | None = None) -> dict[str, Examples]:
    """The validation and test examples of a comparison, MCQ files split into `directory`; `data` is
    the prepared data when the caller has already loaded (and so verified) it.

    Clusters are formed over all of the app's groups together, so related rows in two groups (the
    responses of one passage with and without a span) land in one half."""
    app = get_app(spec.app)
    groups = app.compare_examples(spec, data or load_prepared(Path(spec.data.path), spec.app))
    flat = [(group, row) for group, rows in groups.items() for row in rows]
    labels = cluster_rows([row for _, row in flat], getattr(app, "compare_cluster", None))
    halves = split_clusters(labels)
    by_split: dict[str, Examples] = {split: Examples({group: [] for group in groups}, []) for split in SPLITS}
    for split, indices in halves.items():
        for i in indices:
            group, row = flat[i]
            by_split[split].groups[group].append(row)
            by_split[split].clusters[example_id(row)] = labels[i]
    for group, rows in groups.items():
        if not all(by_split[split].groups[group] for split in SPLITS):
            raise SiftError(
                f"the {spec.app} app's held-out {group} examples number {len(rows)} in "
                f"{len({labels[i] for i, (g, _) in enumerate(flat) if g == group})} independent clusters; a comparison "
                "needs at least two clusters (one for validation, one for test), and intervals need far more"
            )
    for task in tasks:
        for split, (path, rows, clusters) in _split_task(task, directory).items():
            name = f"{CLOZE}{path}" if task.startswith(CLOZE) else str(path)
            by_split[split].tasks.append(name)
            by_split[split].task_rows[name] = rows
            by_split[split].clusters.update(clusters)
    return by_split


def _split_task(task: str, directory: Path) -> dict[str, tuple[Path, list[Any], dict[str, str]]]:
    source = Path(task.removeprefix(CLOZE))
    if not source.is_file():
        raise SiftError(f"--tasks {task}: sift compare splits local MCQ files into validation and test; {source} is not a file")
    rows = list(read_jsonl(source))
    labels = cluster_rows(rows)
    out = {}
    for split, indices in split_clusters(labels).items():
        path = (directory / f"{source.stem}_{split}.jsonl").resolve()
        chosen = [rows[i] for i in indices]
        write_jsonl(path, chosen)
        out[split] = (path, chosen, {example_id(rows[i]): labels[i] for i in indices})
    return out


def examples_digest(examples: dict[str, Examples]) -> str:
    """A hash of every example id, cluster and task file of both halves: scores cached under another
    digest were computed on other examples."""
    content = {split: {"clusters": sorted(found.clusters.items()), "tasks": [Path(t.removeprefix(CLOZE)).name for t in found.tasks]}
               for split, found in examples.items()}  # fmt: skip
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def score_model(model: Any, tokenizer: Any, spec: RunSpec, examples: dict[str, Examples], batch_size: int) -> dict[str, dict[str, Scored]]:
    """{split: {metric: {"id", "cluster", "score"}}}: the app's metrics (`compare_scores`) and
    `acc:<task>` (1.0 right, 0.0 wrong per question)."""
    app = get_app(spec.app)
    scores: dict[str, dict[str, Scored]] = {}
    for split, chosen in examples.items():
        metrics: dict[str, Scored] = {}
        for name, (rows, values) in app.compare_scores(model, tokenizer, spec, chosen.groups, batch_size).items():
            if not values:
                raise SiftError(f"the {split} half of the held-out data has no example to score {name} on; hold out more examples")
            metrics[name] = _scored(rows, values, chosen.clusters)
        if chosen.tasks:
            for task, (name, correct) in zip(chosen.tasks, task_correctness(model, tokenizer, chosen.tasks, batch_size).items()):
                metrics[f"acc:{name.replace(f'_{split}', '', 1)}"] = _scored(chosen.task_rows[task], correct.tolist(), chosen.clusters)
        scores[split] = metrics
    return scores


def _scored(rows: list[Any], values: list[float], clusters: dict[str, str]) -> Scored:
    if len(rows) != len(values):
        raise ValueError(f"{len(values)} scores for {len(rows)} examples")
    ids = [example_id(row) for row in rows]
    return {"id": ids, "cluster": [clusters[i] for i in ids], "score": [float(v) for v in values]}


def cached_scores(path: Path, digest: str, compute: Callable[[], dict[str, dict[str, Scored]]]) -> dict[str, dict[str, Scored]]:
    """Scores saved at `path` by an earlier (possibly interrupted) run of this comparison on the same
    examples, or computed and saved; scores of other examples are computed again."""
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(saved, dict) and saved.get("examples") == digest:
            return saved["scores"]
    scores = compute()
    write_json(path, {"examples": digest, "scores": scores})
    return scores
