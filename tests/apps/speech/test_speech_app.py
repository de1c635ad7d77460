"""The speech app end to end: prepare, objectives, evaluation, the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer
from typer.testing import CliRunner

from sift_cli.apps.base import EvalOptions
from sift_cli.apps.speech import app as speech
from sift_cli.apps.speech import output
from sift_cli.apps.speech.audio import Audio
from sift_cli.apps.speech.tokens import (
    add_speech_tokens,
    audio_token,
)
from sift_cli.cli import app as cli_app
from sift_cli.errors import SiftError
from sift_cli.spec import resolve_spec
from sift_cli.store.prepared import load_prepared
from sift_cli.store.rundir import RunDir


@pytest.mark.parametrize(
    ("name", "trained"),
    [
        ("transformer.encoder.layers.3.self_attention.query_key_value.weight", True),
        ("transformer.encoder.layers.3.self_attention.dense.weight", True),
        ("transformer.encoder.layers.39.mlp.dense_4h_to_h.weight", True),
        ("transformer.encoder.layers.3.self_attention.query_key_value.bias", False),
        ("transformer.embedding.word_embeddings.weight", False),
        ("transformer.output_layer.weight", False),
        ("model.layers.7.self_attn.q_proj.weight", True),
        ("model.layers.7.mlp.down_proj.weight", True),
        ("model.embed_tokens.weight", True),
        ("model.layers.7.input_layernorm.weight", False),
    ],
)
def test_default_trainable_covers_glm_and_llama_blocks(name: str, trained: bool) -> None:
    assert bool(re.search(speech.DEFAULT_TRAINABLE, name)) is trained


def test_prepare_writes_spoken_examples(prepared: Path) -> None:
    data = load_prepared(prepared, "speech")
    manifest = data.manifest
    assert manifest["counts"] == {"train": 2, "test": 2}
    assert manifest["sources"]["dataset"] == "cose" and manifest["sources"]["splits"] == {"train": "train", "test": "validation"}
    assert manifest["sources"]["speech_tokenizer"]["codebook_size"] == 1024
    assert manifest["filters"]["dropped"] == {"train": 1, "test": 0}
    row = data.rows("train")[1]
    assert row["response"].startswith("Answer: D. outside.")
    assert row["instruction_speech"] and row["response_speech"]


def test_objectives_and_text_evaluation(prepared: Path, tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    spec = resolve_spec(app="speech", overrides={"data.path": str(prepared), "output": str(tmp_path / "run")})
    objectives = speech.build_objectives(model, tokenizer, spec, load_prepared(prepared, "speech"))
    assert len(objectives.f_data) == len(objectives.g_data) == 4
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    for collate, loss in ((objectives.collate_f, objectives.loss_f), (objectives.collate_g, objectives.loss_g)):
        value = loss(model, collate(objectives.f_data[:2]))
        assert torch.isfinite(value) and value.item() > 0
        value.backward()
    run = RunDir(tmp_path / "run")
    results = speech.evaluate(model, tokenizer, spec, run, EvalOptions(batch_size=2, extra={"max_new_tokens": 6}))
    assert set(results["settings"]) == {"text->text", "audio->text"}
    assert results["settings"]["text->text"]["n"] == 2
    records = [json.loads(line) for line in (run.eval_dir / speech.ANSWERS_FILE).read_text().splitlines()]
    assert {r["input"] for r in records} == {"text", "audio"} and {r["gold"] for r in records} == {"A", "D"}


def test_audio_outputs_go_through_decoder_and_asr(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[float] = []

    class FixedAsr:
        def __init__(self, model_id: str, device: str) -> None:
            assert model_id == "openai/whisper-large-v3"

        def __call__(self, audio: Audio) -> str:
            heard.append(audio.seconds)
            return "Answer: D. outside."

    monkeypatch.setattr(output, "WhisperAsr", FixedAsr)
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    spec = resolve_spec(
        app="speech",
        overrides={"data.path": str(prepared), "output": str(tmp_path / "run")},
        assignments=["objective.eval_settings=[text->audio]", "objective.speech_decoder=speech_data:tone_decoder"],
    )
    add_speech_tokens(model, tokenizer, 1024)
    generated = [[tokenizer.convert_tokens_to_ids(audio_token(5))] * 3]
    monkeypatch.setattr("sift_cli.evaluation.generate.generate_ids", lambda *args, **kwargs: generated * 2)
    results = speech.evaluate(model, tokenizer, spec, RunDir(tmp_path / "run"), EvalOptions(batch_size=2))
    assert results["settings"] == {"text->audio": {"accuracy": 0.5, "n": 2, "correct": 1, "unparsed": 0}}
    assert len(heard) == 2


def test_objective_must_match_the_prepared_dataset(prepared: Path, tmp_path: Path) -> None:
    spec = resolve_spec(app="speech", overrides={"data.path": str(prepared)}, assignments=["objective.dataset=esnli"])
    tokenizer = tiny_tokenizer()
    with pytest.raises(SiftError, match="was prepared from 'cose' but objective.dataset is 'esnli'"):
        speech.build_objectives(tiny_llama(len(tokenizer)), tokenizer, spec, load_prepared(prepared, "speech"))
    with pytest.raises(SiftError, match="objective.eval_settings"):
        resolve_spec(app="speech", assignments=["objective.eval_settings=[text->video]"])


def test_cli_rejects_an_unknown_dataset_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["prepare", "speech", "--dataset", "squad", "--output", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "choose one of: cose, esnli, openbookqa" in result.output


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_cli_prepares_esnli_with_espeak_and_the_local_tokenizer(tmp_path: Path, fixtures: dict[str, Path]) -> None:
    args = ["prepare", "speech", "--dataset", "esnli", "--source", str(fixtures["esnli"]), "--tts", "espeak"]
    result = CliRunner().invoke(cli_app, [*args, "--speech-tokenizer", "local", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "text to speech: espeak-ng voice en-us (as requested)" in result.output
    rows = load_prepared(tmp_path / "out", "speech").rows("test")
    assert [row["answer"] for row in rows] == ["neutral", "entailment"]
    assert all(10 < len(row["response_speech"]) < 100 for row in rows)
