"""LoRA runs: only the factors train, model/ is an adapter plain transformers + peft load, the merged
model is the same function, resume is exact, and the readers of a run work on it or refuse in one line."""

from __future__ import annotations

import json

import torch
from rich.console import Console
from safetensors.torch import load_file
from test_train import data_dir, invoke, train_args  # noqa: F401

from sift_cli.apps.base import EvalOptions
from sift_cli.evaluation.evaluate import evaluate_run
from sift_cli.store.rundir import RunDir

LORA = ["--set", "train.lora.rank=2", "--set", "train.lora.alpha=4"]


def test_a_lora_run_trains_the_factors_and_loads_in_transformers_and_peft(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_path = tmp_path / "lora"
    result = invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "3", *LORA, "--set", "train.lora.merge=true"))
    assert result.exit_code == 0, result.output
    run = RunDir.open(run_path)
    config = json.loads((run.model_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2, 4)
    assert sorted(config["target_modules"]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    adapter = load_file(run.model_dir / "adapter_model.safetensors")
    assert sorted(adapter) == sorted(f"base_model.model.model.layers.{i}.mlp.down_proj.lora_{f}.weight" for i in (0, 1) for f in "AB")
    assert all(adapter[name].abs().sum() > 0 for name in adapter if "lora_B" in name)

    alignment = run.read_alignment()
    assert set(alignment["component"]) == {"down.A", "down.B"} and len(alignment) == 3 * 4

    ids = torch.tensor([[5, 17, 42, 9, 77, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = base(ids).logits
    with_adapter = PeftModel.from_pretrained(base, run.model_dir)(ids).logits
    merged = AutoModelForCausalLM.from_pretrained(run.model_dir / "merged")(ids).logits
    assert not torch.allclose(with_adapter, before, atol=1e-4)
    torch.testing.assert_close(merged, with_adapter, rtol=1e-5, atol=1e-5)

    results = evaluate_run(run_path, EvalOptions(tasks=[]), console=Console(quiet=True))
    assert set(results["perplexity"]) == {"forget", "retain"}
    assert invoke("localize", str(run_path)).exit_code == 0
    refused = invoke("pome", str(run_path), "-o", str(tmp_path / "pome"))
    assert refused.exit_code == 2 and "LoRA adapters" in refused.output and not (tmp_path / "pome").exists()


def test_a_lora_run_resumes_exactly_with_k_capped_at_the_rank(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--set", "train.checkpoint_every=2", *LORA, "--k", "8"]
    assert invoke(*train_args(tiny_model_dir, data_dir, straight, "--steps", "4", *common)).exit_code == 0
    assert invoke(*train_args(tiny_model_dir, data_dir, resumed, "--steps", "2", *common)).exit_code == 0
    result = invoke("train", "--resume", str(resumed), "--steps", "4")
    assert result.exit_code == 0, result.output
    expected, got = (load_file(path / "model" / "adapter_model.safetensors") for path in (straight, resumed))
    assert expected.keys() == got.keys() and all(torch.equal(got[name], expected[name]) for name in expected)
