"""The safety app's data: PKU-SafeRLHF preference pairs, Alpaca instructions and harmful-prompt sets.

Each source has a real Hugging Face loader (what users get by default) and a local-file alternative in
the same schema (what tests and offline runs use), so the conversion code is the same either way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sift_cli.errors import SiftError, first_line
from sift_cli.store.prepared import read_table

PKU_ID = "PKU-Alignment/PKU-SafeRLHF"
PKU_CONFIGS = ("default", "alpaca-7b", "alpaca2-7b", "alpaca3-8b")
PKU_COLUMNS = (
    "prompt",
    "response_0",
    "response_1",
    "is_response_0_safe",
    "is_response_1_safe",
    "better_response_id",
    "safer_response_id",
)
ALPACA_ID = "tatsu-lab/alpaca"
ALPACA_COLUMNS = ("instruction", "input", "output")
HUB = "hub"

PREFERENCES = ("safer", "better")

# The two Stanford Alpaca templates. Rendering for a model without a chat template adds the newline
# after "### Response:" (sift_cli.evaluation.generate.prompt_ids), as in the dataset's `text` column.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt: the with-input template when there is an input, the shorter one otherwise."""
    if input_text.strip():
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


@dataclass(frozen=True)
class PromptSet:
    """A harmful-prompt benchmark on the hub: where its prompts live and which rows are the harmful ones."""

    dataset_id: str
    config: str | None
    split: str
    column: str
    keep: tuple[str, str] | None = None
    load_kwargs: dict[str, Any] = field(default_factory=dict)


PROMPT_SETS = {
    "strongreject": PromptSet("walledai/StrongREJECT", None, "train", "prompt"),
    "jailbreakbench": PromptSet("JailbreakBench/JBB-Behaviors", "behaviors", "harmful", "Goal"),
    "wildjailbreak": PromptSet(
        "allenai/wildjailbreak",
        "eval",
        "train",
        "adversarial",
        keep=("data_type", "adversarial_harmful"),
        load_kwargs={"delimiter": "\t", "keep_default_na": False},
    ),
}


def load_hub_rows(dataset_id: str, config: str | None, split: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a hub dataset split, with a one-line error that names the offline alternative."""
    import datasets
    from sift_cli.hf.hub import require_hub

    require_hub(f"the dataset {dataset_id}")
    try:
        table = datasets.load_dataset(dataset_id, config, split=split, **kwargs)
    except Exception as exc:
        reason = first_line(exc)
        raise SiftError(
            f"cannot load {dataset_id} ({config or 'default'}, {split}): {reason}; "
            "go online (and accept the dataset's terms if it is gated) or pass a local file instead"
        ) from None
    return [dict(row) for row in table]


def _as_bool(value: Any, where: str) -> bool:
    """PKU safety flags as booleans, whether the file stored them as JSON booleans, 0/1 or strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "0", "1"):
        return value.strip().lower() in ("true", "1")
    raise SiftError(f"{where} must be true or false, got {value!r}; fix the row or drop it")


def _as_choice(value: Any, where: str) -> int:
    if isinstance(value, bool) or value not in (0, 1, "0", "1"):
        raise SiftError(f"{where} must be 0 or 1 (which response), got {value!r}; fix the row or drop it")
    return int(value)


def check_preference(prefer: str) -> None:
    if prefer not in PREFERENCES:
        raise SiftError(f"--prefer {prefer!r} is not a PKU preference; use 'safer' or 'better'")


