"""lm-eval glue and `evaluate_run`: local MCQ accuracy equals a hand-computed log-likelihood argmax."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from sift_cli.apps.base import EvalOptions
from sift_cli.apps.unlearning import app as unlearning
from sift_cli.errors import SiftError
from sift_cli.evaluation import lmeval
from sift_cli.evaluation.evaluate import evaluate_run
from sift_cli.output import configure_output
from sift_cli.spec import RunSpec

QUESTIONS = [
    {"question": "What pumps blood?", "choices": ["the heart", "the lungs", "a rock", "the sea"], "answer": 0},
    {"question": "What do antibiotics kill?", "choices": ["viruses", "bacteria", "dogs"], "answer": 1},
    {"question": "Which fox is quick?", "choices": ["the lazy one", "the brown one"], "answer": 1},
    {"question": "What trains the immune system?", "choices": ["a vaccine", "a fox", "music", "sport", "history"], "answer": 0},
    {"question": "Where is history described?", "choices": ["in Wikipedia articles", "in cells"], "answer": 0},
    {"question": "What predicts the next token?", "choices": ["a dog", "language models", "veins"], "answer": 2},
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tokenizer


@pytest.fixture(scope="module")
def mcq_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tasks") / "toy_mcq.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS), encoding="utf-8")
    return path


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context), tokenized as lm-eval does: the whole string, split after the context."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole_ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([whole_ids])).logits[0].log_softmax(-1)
    return sum(logprobs[i - 1, whole_ids[i]].item() for i in range(len(context_ids), len(whole_ids)))


def manual_accuracy(model, tokenizer, cloze: bool) -> float:
    correct = 0
    for row in QUESTIONS:
        if cloze:
            context = f"Question: {row['question']}\nAnswer:"
            continuations = [" " + choice for choice in row["choices"]]
        else:
            lines = "".join(f"{lmeval.LETTERS[i]}. {choice}\n" for i, choice in enumerate(row["choices"]))
            context = f"{row['question']}\n{lines}Answer:"
            continuations = [" " + lmeval.LETTERS[i] for i in range(len(row["choices"]))]
        scores = [continuation_logprob(model, tokenizer, context, c) for c in continuations]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(QUESTIONS)


def test_local_mcq_accuracy_matches_manual_argmax(tiny, mcq_file: Path) -> None:
    model, tokenizer = tiny
    results = lmeval.run_tasks(model, tokenizer, [str(mcq_file), f"cloze:{mcq_file}"], batch_size=4)
    assert set(results) == {"toy_mcq", "toy_mcq_cloze"}
    assert results["toy_mcq"]["acc"] == pytest.approx(manual_accuracy(model, tokenizer, cloze=False))
    assert results["toy_mcq_cloze"]["acc"] == pytest.approx(manual_accuracy(model, tokenizer, cloze=True))
    assert {"acc", "acc_stderr"} <= set(results["toy_mcq"])
    assert "acc_norm" in results["toy_mcq_cloze"]


def test_quiet_evaluation_draws_no_progress_bars_and_scores_the_same(tiny, mcq_file: Path, capfd) -> None:
    model, tokenizer = tiny
    configure_output(verbose=True)  # as `sift --verbose`: an earlier quiet command in this process is undone
    loud = lmeval.run_tasks(model, tokenizer, [f"cloze:{mcq_file}"], batch_size=4)
    assert "Running loglikelihood requests" in capfd.readouterr().err
    quiet = lmeval.run_tasks(model, tokenizer, [f"cloze:{mcq_file}"], batch_size=4, progress=False)
    assert "Running loglikelihood requests" not in capfd.readouterr().err
    assert quiet == loud


def test_letter_prompt_is_wmdp_format(mcq_file: Path) -> None:
    from lm_eval.utils import apply_template

    config = lmeval.mcq_task(str(mcq_file))
    row = {"question": " Q? ", "choices": ["w", "x", "y", "z"]}
    assert apply_template(config["doc_to_text"], row) == "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    assert apply_template(config["doc_to_choice"], row) == "['A', 'B', 'C', 'D']"


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{"question": "q", "choices": ["a", "b"], "answer": 2}], "needs 'answer'"),
        ([{"question": "q", "choices": "ab", "answer": 0}], "needs 'choices'"),
        ([{"choices": ["a", "b"], "answer": 0}], "needs a string 'question'"),
        ([], "has no rows"),
    ],
)
def test_bad_mcq_files_are_one_line_errors(tmp_path: Path, rows: list[dict], needle: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(SiftError) as err:
        lmeval.mcq_task(str(path))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_task_and_missing_file(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    with pytest.raises(SiftError, match="does not exist"):
        lmeval.run_tasks(model, tokenizer, [str(tmp_path / "nope.jsonl")])
    with pytest.raises(SiftError, match="unknown lm-eval task 'no_such_task_xyz'"):
        lmeval.run_tasks(model, tokenizer, ["no_such_task_xyz"])


def test_perplexity_is_exp_mean_token_nll(tiny) -> None:
    model, tokenizer = tiny
    texts = ["The heart pumps blood through arteries.", "Viruses infect cells."]
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        total -= continuation_logprob(model, tokenizer, tokenizer.decode(ids[:1]), tokenizer.decode(ids[1:]))
        count += len(ids) - 1
    assert unlearning.perplexity(model, tokenizer, texts, max_length=64, batch_size=2) == pytest.approx(
        math.exp(total / count), rel=1e-4
    )


def make_run(root: Path, model_dir: Path, data_dir: Path) -> Path:
    """A finished run directory as `sift train` leaves it: spec.yaml and model/."""
    run = root / "run"
    spec = RunSpec(
        app="unlearning", model={"name": str(model_dir)}, data={"path": str(data_dir), "max_length": 64},
        objective={"layer": 1}, output=run,
    )
    (run / "model").mkdir(parents=True)
    (run / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    AutoModelForCausalLM.from_pretrained(model_dir).save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run / "model")
    return run


def test_evaluate_run_writes_results_and_prints_a_table(tmp_path, tiny_model_dir, mcq_file, tiny) -> None:
    texts = [{"text": f"Paragraph {i}: the heart pumps blood and viruses infect cells. " * 2} for i in range(20)]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in texts), encoding="utf-8")
    unlearning.prepare(tmp_path / "data", forget=[str(source)], retain=str(source))
    run = make_run(tmp_path, tiny_model_dir, tmp_path / "data")
    console = Console(record=True, width=120)

    results = evaluate_run(run, EvalOptions(tasks=[f"cloze:{mcq_file}"], batch_size=4), console=console)

    written = json.loads((run / "eval" / "results.json").read_text())
    assert written == {"evaluations": [results]}
    assert results["app"] == "unlearning"
    model, tokenizer = tiny
    assert results["lm_eval"]["toy_mcq_cloze"]["acc"] == pytest.approx(manual_accuracy(model, tokenizer, cloze=True))
    assert set(results["perplexity"]) == {"forget", "retain"}
    assert all(value > 1 for value in results["perplexity"].values())
    assert "lm_eval.toy_mcq_cloze.acc" in console.export_text()


def test_evaluate_run_needs_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(SiftError, match="not a run directory"):
        evaluate_run(tmp_path, EvalOptions(tasks=[]))
    spec = RunSpec(app="unlearning", data={"path": str(tmp_path / "data")})
    (tmp_path / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    with pytest.raises(SiftError, match="no trained model yet"):
        evaluate_run(tmp_path, EvalOptions(tasks=[]))
