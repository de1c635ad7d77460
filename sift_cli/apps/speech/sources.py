"""The three reasoning sets of the speech experiments, as instructions and answers in the paper's form.

A response reads "Answer: D. outside. Explanation: ..." (multiple choice) or
"Answer: entailment. Explanation: ..." (NLI). Rows come from the hub by default, or from a local
directory of `<split>.jsonl|.json|.parquet|.csv` files in the hub's schema:
- CoS-E (`Salesforce/cos_e`, v1.11): question, choices (5 strings), answer (the choice's text),
  abstractive_explanation; the letter is the answer's position among the choices.
- e-SNLI (`esnli`): premise, hypothesis, label (0 entailment, 1 neutral, 2 contradiction), explanation_1.
- OpenBookQA (`allenai/openbookqa`, main): question_stem, choices {text, label}, answerKey; the
  explanation is the science fact `fact1` of the `additional` config, joined by id (a local file gives
  `fact1` in its own rows, as the additional config's schema has it).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from sift_cli.errors import SiftError, first_line
from sift_cli.store.prepared import read_table

DATASETS = ("cose", "esnli", "openbookqa")
HUB = {"cose": ("Salesforce/cos_e", "v1.11"), "esnli": ("esnli", None), "openbookqa": ("allenai/openbookqa", "main")}
OBQA_FACTS_CONFIG = "additional"
SPLITS = {"cose": ("train", "validation"), "esnli": ("train", "test"), "openbookqa": ("train", "test")}
COLUMNS = {
    "cose": ("question", "choices", "answer", "abstractive_explanation"),
    "esnli": ("premise", "hypothesis", "label", "explanation_1"),
    "openbookqa": ("question_stem", "choices", "answerKey", "fact1"),
}
NLI_LABELS = ("entailment", "neutral", "contradiction")
LETTERS = "ABCDEFGH"
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
MCQ_ASK = "Answer with the letter of the correct choice, then explain why."
NLI_ASK = "Does the premise entail the hypothesis? Answer with entailment, neutral or contradiction, then explain why."


@dataclass(frozen=True)
class Example:
    """One question with its gold answer: `answer` is a letter (multiple choice) or an NLI label, and
    `options` the choice texts or the NLI labels that a reply is parsed against."""

    id: str
    dataset: str
    instruction: str
    response: str
    answer: str
    options: tuple[str, ...]

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "options": list(self.options)}


def check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise SiftError(f"--dataset {dataset!r} is not supported; choose one of: {', '.join(DATASETS)}")


def _clean(text: Any) -> str:
    return " ".join(str(text or "").split())


def _phrase(text: str) -> str:
    """A choice or explanation without its closing full stop, so the response never says ".."."""
    return text.rstrip(" .")


def mcq_instruction(question: str, choices: list[str]) -> str:
    lines = [question, *(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)), MCQ_ASK]
    return "\n".join(lines)


def mcq_response(letter: str, choice: str, explanation: str) -> str:
    return f"Answer: {letter}. {_phrase(choice)}. Explanation: {_phrase(explanation)}."


def nli_instruction(premise: str, hypothesis: str) -> str:
    return f"Premise: {premise}\nHypothesis: {hypothesis}\n{NLI_ASK}"


def nli_response(label: str, explanation: str) -> str:
    return f"Answer: {label}. Explanation: {_phrase(explanation)}."


def _as_list(value: Any) -> list[Any]:
    """Lists as stored in jsonl, or as numpy arrays when read from parquet."""
    return list(value) if value is not None and not isinstance(value, (str, bytes, dict)) else []


def cose_example(row: dict[str, Any], index: int) -> Example | None:
    choices = [_clean(c) for c in _as_list(row.get("choices"))]
    answer, question, explanation = _clean(row.get("answer")), _clean(row.get("question")), _clean(row.get("abstractive_explanation"))
    if not (question and explanation and choices) or answer not in choices or len(choices) > len(LETTERS):
        return None
    letter = LETTERS[choices.index(answer)]
    instruction = mcq_instruction(question, choices)
    return Example(str(row.get("id") or index), "cose", instruction, mcq_response(letter, answer, explanation), letter, tuple(choices))


def nli_label(label: Any) -> str | None:
    """An e-SNLI label as its name: one of the names, or their index 0/1/2 (an integral number); anything
    else (-1 for no gold label, NaN, booleans, other text) has no label."""
    if isinstance(label, str):
        name = label.strip().lower()
        return name if name in NLI_LABELS else None
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        return None
    if isinstance(label, float) and not label.is_integer():
        return None
    return NLI_LABELS[int(label)] if int(label) in (0, 1, 2) else None


def esnli_example(row: dict[str, Any], index: int) -> Example | None:
    premise, hypothesis, explanation = _clean(row.get("premise")), _clean(row.get("hypothesis")), _clean(row.get("explanation_1"))
    name = nli_label(row.get("label"))
    if name is None:
        return None
    if not (premise and hypothesis and explanation):
        return None
    return Example(
        str(row.get("id") or index), "esnli", nli_instruction(premise, hypothesis), nli_response(name, explanation), name, NLI_LABELS
    )


def obqa_example(row: dict[str, Any], index: int) -> Example | None:
    choices_field = row.get("choices") or {}
    texts = [_clean(t) for t in _as_list(choices_field.get("text"))] if isinstance(choices_field, dict) else []
    labels = [str(label).strip() for label in _as_list(choices_field.get("label"))] if isinstance(choices_field, dict) else []
    key = str(row.get("answerKey") or "").strip()
    question, fact = _clean(row.get("question_stem")), _clean(row.get("fact1"))
    if not (question and fact and texts) or len(texts) != len(labels) or key not in labels or len(texts) > len(LETTERS):
        return None
    position = labels.index(key)
    letter = LETTERS[position]
    response = mcq_response(letter, texts[position], fact)
    return Example(str(row.get("id") or index), "openbookqa", mcq_instruction(question, texts), response, letter, tuple(texts))


CONVERTERS: dict[str, Callable[[dict[str, Any], int], Example | None]] = {
    "cose": cose_example,
    "esnli": esnli_example,
    "openbookqa": obqa_example,
}


def _hub_rows(dataset_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    import datasets
    from sift_cli.hf.hub import require_hub

    require_hub(f"the dataset {dataset_id}")
    try:
        table = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:
        reason = first_line(exc)
        offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise SiftError(
            f"cannot load {dataset_id} ({config or 'default'}, {split}){offline}: {reason}; "
            f"go online or pass --source DIR with {split}.jsonl in its schema"
        ) from None
    return [dict(row) for row in table]


def _local_rows(directory: Path, dataset: str, split: str) -> list[dict[str, Any]]:
    if not directory.is_dir():
        raise SiftError(f"--source {directory} is neither a hub id nor an existing directory of <split>.jsonl files")
    for suffix in TABLE_SUFFIXES:
        path = directory / f"{split}{suffix}"
        if path.is_file():
            return read_table(path, COLUMNS[dataset])
    raise SiftError(f"{directory} has no {split}.jsonl (or .json/.parquet/.csv); name the files after the splits")


def is_local(source: str) -> bool:
    """A path on this machine rather than a hub id (hub ids never start with '.', '/' or '~')."""
    return Path(source).exists() or source.startswith((".", "/", "~"))


def load_rows(dataset: str, source: str | None, split: str) -> list[dict[str, Any]]:
    """Raw rows of one split: the hub (default ids above) or a local directory in the same schema."""
    check_dataset(dataset)
    if source is not None and is_local(source):
        return _local_rows(Path(source).expanduser(), dataset, split)
    hub_id, config = HUB[dataset]
    rows = _hub_rows(source or hub_id, config, split)
    if dataset == "openbookqa":
        facts = {row["id"]: row.get("fact1") for row in _hub_rows(source or hub_id, OBQA_FACTS_CONFIG, split)}
        rows = [{**row, "fact1": facts.get(row.get("id"))} for row in rows]
    return rows


def load_examples(dataset: str, source: str | None, split: str) -> tuple[list[Example], int]:
    """Examples of one split and how many rows were dropped (no gold answer, empty fields, answer not
    among the choices)."""
    rows = load_rows(dataset, source, split)
    convert = CONVERTERS[dataset]
    examples = [example for index, row in enumerate(rows) if (example := convert(row, index)) is not None]
    return examples, len(rows) - len(examples)
