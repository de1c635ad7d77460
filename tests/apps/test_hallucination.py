"""The hallucination app: RAGTruth filtering, token labels, f and g, generation, judged evaluation, the CLI.

The tokenizer is word-level (one token per space-separated word) so that every expected label can
be worked out by hand from the fixture text.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import torch
from helpers import serving
from typer.testing import CliRunner

from sift_cli.apps.base import EvalOptions
from sift_cli.apps.hallucination import app as hallucination
from sift_cli.apps.hallucination import ragtruth
from sift_cli.apps.hallucination.options import PAPER_UTILITY_TASKS
from sift_cli.cli import app as cli_app
from sift_cli.errors import SiftError
from sift_cli.evaluation.generate import generate, prompt_ids
from sift_cli.evaluation.judge import secret_forms
from sift_cli.spec import validate_spec
from sift_cli.store.prepared import load_prepared
from sift_cli.store.rundir import RunDir

SPECIALS = ["<pad>", "<unk>", "<s>", "<|user|>", "<|assistant|>", "<|end|>"]
TEMPLATE = "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
KEY = "sk-test/NEVER+WRITE=7f3a9c"
"""With the characters that JSON (PHP escapes '/') and URL encodings spell differently."""

SOURCES = [
    {
        "source_id": "s1",
        "task_type": "QA",
        "source": "MARCO",
        "source_info": {"question": "What is the capital of Zorbia ?", "passages": "passage 1: The capital of Zorbia is Mintown ."},
        "prompt": "Answer : What is the capital of Zorbia ? Passages : The capital of Zorbia is Mintown . output :",
    },
    {
        "source_id": "s2",
        "task_type": "Summary",
        "source": "CNN/DM",
        "source_info": "Mintown hosts a river festival every May .",
        "prompt": "Summarize : Mintown hosts a river festival every May . output :",
    },
    {
        "source_id": "s3",
        "task_type": "Data2txt",
        "source": "Yelp",
        "source_info": {"name": "Cafe Plok", "city": "Mintown"},
        "prompt": "Describe : Cafe Plok in Mintown . Overview :",
    },
]


def label(response: str, text: str, label_type: str, **extra: Any) -> dict[str, Any]:
    start = response.index(text)
    return {"start": start, "end": start + len(text), "text": text, "label_type": label_type, "meta": "", **extra}


def response_row(id: str, source_id: str, model: str, split: str, quality: str, response: str, labels: list) -> dict:
    return {
        "id": id,
        "source_id": source_id,
        "model": model,
        "temperature": 0.7,
        "labels": labels,
        "split": split,
        "quality": quality,
        "response": response,
    }


R1 = "The capital of Zorbia is Paris today ."
R3 = "Mintown hosts a jazz festival every May ."
RESPONSES = [
    response_row(
        "r1", "s1", "llama-2-7b-chat", "train", "good", R1,
        [label(R1, "Paris", "Evident Conflict"), label(R1, "today", "Subtle Baseless Info", implicit_true=True)],
    ),
    response_row("r2", "s1", "gpt-4-0613", "train", "good", "The capital of Zorbia is Mintown .", []),
    response_row(
        "r3", "s2", "llama-2-7b-chat", "train", "good", R3,
        # "azz festival" starts inside the token "jazz": the whole token counts.
        [label(R3, "azz festival", "Evident Baseless Info"), label(R3, "every", "Subtle Conflict")],
    ),
    response_row("r4", "s3", "mistral-7B-instruct", "train", "truncated", "Cafe Plok is", []),
    response_row("r5", "s1", "llama-2-7b-chat", "test", "good", "The capital is Mintown .", []),
    response_row(
        "r6", "s2", "llama-2-7b-chat", "test", "good", "Mintown hosts a jazz festival .",
        [label("Mintown hosts a jazz festival .", "jazz", "Evident Baseless Info")],
    ),
    response_row("r7", "s3", "gpt-4-0613", "test", "incorrect_refusal", "Unable to answer .", []),
    response_row("r8", "s3", "gpt-4-0613", "test", "good", "Cafe Plok is in Mintown .", []),
    response_row("r9", "s1", "gpt-4-0613", "test", "good", "Zorbia 's capital is Mintown .", []),
]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_ragtruth(directory: Path, responses: list[dict] = RESPONSES, sources: list[dict] = SOURCES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / ragtruth.RESPONSE_FILE, responses)
    write_jsonl(directory / ragtruth.SOURCE_FILE, sources)
    return directory


def word_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    texts = [s["prompt"] for s in SOURCES] + [r["response"] for r in RESPONSES] + ["Mintown", "Paris", "It"]
    words = sorted({word for text in texts for word in text.split()})
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        extra_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SIFT_CACHE", str(tmp_path / "sift-cache"))


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return word_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def word_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, tokenizer: Any) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    source = write_ragtruth(tmp_path / "ragtruth")
    hallucination.prepare(tmp_path / "prepared", source=str(source))
    return tmp_path / "prepared"


def example(tmp_path: Path, id: str, **filters: Any) -> ragtruth.Example:
    directory = write_ragtruth(tmp_path / "rt")
    splits, _, _ = ragtruth.load_examples(directory, ragtruth.Filters(**filters))
    return next(e for split in splits.values() for e in split if e.id == id)


def labelled_words(tokenizer: Any, encoded: dict, key: str) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(t) for t in encoded[key] if t != hallucination.IGNORE]


# --- token labels -------------------------------------------------------------------------------


def test_overlap_is_end_exclusive_and_ignores_empty_tokens() -> None:
    offsets = [(0, 3), (3, 8), (8, 8), (8, 12), (12, 15)]
    assert ragtruth.overlaps(offsets, [(5, 9)]) == [False, True, False, True, False]
    assert ragtruth.overlaps(offsets, [(3, 8)]) == [False, True, False, False, False]
    assert ragtruth.overlaps(offsets, []) == [False] * 5


def test_labels_follow_spans_and_shift_after_the_chat_prompt(tokenizer: Any, tmp_path: Path) -> None:
    r3 = example(tmp_path, "r3")
    encoded = hallucination.encode(tokenizer, r3, max_length=128)
    # "<|user|>", the prompt's words, "<|assistant|>": worked out from the template by hand.
    prompt_length = 1 + len(SOURCES[1]["prompt"].split()) + 1
    words = R3.split()
    assert len(encoded["input_ids"]) == prompt_length + len(words) + 1
    assert encoded["f_labels"][:prompt_length] == [hallucination.IGNORE] * prompt_length
    assert encoded["g_labels"][:prompt_length] == [hallucination.IGNORE] * prompt_length
    # "azz festival" starts inside "jazz"; "every" is a counted Subtle Conflict.
    g_positions = [i for i, t in enumerate(encoded["g_labels"]) if t != hallucination.IGNORE]
    assert g_positions == [prompt_length + words.index(w) for w in ("jazz", "festival", "every")]
    assert labelled_words(tokenizer, encoded, "g_labels") == ["jazz", "festival", "every"]
    assert labelled_words(tokenizer, encoded, "f_labels") == ["Mintown", "hosts", "a", "May", ".", "<|end|>"]


def test_uncounted_label_types_train_neither_objective(tokenizer: Any, tmp_path: Path) -> None:
    r3 = example(tmp_path, "r3", label_types=("Evident Baseless Info",))
    encoded = hallucination.encode(tokenizer, r3, max_length=128)
    assert labelled_words(tokenizer, encoded, "g_labels") == ["jazz", "festival"]
    assert labelled_words(tokenizer, encoded, "f_labels") == ["Mintown", "hosts", "a", "May", ".", "<|end|>"]


def test_implicit_true_spans_are_dropped_unless_kept(tokenizer: Any, tmp_path: Path) -> None:
    dropped = hallucination.encode(tokenizer, example(tmp_path, "r1"), max_length=128)
    assert labelled_words(tokenizer, dropped, "g_labels") == ["Paris"]
    assert "today" in labelled_words(tokenizer, dropped, "f_labels")
    kept = hallucination.encode(tokenizer, example(tmp_path, "r1", drop_implicit_true=False), max_length=128)
    assert labelled_words(tokenizer, kept, "g_labels") == ["Paris", "today"]


def test_a_response_without_spans_only_feeds_f(tokenizer: Any, tmp_path: Path) -> None:
    encoded = hallucination.encode(tokenizer, example(tmp_path, "r2"), max_length=128)
    assert labelled_words(tokenizer, encoded, "g_labels") == []
    assert labelled_words(tokenizer, encoded, "f_labels") == "The capital of Zorbia is Mintown . <|end|>".split()


def test_truncation_keeps_the_prompt_end_and_the_response_start(tokenizer: Any, tmp_path: Path) -> None:
    r1 = example(tmp_path, "r1")
    full = hallucination.encode(tokenizer, r1, max_length=128)
    short = hallucination.encode(tokenizer, r1, max_length=12)
    assert len(short["input_ids"]) == 12
    assert short["input_ids"][:6] == full["input_ids"][len(full["input_ids"]) - 9 - 6 : len(full["input_ids"]) - 9]
    assert labelled_words(tokenizer, short, "g_labels") == ["Paris"]
    assert labelled_words(tokenizer, short, "f_labels") == "The capital of Zorbia is".split()


# --- prepare --------------------------------------------------------------------------------------


def test_prepare_filters_and_records_counts(tmp_path: Path) -> None:
    source = write_ragtruth(tmp_path / "rt")
    data = hallucination.prepare(tmp_path / "out", source=str(source))
    manifest = load_prepared(tmp_path / "out", "hallucination").manifest
    assert manifest["counts"] == {"train": 3, "test": 4}
    assert manifest["filters"]["quality"] == "good"
    assert manifest["filters"]["dropped"] == {"task_type": 0, "generator": 0, "quality": 2, "split": 0, "max_rows": 0}
    assert manifest["filters"]["spans"] == {
        "train_with_spans": 2, "train_spans": 3, "train_ignored_spans": 0,
        "test_with_spans": 1, "test_spans": 1, "test_ignored_spans": 0,
    }
    assert [row["id"] for row in data.rows("test")] == ["r5", "r6", "r8", "r9"]
    capped = hallucination.prepare(tmp_path / "capped", source=str(source), filters=ragtruth.Filters(max_rows=2))
    assert capped.manifest["counts"] == {"train": 2, "test": 2}
    assert capped.manifest["filters"]["dropped"]["max_rows"] == 3
    r1 = next(row for row in data.rows("train") if row["id"] == "r1")
    assert r1["spans"] == [[R1.index("Paris"), R1.index("Paris") + 5]]
    assert r1["reference"].startswith("Question: What is the capital of Zorbia ?")


def test_prepare_cli_applies_task_and_generator_filters(tmp_path: Path) -> None:
    source = write_ragtruth(tmp_path / "rt")
    result = CliRunner().invoke(
        cli_app,
        ["prepare", "hallucination", "--source", str(source), "-o", str(tmp_path / "out"),
         "--generator", "llama-2-7b-chat", "--task-type", "QA", "--task-type", "Summary", "--label-type", "Evident Conflict",
         "--label-type", "Evident Baseless Info"],
    )
    assert result.exit_code == 0, result.output
    manifest = load_prepared(tmp_path / "out", "hallucination").manifest
    assert manifest["counts"] == {"train": 2, "test": 2}
    assert manifest["filters"]["generators"] == ["llama-2-7b-chat"]
    assert manifest["filters"]["dropped"] == {"task_type": 3, "generator": 2, "quality": 0, "split": 0, "max_rows": 0}
    assert manifest["filters"]["spans"]["train_spans"] == 2
    assert manifest["filters"]["spans"]["train_ignored_spans"] == 1


def test_prepare_downloads_from_a_url(tmp_path: Path) -> None:
    import functools

    write_ragtruth(tmp_path / "site" / "dataset")
    handler = functools.partial(QuietFiles, directory=str(tmp_path / "site"))
    with serving(handler) as base:
        data = hallucination.prepare(tmp_path / "out", source=f"{base}/dataset")
        assert data.manifest["counts"] == {"train": 3, "test": 4}
        assert data.manifest["sources"]["ragtruth"] == f"{base}/dataset"
        with pytest.raises(SiftError, match="cannot download .*/missing/response.jsonl"):
            hallucination.prepare(tmp_path / "out2", source=f"{base}/missing")


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r, s: r[0]["labels"][0].update(end=999), "not inside the"),
        (lambda r, s: r[1].pop("response"), r"row 2 \(id .r2.\) lacks field\(s\) response"),
        (lambda r, s: r[1].update(source_id="nope"), "source_id 'nope' is not in source_info.jsonl"),
        (lambda r, s: s[0].pop("prompt"), r"row 1 lacks field\(s\) prompt"),
    ],
)
def test_bad_ragtruth_rows_are_one_line_errors(tmp_path: Path, mutate: Any, message: str) -> None:
    responses, sources = json.loads(json.dumps(RESPONSES)), json.loads(json.dumps(SOURCES))
    mutate(responses, sources)
    source = write_ragtruth(tmp_path / "rt", responses, sources)
    with pytest.raises(SiftError, match=message) as info:
        hallucination.prepare(tmp_path / "out", source=str(source))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_input_through_the_cli_is_one_line_and_exit_2(tmp_path: Path) -> None:
    source = write_ragtruth(tmp_path / "rt")
    (source / ragtruth.RESPONSE_FILE).write_text('{"id": "x"\n', encoding="utf-8")
    runner = CliRunner()
    for args in (
        ["--source", str(source)],
        ["--source", str(tmp_path / "missing")],
        ["--source", str(tmp_path / "rt"), "--task-type", "Poetry"],
        ["--source", str(tmp_path / "rt"), "--label-type", "Mild Exaggeration"],
        ["--source", str(write_ragtruth(tmp_path / "ok")), "--generator", "nobody"],
    ):
        result = runner.invoke(cli_app, ["prepare", "hallucination", "-o", str(tmp_path / "out"), *args])
        assert result.exit_code == 2, result.output
        assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1


def test_a_key_in_place_of_the_variable_name_is_refused_without_echoing_it() -> None:
    with pytest.raises(SiftError, match="NAME of an environment variable") as info:
        validate_spec({"app": "hallucination", "data": {"path": "x"}, "objective": {"judge_api_key_env": KEY}})
    assert KEY not in str(info.value)


# --- objectives -----------------------------------------------------------------------------------


def manual_log_probs(model: Any, encoded: dict, key: str) -> torch.Tensor:
    """log p of each labelled token, one unpadded sequence at a time."""
    ids = torch.tensor([encoded["input_ids"]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return torch.stack(
        [log_probs[t - 1, tok] for t, tok in enumerate(encoded[key]) if tok != hallucination.IGNORE and t > 0]
    )


def test_losses_match_a_manual_computation(tiny_model: Any, tokenizer: Any, prepared: Path) -> None:
    spec = validate_spec({"app": "hallucination", "data": {"path": str(prepared)}, "objective": {"g_loss": "neg_ce"}})
    objectives = hallucination.build_objectives(tiny_model, tokenizer, spec, load_prepared(prepared, "hallucination"))
    assert len(objectives.f_data) == 3 and len(objectives.g_data) == 2
    f_batch = objectives.collate_f(list(objectives.f_data))
    g_batch = objectives.collate_g(list(objectives.g_data))
    f_manual = torch.cat([manual_log_probs(tiny_model, item, "f_labels") for item in objectives.f_data])
    g_manual = torch.cat([manual_log_probs(tiny_model, item, "g_labels") for item in objectives.g_data])
    with torch.no_grad():
        assert objectives.loss_f(tiny_model, f_batch).item() == pytest.approx(-f_manual.mean().item(), rel=1e-5)
        assert objectives.loss_g(tiny_model, g_batch).item() == pytest.approx(g_manual.mean().item(), rel=1e-5)
        unlikelihood = hallucination.unlikelihood(tiny_model, g_batch).item()
    assert unlikelihood == pytest.approx(-torch.log1p(-g_manual.exp()).mean().item(), rel=1e-5)
    assert unlikelihood >= 0


def test_unlikelihood_stays_finite_when_a_token_is_certain() -> None:
    class Certain(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            logits = torch.full((*input_ids.shape, 4), -1e4)
            logits[..., 2] = 1e4
            return type("Out", (), {"logits": logits.requires_grad_()})()

    batch = {"input_ids": torch.tensor([[1, 2, 2]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.tensor([[-100, 2, 2]])}
    loss = hallucination.unlikelihood(Certain(), batch)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-torch.log(torch.tensor(1e-6)).item(), rel=1e-4)


def test_g_needs_hallucinated_tokens_within_max_length(tiny_model: Any, tokenizer: Any, tmp_path: Path) -> None:
    # Only "Paris" counts; it is the 6th response token, and max_length 8 leaves room for 4.
    source = write_ragtruth(tmp_path / "rt")
    data = hallucination.prepare(tmp_path / "out", source=str(source), filters=ragtruth.Filters(label_types=("Evident Conflict",)))
    spec = validate_spec({"app": "hallucination", "data": {"path": str(data.path), "max_length": 8}})
    with pytest.raises(SiftError, match="raise data.max_length"):
        hallucination.build_objectives(tiny_model, tokenizer, spec, data)


def test_presets_resolve_to_the_paper_and_cpu_settings() -> None:
    from sift_cli.spec import resolve_spec

    cpu = resolve_spec(app="hallucination", overrides={"optim.eps": -0.8})
    assert (cpu.model.name, cpu.optim.method, cpu.optim.k, cpu.optim.eps) == ("smollm2-135m-instruct", "sift", None, -0.8)
    paper = resolve_spec(app="hallucination", preset="hallucination_paper")
    assert (paper.model.name, paper.model.dtype, paper.optim.k, paper.optim.eps) == ("meta-llama/Llama-2-7b-chat-hf", "bfloat16", None, -0.8)
    assert paper.objective["g_loss"] == "neg_ce" and paper.objective["utility_tasks"] == PAPER_UTILITY_TASKS


def test_sift_train_cli_runs_on_prepared_ragtruth(word_model_dir: Path, prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli_app,
        ["train", "--app", "hallucination", "--eps", "-0.8", "--model", str(word_model_dir), "--data", str(prepared),
         "--steps", "2", "--lr", "1e-3", "-o", str(out), "--set", "train.batch_size=2"],
    )
    assert result.exit_code == 0, result.output
    metrics = RunDir(out).read_metrics()
    assert list(metrics["step"]) == [1, 2] and metrics["n_blocks"].iloc[0] == 2 * 7
    assert (out / "model" / "config.json").is_file()


# --- generation and judging -----------------------------------------------------------------------


def test_batched_left_padded_generation_matches_one_at_a_time(tiny_model: Any, tokenizer: Any) -> None:
    prompts = [SOURCES[0]["prompt"], "Mintown", [{"role": "user", "content": "Cafe Plok"}]]
    batched = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(tiny_model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert prompt_ids(tokenizer, "Mintown") == tokenizer.convert_tokens_to_ids(["<|user|>", "Mintown", "<|assistant|>"])


def test_parse_verdict() -> None:
    assert hallucination.parse_verdict('```json\n{"hallucination list": ["Paris"]}\n```') == ["Paris"]
    assert hallucination.parse_verdict('{"hallucination list": []}') == []
    for reply in ("No hallucination.", '{"hallucination list": "none"}', '{"hallucination list": [}', '{"spans": []}'):
        with pytest.raises(ValueError):
            hallucination.parse_verdict(reply)


class ScriptedJudge(BaseHTTPRequestHandler):
    """Chat-completions replies in a fixed order: (status, assistant text)."""

    script: list[tuple[int, str]] = []
    seen: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, text = type(self).script.pop(0)
        payload = {"choices": [{"message": {"role": "assistant", "content": text}}]} if status == 200 else {"error": text}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def judge_url() -> Any:
    with serving(ScriptedJudge) as url:
        yield f"{url}/v1"


def test_evaluate_counts_judge_errors_and_never_writes_the_key(
    tiny_model: Any, tokenizer: Any, prepared: Path, judge_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("HALLU_JUDGE_KEY", KEY)
    ScriptedJudge.seen = []
    echoed = f"bad key {KEY} / {KEY.replace('/', chr(92) + '/')} / {quote(KEY, safe='')} / {quote(KEY, safe='').lower()} / {quote_plus(KEY)}"
    ScriptedJudge.script = [
        (200, '{"hallucination list": ["Paris"]}'),
        (200, 'Sure! {"hallucination list": []}'),
        (200, f"The answer looks fine to me, {KEY.replace('/', chr(92) + '/')}."),
        (400, echoed),
    ]
    spec = validate_spec(
        {
            "app": "hallucination",
            "data": {"path": str(prepared)},
            "output": str(tmp_path / "run"),
            "objective": {
                "judge": "openai", "judge_base_url": judge_url, "judge_model": "judge-x",
                "judge_api_key_env": "HALLU_JUDGE_KEY", "max_new_tokens": 4, "utility_tasks": [],
            },
        }
    )
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.spec_path.write_text(spec.to_yaml(), encoding="utf-8")
    results = hallucination.evaluate(tiny_model, tokenizer, spec, run, EvalOptions(batch_size=2))
    (run.eval_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")

    assert ScriptedJudge.script == [] and len(ScriptedJudge.seen) == 4
    failed = results["hallucination"].pop("failed_calls")
    assert failed.startswith("1 of 4 judge calls failed for the hallucination answers; the first: judge returned HTTP 400 (")
    assert results["hallucination"] | {"judge": None} == {
        "answers": 4, "judged": 2, "errors": 2, "hallucinated": 1, "rate": 0.5, "judge": None
    }
    assert results["hallucination"]["judge"] == {"kind": "openai", "model": "judge-x", "url": judge_url + "/chat/completions"}
    assert results["held_out"]["hallucinated_tokens"] == 1 and results["held_out"]["faithful_tokens"] > 0
    records = [json.loads(line) for line in (run.eval_dir / hallucination.ANSWERS_FILE).read_text().splitlines()]
    assert [r["hallucinated"] for r in records] == [True, False, None, None]
    assert "looks fine" in records[2]["error"] and records[3]["error"] == "judge returned HTTP 400"
    request = ScriptedJudge.seen[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {KEY}"
    assert request["body"]["model"] == "judge-x" and request["body"]["temperature"] == 0
    assert "Question: What is the capital of Zorbia ?" in request["body"]["messages"][-1]["content"]
    written = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    forms = secret_forms(KEY) + [quote(KEY, safe="").lower()]
    assert len(set(forms)) >= 4 and "HALLU_JUDGE_KEY" in written
    assert not [form for form in forms if form in written + failed + "".join(capsys.readouterr())]


def test_evaluate_fails_when_every_judge_call_fails_and_writes_nothing(
    tiny_model: Any, tokenizer: Any, prepared: Path, judge_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HALLU_JUDGE_KEY", KEY)
    ScriptedJudge.seen, ScriptedJudge.script = [], [(400, f"unknown model, key {KEY}")] * 4
    spec = validate_spec({"app": "hallucination", "data": {"path": str(prepared)}, "output": str(tmp_path / "run"), "objective": {
        "judge": "openai", "judge_base_url": judge_url, "judge_api_key_env": "HALLU_JUDGE_KEY", "max_new_tokens": 4, "utility_tasks": []}})  # fmt: skip
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    with pytest.raises(SiftError, match=r"^4 of 4 judge calls failed .* judge returned HTTP 400 \(.*\[redacted\].*check judge_base_url") as info:
        hallucination.evaluate(tiny_model, tokenizer, spec, run, EvalOptions(batch_size=2))
    assert KEY not in str(info.value) and not (run.eval_dir / hallucination.ANSWERS_FILE).exists()


def test_a_judge_url_with_credentials_is_refused() -> None:
    for url in ("https://user:secret@judge.example/v1", "https://judge.example/v1?key=secret"):
        with pytest.raises(SiftError, match="carries credentials") as info:
            validate_spec({"app": "hallucination", "data": {"path": "x"}, "objective": {"judge_base_url": url}})
        assert "secret" not in str(info.value)


def test_a_local_judge_that_cannot_answer_counts_as_errors(word_model_dir: Path, tokenizer: Any, prepared: Path, tmp_path: Path) -> None:
    from sift_cli.hf.loading import load_model

    spec = validate_spec(
        {
            "app": "hallucination",
            "data": {"path": str(prepared)},
            "objective": {"judge": "local", "judge_model": str(word_model_dir), "max_new_tokens": 3, "utility_tasks": []},
        }
    )
    model = load_model(spec.model, path=str(word_model_dir))
    results = hallucination.evaluate(model, tokenizer, spec, RunDir(tmp_path / "run"), EvalOptions(limit=2, batch_size=2))
    assert results["hallucination"] | {"judge": None} == {
        "answers": 2, "judged": 0, "errors": 2, "hallucinated": 0, "rate": None, "judge": None
    }


def test_spans_are_checked_against_their_text_and_re_located_when_shifted(tmp_path: Path) -> None:
    shifted = dict(label(R1, "Paris", "Evident Conflict"))
    shifted["start"] += 5
    shifted["end"] += 5
    rows = [response_row("r1", "s1", "llama-2-7b-chat", "train", "good", R1, [shifted]), *RESPONSES[1:]]
    splits, _, relocated = ragtruth.load_examples(write_ragtruth(tmp_path / "shifted", rows), ragtruth.Filters())
    assert relocated == 1
    (first,) = [e for e in splits["train"] if e.id == "r1"]
    assert [first.response[a:b] for a, b in first.spans] == ["Paris"]

    wrong = {**label(R1, "Paris", "Evident Conflict"), "text": "London"}
    rows = [response_row("r1", "s1", "llama-2-7b-chat", "train", "good", R1, [wrong]), *RESPONSES[1:]]
    with pytest.raises(SiftError, match=r"row 1 \(id 'r1'\): label 0: its text 'London' is not at \[25, 30\)"):
        ragtruth.load_examples(write_ragtruth(tmp_path / "wrong", rows), ragtruth.Filters())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": ["Paris"]}, "label 0 is a str, not an object"),
        ({"labels": [{"start": "25", "end": "30", "text": "Paris"}]}, "offsets must be integers"),
        ({"model": ["llama-2-7b-chat"]}, "'model' must be a string, not list"),
    ],
)
def test_malformed_ragtruth_rows_are_one_line_errors(tmp_path: Path, change: dict, message: str) -> None:
    rows = [{**RESPONSES[0], **change}, *RESPONSES[1:]]
    with pytest.raises(SiftError, match=re.escape(message)):
        ragtruth.load_examples(write_ragtruth(tmp_path / "bad", rows), ragtruth.Filters())


def test_an_empty_response_file_says_so_rather_than_blaming_the_filters(tmp_path: Path) -> None:
    with pytest.raises(SiftError, match="holds no responses"):
        ragtruth.load_examples(write_ragtruth(tmp_path / "empty", []), ragtruth.Filters())
