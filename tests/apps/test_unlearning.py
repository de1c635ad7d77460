"""RMU unlearning: data preparation, the two losses, early exit, and input errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_llama

from sift_cli.apps.unlearning import app as unlearning
from sift_cli.errors import SiftError
from sift_cli.resources import presets_dir
from sift_cli.spec import RunSpec, validate_spec
from sift_cli.store.prepared import load_prepared

LAYER = 1


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def sources(tmp_path: Path) -> dict[str, Path]:
    """Local files in the real schemas: WMDP corpora rows ({text, ...}) and wikitext rows ({text})."""
    forget_a = [{"title": f"doc {i}", "text": f"Forget A document {i}. " + "virus " * (i % 5) * 10} for i in range(25)]
    forget_b = [{"text": f"Forget B paper {i}: " + "pathogen replication " * 6} for i in range(12)]
    retain = [{"text": ""}, {"text": " = Heading = \n"}] + [
        {"text": f"Retain paragraph {i}. " + "The heart pumps blood. " * (1 + i % 4)} for i in range(30)
    ]
    return {
        "a": write_jsonl(tmp_path / "forget_a.jsonl", forget_a),
        "b": write_jsonl(tmp_path / "forget_b.jsonl", forget_b),
        "retain": write_jsonl(tmp_path / "wikitext.jsonl", retain),
    }


def test_prepare_local_files_writes_counts_filters_and_holdout(tmp_path: Path, sources: dict[str, Path]) -> None:
    min_chars = 60
    forget_a = [json.loads(line)["text"] for line in sources["a"].read_text().splitlines()]
    expected_a = [text for text in forget_a if len(text) > min_chars]
    retain_all = [json.loads(line)["text"] for line in sources["retain"].read_text().splitlines()]
    expected_retain = [text for text in retain_all if len(text) > min_chars][:20]

    prepared = unlearning.prepare(
        tmp_path / "data", forget=[str(sources["a"]), str(sources["b"])], retain=str(sources["retain"]),
        min_chars=min_chars, max_rows=20,
    )

    manifest = load_prepared(tmp_path / "data", "unlearning").manifest
    assert manifest == prepared.manifest
    assert manifest["filters"]["min_chars"] == min_chars
    assert manifest["filters"]["max_rows_per_source"] == 20
    kept_a = expected_a[:20]
    forget_total = len(kept_a) + 12
    assert [s["rows_kept"] for s in manifest["sources"]["forget"]] == [len(kept_a), 12]
    assert manifest["sources"]["forget"][0]["rows_read"] == 25
    assert manifest["sources"]["retain"]["rows_kept"] == len(expected_retain)
    assert manifest["counts"]["forget"] + manifest["counts"]["forget_eval"] == forget_total
    assert manifest["counts"]["forget_eval"] == forget_total // unlearning.HELDOUT_EVERY
    assert manifest["counts"]["retain_eval"] == len(expected_retain) // unlearning.HELDOUT_EVERY
    train_texts = [row["text"] for row in prepared.rows("retain")]
    eval_texts = [row["text"] for row in prepared.rows("retain_eval")]
    assert not set(train_texts) & set(eval_texts)
    assert sorted(train_texts + eval_texts) == sorted(expected_retain)
    assert all(len(row["text"]) > min_chars for row in prepared.rows("forget"))
    assert {row["source"] for row in prepared.rows("forget")} == {str(sources["a"]), str(sources["b"])}


@pytest.mark.parametrize(
    ("forget", "retain", "needle"),
    [
        (["bio"], None, "gated"),
        (["no/such/file.jsonl"], None, "no/such/file.jsonl does not exist and is not one of the hub sources"),
        ([], None, "no forget source"),
        (None, "missing.jsonl", "missing.jsonl does not exist and is not one of the hub sources"),
    ],
)
def test_prepare_bad_sources_are_one_line_errors(tmp_path, sources, forget, retain, needle) -> None:
    with pytest.raises(SiftError) as err:
        unlearning.prepare(
            tmp_path / "out", forget=[str(sources["a"])] if forget is None else forget,
            retain=retain or str(sources["retain"]),
        )
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_prepare_everything_filtered_is_an_error(tmp_path, sources) -> None:
    with pytest.raises(SiftError, match="no rows longer than 100000 characters"):
        unlearning.prepare(tmp_path / "out", forget=[str(sources["a"])], retain=str(sources["retain"]), min_chars=100_000)


def test_prepare_missing_text_column(tmp_path, sources) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"body": "x" * 80}])
    with pytest.raises(SiftError, match="lacks column"):
        unlearning.prepare(tmp_path / "out", forget=[str(bad)], retain=str(sources["retain"]))


@pytest.fixture()
def objectives_setup(tmp_path, sources, tiny_tokenizer_obj):
    data = unlearning.prepare(tmp_path / "data", forget=[str(sources["a"]), str(sources["b"])], retain=str(sources["retain"]))
    spec = RunSpec(
        app="unlearning",
        data={"path": str(tmp_path / "data"), "max_length": 48},
        objective={"layer": LAYER, "steering_coeff": 4.0, "control_seed": 3},
    )
    model = tiny_llama(len(tiny_tokenizer_obj))
    for name, param in model.named_parameters():
        param.requires_grad_(f"layers.{LAYER}.mlp.down_proj" in name)
    objectives = unlearning.build_objectives(model, tiny_tokenizer_obj, spec, data)
    return model, objectives


def hidden_at_layer(model, batch, layer: int) -> torch.Tensor:
    with torch.no_grad():
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return output.hidden_states[layer + 1]


def test_early_exit_matches_output_hidden_states(objectives_setup) -> None:
    model, objectives = objectives_setup
    batch = objectives.collate_f(objectives.f_data[:4])
    assert (batch["attention_mask"] == 0).any(), "the batch should contain padding"
    for layer in range(len(model.model.layers) - 1):
        early = unlearning.layer_output(model, model.model.layers[layer], batch)
        torch.testing.assert_close(early, hidden_at_layer(model, batch, layer))


def test_losses_match_hand_computation(objectives_setup) -> None:
    model, objectives = objectives_setup
    with torch.no_grad():
        model.model.layers[LAYER].mlp.down_proj.weight.add_(0.05 * torch.randn_like(model.model.layers[LAYER].mlp.down_proj.weight))
    reference = tiny_llama(model.config.vocab_size)

    retain = objectives.collate_f(objectives.f_data[:4])
    mask = retain["attention_mask"].bool()
    updated, frozen = hidden_at_layer(model, retain, LAYER), hidden_at_layer(reference, retain, LAYER)
    expected_f = ((updated - frozen) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(objectives.loss_f(model, retain), expected_f)

    rows = [objectives.g_data[0], objectives.g_data[-1]]
    forget = objectives.collate_g(rows)
    assert forget["topic"].tolist() == [0, 1]
    u = torch.rand(2, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    control = 4.0 * u / u.norm(dim=-1, keepdim=True)
    acts = hidden_at_layer(model, forget, LAYER)
    per_token = ((acts - control[:, None, :]) ** 2).mean(-1)
    expected_g = per_token[forget["attention_mask"].bool()].mean()
    torch.testing.assert_close(objectives.loss_g(model, forget), expected_g)


def test_losses_backpropagate_to_trained_weights_only(objectives_setup) -> None:
    model, objectives = objectives_setup
    objectives.loss_g(model, objectives.collate_g(objectives.g_data[:3])).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert list(grads) == [f"model.layers.{LAYER}.mlp.down_proj.weight"]
    assert grads[f"model.layers.{LAYER}.mlp.down_proj.weight"].abs().sum() > 0
    frozen = objectives.modules[0]
    assert not any(p.requires_grad for p in frozen.parameters())
    assert len(frozen.decoder.layers) == LAYER + 1


def test_frozen_copy_does_not_follow_training(objectives_setup) -> None:
    model, objectives = objectives_setup
    batch = objectives.collate_f(objectives.f_data[:2])
    assert objectives.loss_f(model, batch).item() == 0.0
    with torch.no_grad():
        model.model.layers[LAYER].mlp.down_proj.weight.mul_(1.5)
    assert objectives.loss_f(model, batch).item() > 0.0


def test_layer_out_of_range_and_unreached_trainables(tmp_path, sources, tiny_tokenizer_obj) -> None:
    data = unlearning.prepare(tmp_path / "data", forget=[str(sources["a"])], retain=str(sources["retain"]))
    model = tiny_llama(len(tiny_tokenizer_obj))
    spec = RunSpec(app="unlearning", data={"path": str(tmp_path / "data")}, objective={"layer": 9})
    with pytest.raises(SiftError, match="has 4 decoder layers"):
        unlearning.build_objectives(model, tiny_tokenizer_obj, spec, data)
    spec = RunSpec(app="unlearning", data={"path": str(tmp_path / "data")}, objective={"layer": 1})
    with pytest.raises(SiftError, match="never reaches"):
        unlearning.build_objectives(model, tiny_tokenizer_obj, spec, data)


def test_options_forbid_unknown_keys() -> None:
    with pytest.raises(SiftError, match="objective.steering"):
        validate_spec({"app": "unlearning", "data": {"path": "d"}, "objective": {"steering": 3}})


@pytest.mark.parametrize("preset", ["unlearning_cpu", "unlearning_paper"])
def test_presets_validate_and_train_only_layers_rmu_reaches(preset: str) -> None:
    spec = validate_spec(yaml.safe_load((presets_dir() / f"{preset}.yaml").read_text()))
    assert spec.app == "unlearning"
    trained = [i for i in range(40) if re.search(spec.train.trainable, f"model.layers.{i}.mlp.down_proj.weight")]
    assert trained and max(trained) <= spec.objective["layer"]


def test_demo_data_prepares_and_questions_are_valid_and_shuffled(tmp_path: Path) -> None:
    from sift_cli.demo import data as demo_data
    from sift_cli.demo.run import write_demo_data
    from sift_cli.evaluation import lmeval

    data, tasks = write_demo_data(tmp_path / "data")
    counts = load_prepared(data, "unlearning").manifest["counts"]
    assert counts == {
        "forget": len(demo_data.FORGET_TRAIN), "retain": len(demo_data.RETAIN_TRAIN),
        "forget_eval": len(demo_data.FORGET_HELDOUT), "retain_eval": len(demo_data.RETAIN_HELDOUT),
    }
    for task in tasks:
        path = Path(task.removeprefix(lmeval.CLOZE))
        assert lmeval.check_mcq_file(path) == 40
        answers = [json.loads(line)["answer"] for line in path.read_text().splitlines()]
        assert len(set(answers)) == 4
    texts = demo_data.FORGET_TRAIN + demo_data.FORGET_HELDOUT + demo_data.RETAIN_TRAIN + demo_data.RETAIN_HELDOUT
    assert len(set(texts)) == len(texts)
