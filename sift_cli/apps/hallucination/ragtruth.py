"""RAGTruth: reading its two jsonl files, filtering responses, and turning character spans into token labels.

RAGTruth (github.com/ParticleMedia/RAGTruth, dataset/) publishes `response.jsonl` (one generated answer
per line, with hallucinated spans as end-exclusive character offsets into `response`) and
`source_info.jsonl` (the task, the retrieved content and the prompt that produced the answers). Spans
stay character offsets in the prepared data, so one prepared directory serves any model; token labels
are computed at train time from the model's own fast tokenizer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from sift_cli.errors import SiftError
from sift_cli.store.atomic import write_with
from sift_cli.store.prepared import read_jsonl

DEFAULT_SOURCE = "https://raw.githubusercontent.com/ParticleMedia/RAGTruth/main/dataset"
RESPONSE_FILE = "response.jsonl"
SOURCE_FILE = "source_info.jsonl"
RESPONSE_FIELDS = ("id", "source_id", "model", "labels", "split", "quality", "response")
SOURCE_FIELDS = ("source_id", "task_type", "source_info", "prompt")
LABEL_TYPES = ("Evident Conflict", "Subtle Conflict", "Evident Baseless Info", "Subtle Baseless Info")
TASK_TYPES = ("QA", "Summary", "Data2txt")
SPLITS = ("train", "test")
NEARBY = 32
"""How far (characters) a label's text may sit from its given start and still be re-located onto."""

Span = tuple[int, int]


@dataclass(frozen=True)
class Filters:
    """Which responses and which spans count; recorded verbatim in the manifest."""

    task_types: tuple[str, ...] = TASK_TYPES
    generators: tuple[str, ...] = ()
    label_types: tuple[str, ...] = LABEL_TYPES
    drop_implicit_true: bool = True
    quality: str | None = "good"
    max_rows: int | None = None

    def __post_init__(self) -> None:
        unknown_tasks = [task for task in self.task_types if task not in TASK_TYPES]
        if unknown_tasks:
            raise SiftError(f"unknown task type {unknown_tasks[0]!r}; choose from {', '.join(TASK_TYPES)}")
        known_labels = {label.lower() for label in LABEL_TYPES}
        unknown_labels = [label for label in self.label_types if label.lower() not in known_labels]
        if unknown_labels:
            raise SiftError(f"unknown label type {unknown_labels[0]!r}; choose from {', '.join(LABEL_TYPES)}")
        if self.max_rows is not None and self.max_rows < 1:
            raise SiftError(f"--max-rows {self.max_rows} keeps nothing; pass a positive number or leave it out")

    def manifest(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


@dataclass
class Example:
    """One response with its prompt, the spans that count as hallucinated and the spans nobody trains on."""

    id: str
    source_id: str
    generator: str
    task_type: str
    prompt: str
    reference: str
    response: str
    spans: list[Span] = field(default_factory=list)
    ignored: list[Span] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "spans": [list(s) for s in self.spans], "ignored": [list(s) for s in self.ignored]}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Example":
        spans = [tuple(s) for s in row["spans"]]
        ignored = [tuple(s) for s in row["ignored"]]
        return cls(**{**row, "spans": spans, "ignored": ignored})


def fetch_sources(source: str, cache: Path) -> Path:
    """A local directory holding both RAGTruth files: `source` itself, or a download of `source/<file>`."""
    if not source.startswith(("http://", "https://")):
        path = Path(source)
        for name in (RESPONSE_FILE, SOURCE_FILE):
            if not (path / name).is_file():
                raise SiftError(
                    f"{path} has no {name}; pass the RAGTruth dataset/ directory (with {RESPONSE_FILE} and {SOURCE_FILE}) or its URL"
                )
        return path
    cache.mkdir(parents=True, exist_ok=True)
    for name in (RESPONSE_FILE, SOURCE_FILE):
        target = cache / name
        if not target.is_file():
            write_with(target, lambda tmp, url=f"{source.rstrip('/')}/{name}": _download(url, tmp))
    return cache


def _download(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=120) as response, open(target, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SiftError(f"cannot download {url} ({reason}); go online or pass a local RAGTruth dataset/ directory") from None


def load_examples(directory: Path, filters: Filters) -> tuple[dict[str, list[Example]], dict[str, int], int]:
    """Train and test examples after the filters, how many rows each filter dropped, and how many spans
    were re-located onto their text (see `check_span`)."""
    sources = _read_sources(directory / SOURCE_FILE)
    kept: dict[str, list[Example]] = {split: [] for split in SPLITS}
    dropped = {"task_type": 0, "generator": 0, "quality": 0, "split": 0, "max_rows": 0}
    relocated = 0
    wanted_labels = {label.lower() for label in filters.label_types}
    number = 0
    for number, row in enumerate(read_jsonl(directory / RESPONSE_FILE), start=1):
        where = f"{directory / RESPONSE_FILE}: row {number} (id {row.get('id')!r})"
        _require(row, RESPONSE_FIELDS, where)
        for name in ("model", "split", "quality"):
            if not isinstance(row[name], str):
                raise SiftError(f"{where}: {name!r} must be a string, not {type(row[name]).__name__} ({row[name]!r}); fix the row")
        source = sources.get(str(row["source_id"]))
        if source is None:
            raise SiftError(f"{where}: source_id {row['source_id']!r} is not in {SOURCE_FILE}; use files from one RAGTruth release")
        split = row["split"]
        if split not in kept:
            dropped["split"] += 1
            continue
        if source["task_type"] not in filters.task_types:
            dropped["task_type"] += 1
            continue
        if filters.generators and row["model"] not in filters.generators:
            dropped["generator"] += 1
            continue
        if filters.quality is not None and row["quality"] != filters.quality:
            dropped["quality"] += 1
            continue
        if filters.max_rows is not None and len(kept[split]) >= filters.max_rows:
            dropped["max_rows"] += 1
            continue
        spans, ignored, moved = _split_labels(row, wanted_labels, filters.drop_implicit_true, where)
        relocated += moved
        kept[split].append(
            Example(
                id=str(row["id"]),
                source_id=str(row["source_id"]),
                generator=str(row["model"]),
                task_type=source["task_type"],
                prompt=source["prompt"],
                reference=reference_text(source),
                response=row["response"],
                spans=spans,
                ignored=ignored,
            )
        )
    if number == 0:
        raise SiftError(f"{directory / RESPONSE_FILE} holds no responses; pass a complete RAGTruth dataset/ directory")
    return kept, dropped, relocated


def _read_sources(path: Path) -> dict[str, dict[str, Any]]:
    sources = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        _require(row, SOURCE_FIELDS, f"{path}: row {number}")
        sources[str(row["source_id"])] = row
    return sources


def _require(row: dict[str, Any], fields: Sequence[str], where: str) -> None:
    missing = [name for name in fields if name not in row]
    if missing:
        raise SiftError(f"{where} lacks field(s) {', '.join(missing)}; is this a RAGTruth file?")


def _split_labels(
    row: dict[str, Any], wanted: set[str], drop_implicit_true: bool, where: str
) -> tuple[list[Span], list[Span], int]:
    """Counted spans, spans of uncounted hallucination types (kept out of f as well as g), and how many
    spans were re-located onto their text.

    An `implicit_true` span is correct information absent from the source; dropping it makes its
    tokens ordinary response tokens.
    """
    response = row["response"]
    if not isinstance(response, str) or not isinstance(row["labels"], list):
        raise SiftError(f"{where}: 'response' must be a string and 'labels' a list; fix the row")
    spans: list[Span] = []
    ignored: list[Span] = []
    relocated = 0
    for index, label in enumerate(row["labels"]):
        if not isinstance(label, dict):
            raise SiftError(f"{where}: label {index} is a {type(label).__name__}, not an object with start, end and text; fix the row")
        start, end = label.get("start"), label.get("end")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            raise SiftError(f"{where}: label {index} offsets must be integers, got start={start!r}, end={end!r}; fix the row")
        if not 0 <= start < end <= len(response):
            raise SiftError(
                f"{where}: label {index} span [{start}, {end}) is not inside the {len(response)}-character response; fix its offsets"
            )
        located = check_span(response, start, end, label.get("text"), f"{where}: label {index}")
        relocated += located != (start, end)
        if drop_implicit_true and label.get("implicit_true"):
            continue
        (spans if str(label.get("label_type", "")).lower() in wanted else ignored).append(located)
    return sorted(spans), sorted(ignored), relocated


def check_span(response: str, start: int, end: int, text: Any, where: str) -> Span:
    """The span of a label whose offsets must cover its `text`: as given when they do; moved onto the
    text when it occurs exactly once within NEARBY characters of the given start (offsets shifted by a
    few characters, as in some RAGTruth rows); an error naming the label otherwise."""
    if not isinstance(text, str) or response[start:end] == text:
        return start, end
    found = []
    position = response.find(text, max(0, start - NEARBY))
    while 0 <= position <= start + NEARBY:
        found.append(position)
        position = response.find(text, position + 1)
    if len(found) == 1 and text:
        return found[0], found[0] + len(text)
    raise SiftError(
        f"{where}: its text {text[:40]!r} is not at [{start}, {end}) (the response has {response[start:end][:40]!r} there) "
        f"and occurs {'nowhere' if not found else f'{len(found)} times'} within {NEARBY} characters; fix its offsets"
    )


def reference_text(source: dict[str, Any]) -> str:
    """What a judge checks an answer against: the passages and question, the article, or the data."""
    info = source["source_info"]
    if source["task_type"] == "QA" and isinstance(info, dict):
        return f"Question: {info.get('question', '')}\n\nPassages:\n{info.get('passages', '')}"
    return info if isinstance(info, str) else json.dumps(info, ensure_ascii=False)


def overlaps(offsets: Iterable[Span], spans: Sequence[Span]) -> list[bool]:
    """Whether each token's [start, end) character range overlaps any span; empty ranges never do."""
    return [a < b and any(a < end and start < b for start, end in spans) for a, b in offsets]