def pku_pairs(rows: list[dict[str, Any]], prefer: str, exactly_one_safe: bool) -> list[dict[str, Any]]:
    """PKU-SafeRLHF rows -> {prompt, chosen, rejected} preference pairs.

    `prefer="safer"` (the paper's g) takes `safer_response_id` as chosen; `"better"` takes the
    helpfulness preference `better_response_id`. `exactly_one_safe` keeps only rows whose two responses
    differ in safety, the pairs that carry a clear safe-vs-unsafe signal. Rows whose two responses are
    identical or empty carry no preference and are dropped.
    """
    check_preference(prefer)
    pairs = []
    for number, row in enumerate(rows, start=1):
        missing = [column for column in PKU_COLUMNS if column not in row]
        if missing:
            raise SiftError(f"PKU row {number} lacks {', '.join(missing)}; rows need {', '.join(PKU_COLUMNS)}")
        safe = (
            _as_bool(row["is_response_0_safe"], f"PKU row {number} is_response_0_safe"),
            _as_bool(row["is_response_1_safe"], f"PKU row {number} is_response_1_safe"),
        )
        if exactly_one_safe and safe[0] == safe[1]:
            continue
        column = "safer_response_id" if prefer == "safer" else "better_response_id"
        chosen = _as_choice(row[column], f"PKU row {number} {column}")
        responses = (str(row["response_0"] or ""), str(row["response_1"] or ""))
        prompt = str(row["prompt"] or "")
        if not prompt.strip() or not all(r.strip() for r in responses) or responses[0] == responses[1]:
            continue
        pairs.append(
            {
                "prompt": prompt,
                "chosen": responses[chosen],
                "rejected": responses[1 - chosen],
                "chosen_safe": safe[chosen],
                "rejected_safe": safe[1 - chosen],
            }
        )
    return pairs


def alpaca_examples(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Alpaca rows -> {instruction, input, output}; rows without an instruction or output are dropped."""
    examples = []
    for number, row in enumerate(rows, start=1):
        missing = [column for column in ("instruction", "output") if column not in row]
        if missing:
            raise SiftError(f"Alpaca row {number} lacks {', '.join(missing)}; rows need {', '.join(ALPACA_COLUMNS)}")
        instruction, output = str(row["instruction"] or ""), str(row["output"] or "")
        if instruction.strip() and output.strip():
            examples.append({"instruction": instruction, "input": str(row.get("input") or ""), "output": output})
    return examples


def load_pku(source: str, config: str, split: str) -> list[dict[str, Any]]:
    """Raw PKU-SafeRLHF rows from the hub (`source="hub"`) or a local file in the hub's schema."""
    if source == HUB:
        if config not in PKU_CONFIGS:
            raise SiftError(f"--pku-config {config!r} is not a PKU-SafeRLHF config; choose one of: {', '.join(PKU_CONFIGS)}")
        return load_hub_rows(PKU_ID, config, split)
    return read_table(Path(source), PKU_COLUMNS)


def load_alpaca(source: str) -> list[dict[str, Any]]:
    """Raw Alpaca rows from the hub (`source="hub"`) or a local file with instruction/input/output."""
    if source == HUB:
        return load_hub_rows(ALPACA_ID, None, "train")
    return read_table(Path(source), ("instruction", "output"))


def sample_rows(rows: list[Any], max_rows: int | None, seed: int) -> list[Any]:
    """At most `max_rows` rows, drawn at random but kept in file order, so a cap does not favour the
    head of a file sorted by source."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
    return [rows[i] for i in keep]


def load_prompt_set(name: str, limit: int | None = None) -> list[str]:
    """Prompts of a named harmful-prompt set (strongreject, jailbreakbench, wildjailbreak) or a local file
    with a `prompt` column."""
    if name in PROMPT_SETS:
        spec = PROMPT_SETS[name]
        rows = load_hub_rows(spec.dataset_id, spec.config, spec.split, **spec.load_kwargs)
        if spec.keep is not None:
            column, value = spec.keep
            rows = [row for row in rows if row.get(column) == value]
        prompts = [str(row[spec.column]) for row in rows if str(row.get(spec.column) or "").strip()]
    else:
        path = Path(name)
        if not path.is_file():
            raise SiftError(
                f"safety set {name!r} is neither a known set ({', '.join(PROMPT_SETS)}) nor an existing file; "
                "pass one of those names or a .jsonl/.json/.csv/.parquet file with a 'prompt' column"
            )
        prompts = [str(row["prompt"]) for row in read_table(path, ("prompt",)) if str(row.get("prompt") or "").strip()]
    if not prompts:
        raise SiftError(f"safety set {name!r} has no prompts; check the file or the dataset")
    return prompts[:limit] if limit else prompts
