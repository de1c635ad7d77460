"""lm-eval in-process, for any app: built-in task names, or local multiple-choice jsonl files.

A local file `FILE.jsonl` goes through the same harness, prompt and metric as WMDP (question, lettered
choices, "Answer:", log-likelihood of the letter), so offline checks measure what users measure on the
hub benchmarks. `cloze:FILE.jsonl` scores each answer's own text instead ("Question: ...\nAnswer: <choice>"),
the format small models can do: SmolLM2-135M is at chance on lettered choices. Built-in tasks need their
datasets from the Hugging Face hub.
"""

from __future__ import annotations

import logging
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from torch import nn

from sift_cli.errors import SiftError, first_line
from sift_cli.store.prepared import read_jsonl

LETTERS = "ABCDEFGHIJ"
LOCAL_SUFFIXES = (".jsonl",)
CLOZE = "cloze:"

MCQ_PROMPT = (
    "{{question.strip()}}\n"
    "{% for choice in choices %}{{'" + LETTERS + "'[loop.index0]}}. {{choice}}\n{% endfor %}"
    "Answer:"
)
MCQ_CHOICES = "{{ " + repr(list(LETTERS)) + "[:choices|length] }}"
CLOZE_PROMPT = "Question: {{question.strip()}}\nAnswer:"


def is_local_task(task: str) -> bool:
    return task.startswith(CLOZE) or task.endswith(LOCAL_SUFFIXES) or Path(task).is_file()


def check_mcq_file(path: Path) -> int:
    """Validate a local MCQ file ({question, choices, answer} per line); return its row count."""
    if not path.is_file():
        raise SiftError(f"task file {path} does not exist; pass an existing .jsonl of {{question, choices, answer}} rows")
    if path.suffix not in LOCAL_SUFFIXES:
        raise SiftError(f"task file {path} must be a .jsonl of {{question, choices, answer}} rows")
    count = 0
    for number, row in enumerate(read_jsonl(path), start=1):
        where = f"{path}: row {number}"
        if not isinstance(row.get("question"), str):
            raise SiftError(f"{where} needs a string 'question'")
        choices = row.get("choices")
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            raise SiftError(f"{where} needs 'choices': a list of 2 to {len(LETTERS)} strings")
        answer = row.get("answer")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise SiftError(f"{where} needs 'answer': the index (0..{len(choices) - 1}) of the right choice")
        count += 1
    if count == 0:
        raise SiftError(f"task file {path} has no rows; add {{question, choices, answer}} lines")
    return count


def describe_tasks(tasks: list[str]) -> list[dict[str, Any]]:
    """Each task as it will run: its result name and format (lm-eval built-in, lettered MCQ or cloze), and a
    local file's path and SHA-256; local files are checked here, before any model loads."""
    from sift_cli.store.prepared import file_sha256

    described = []
    for task in tasks:
        if not is_local_task(task):
            described.append({"task": task, "format": "lm-eval built-in"})
            continue
        path = Path(task.removeprefix(CLOZE)).resolve()
        check_mcq_file(path)
        described.append(
            {"task": local_task_name(task), "format": "cloze" if task.startswith(CLOZE) else "lettered MCQ",
             "file": str(path), "sha256": file_sha256(path)}
        )  # fmt: skip
    names = [item["task"] for item in described]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SiftError(f"task {duplicates[0]!r} is given twice; rename one of the files or drop the duplicate")
    return described


def local_task_name(task: str) -> str:
    """The name a local task's results are keyed by: the file's stem, plus `_cloze` for `cloze:FILE`."""
    stem = Path(task.removeprefix(CLOZE)).stem
    return f"{stem}_cloze" if task.startswith(CLOZE) else stem


def mcq_task(task: str) -> dict[str, Any]:
    """An lm-eval task config for `FILE.jsonl` (WMDP's zero-shot letter format) or `cloze:FILE.jsonl`,
    named by local_task_name."""
    cloze = task.startswith(CLOZE)
    path = Path(task.removeprefix(CLOZE)).resolve()
    check_mcq_file(path)
    metrics = ["acc", "acc_norm"] if cloze else ["acc"]
    return {
        "task": local_task_name(task),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "num_fewshot": 0,
        "doc_to_text": CLOZE_PROMPT if cloze else MCQ_PROMPT,
        "doc_to_choice": "choices" if cloze else MCQ_CHOICES,
        "doc_to_target": "answer",
        "metric_list": [{"metric": name, "aggregation": "mean", "higher_is_better": True} for name in metrics],
        "metadata": {"version": 1},
    }


