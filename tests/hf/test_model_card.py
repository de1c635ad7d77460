"""The model card in a run's model/: a Hugging Face card that says what the model is, how it was trained,
what it needs, and (after `sift evaluate`) how it scored."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard
from rich.console import Console
from test_train import data_dir, invoke, train_args  # noqa: F401  (data_dir is a fixture)

from sift_cli.apps.base import EvalOptions
from sift_cli.evaluation.evaluate import evaluate_run
from sift_cli.hf.model_card import MIN_TRANSFORMERS, SMOLLM2_HUB_ID, write_model_card
from sift_cli.spec import resolve_spec
from sift_cli.store.rundir import RunDir


def test_train_writes_a_card_that_evaluate_fills_with_results(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    run_path = tmp_path / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "2")).exit_code == 0

    card = ModelCard.load(run_path / "model" / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.base_model is None  # a local directory is not a hub id
    assert {"sift", "unlearning"} <= set(card.data.tags)
    assert card.data.to_dict()["transformers_version"] == f">={MIN_TRANSFORMERS}"
    assert "sift evaluate" in card.text and "AutoModelForCausalLM.from_pretrained" in card.text
    assert "steering_coeff: 20.0" in card.text  # the run's spec

    results = evaluate_run(run_path, EvalOptions(tasks=[]), console=Console(quiet=True))
    card = ModelCard.load(run_path / "model" / "README.md")
    assert f"| perplexity.forget | {results['perplexity']['forget']:.4g} |" in card.text
    assert "Not evaluated yet" not in card.text


def test_the_offline_default_names_its_hub_origin_and_says_it_was_4_bit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text('{"app": "unlearning", "sources": {"retain": {"hub": "Salesforce/wikitext"}}}')
    spec = resolve_spec(app="unlearning", overrides={"data.path": str(data), "output": str(tmp_path / "run")})
    run = RunDir(tmp_path / "run")
    run.model_dir.mkdir(parents=True)
    card = ModelCard.load(write_model_card(run, spec))
    assert card.data.base_model == SMOLLM2_HUB_ID
    assert card.data.datasets == ["Salesforce/wikitext"]
    assert "Q4_1" in card.text and "not comparable" in card.text