def run_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Evaluate `model` on lm-eval task names and/or local MCQ files: {task: {metric: value}}."""
    output, names = _evaluate(model, tokenizer, tasks, limit, batch_size, progress, log_samples=False)
    return {name: _metrics(output, name) for name in names}


def task_correctness(model: nn.Module, tokenizer: Any, tasks: list[str], batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per question, whether `model` answered right (lm-eval's `acc` of each document, in document order):
    the paired outcomes that a McNemar test between two models needs."""
    output, names = _evaluate(model, tokenizer, tasks, None, batch_size, progress=False, log_samples=True)
    correct = {}
    for name in names:
        samples = sorted(output["samples"][name], key=lambda sample: sample["doc_id"])
        correct[name] = np.array([float(sample["acc"]) for sample in samples])
    return correct


def _evaluate(
    model: nn.Module, tokenizer: Any, tasks: list[str], limit: int | None, batch_size: int, progress: bool, log_samples: bool
) -> tuple[dict[str, Any], list[str]]:
    """lm-eval's output for task names and/or local MCQ files, and the names results are keyed by.

    progress=False silences lm-eval's per-request progress bars (it passes `disable` to tqdm itself,
    so tqdm's environment switch cannot).

    Only the built-in index is loaded when a
    built-in name is asked for (indexing every built-in task costs seconds).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    specs: list[str | dict[str, Any]] = []
    names: list[str] = []
    for task in tasks:
        spec: str | dict[str, Any] = mcq_task(task) if is_local_task(task) else task
        name = spec["task"] if isinstance(spec, dict) else spec
        if name in names:
            raise SiftError(f"task {name!r} is given twice; rename one of the files or drop the duplicate")
        specs.append(spec)
        names.append(name)
    builtin = [name for name, spec in zip(names, specs) if isinstance(spec, str)]
    manager = TaskManager(include_defaults=bool(builtin))
    unknown = [name for name in builtin if name not in manager.all_tasks]
    if unknown:
        raise SiftError(
            f"unknown lm-eval task {unknown[0]!r}; use a built-in name (e.g. wmdp_bio, mmlu) or a local .jsonl MCQ file"
        )
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = (HFLM if progress else _quiet_hflm())(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        with _quiet_git_lookup():
            output = simple_evaluate(
                model=lm, tasks=specs, task_manager=manager, limit=limit, log_samples=log_samples, verbosity="ERROR"
            )
    except (ConnectionError, OSError) as exc:
        if not builtin:
            raise
        reason = first_line(exc)
        raise SiftError(
            f"cannot fetch the datasets of {', '.join(builtin)} ({reason}); go online or pass local .jsonl MCQ files with --tasks"
        ) from None
    return output, names


def _metrics(output: dict[str, Any], name: str) -> dict[str, float]:
    """`{"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}` -> `{"acc": 0.5, "acc_stderr": 0.1}`, plus
    `n_samples`, the number of examples scored (fewer than the task has under `--limit`)."""
    raw = output["results"].get(name) or output.get("groups", {}).get(name, {})
    metrics = {
        key.split(",")[0]: float(value)
        for key, value in raw.items()
        if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    samples = output.get("n-samples", {}).get(name, {})
    if "effective" in samples:
        metrics["n_samples"] = int(samples["effective"])
    return metrics


def _git_commit() -> str | None:
    """lm-eval's git lookup (its results record the commit of the working directory), with git's
    stderr discarded: outside a repository git prints `fatal: not a git repository` to the terminal."""
    try:
        found = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return found.stdout.strip() or None


@contextmanager
def _quiet_git_lookup() -> Iterator[None]:
    import lm_eval.evaluator as evaluator

    original = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = _git_commit
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def _quiet_hflm() -> type:
    """HFLM whose request loops never draw a progress bar."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM
