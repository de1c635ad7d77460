"""SiftTrainer: a transformers Trainer that takes the same steps as `sift train`, resumes bit-exactly
from its own checkpoints, and leaves an output directory `sift localize` reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import prepare_unlearning
from safetensors.torch import load_file
from test_train import FORGET, RETAIN, TRAINABLE, invoke, train_args

from sift_cli.spec import resolve_spec
from sift_cli.store.rundir import RunDir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_unlearning(tmp_path_factory.mktemp("trainer-data"), FORGET, RETAIN)


def spec_for(tiny_model_dir: Path, data_dir: Path, output: Path, steps: int):
    return resolve_spec(app="unlearning", overrides={
        "model.name": str(tiny_model_dir), "data.path": str(data_dir), "output": str(output), "optim.k": 4, "optim.lr": 0.02,
        "objective.layer": 1, "train.trainable": TRAINABLE, "train.batch_size": 2, "data.max_length": 32,
        "objective.steering_coeff": 20, "train.steps": steps, "train.device": "cpu",
    })  # fmt: skip


def trained(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def run_trainer(spec, **arguments):
    from sift_cli.api import SiftTrainer

    resume = arguments.pop("resume", None)
    trainer = SiftTrainer.from_spec(spec, save_strategy="steps", disable_tqdm=True, **arguments)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    return trainer


def test_sift_trainer_takes_the_steps_sift_train_takes(tiny_model_dir, data_dir, tmp_path) -> None:
    cli_run = tmp_path / "cli"
    result = invoke(*train_args(tiny_model_dir, data_dir, cli_run, "--steps", "3", "--set", "train.device=cpu"))
    assert result.exit_code == 0, result.output
    run_trainer(spec_for(tiny_model_dir, data_dir, tmp_path / "trainer", 3))
    expected, got = trained(cli_run / "model"), trained(tmp_path / "trainer")
    changed = [name for name in expected if not torch.equal(expected[name], load_file(tiny_model_dir / "model.safetensors")[name])]
    assert changed and all("mlp.down_proj" in name for name in changed)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    cli_align, trainer_align = RunDir(cli_run).read_alignment(), RunDir(tmp_path / "trainer").read_alignment()
    assert list(trainer_align["branch"]) == list(cli_align["branch"])
    torch.testing.assert_close(torch.tensor(trainer_align["tau"].to_numpy()), torch.tensor(cli_align["tau"].to_numpy()), rtol=1e-4, atol=1e-5)
    cli_losses = RunDir(cli_run).read_metrics()[["loss_f", "loss_g"]].to_numpy()
    trainer_losses = RunDir(tmp_path / "trainer").read_metrics()[["loss_f", "loss_g"]].to_numpy()
    torch.testing.assert_close(torch.tensor(trainer_losses), torch.tensor(cli_losses), rtol=1e-5, atol=1e-6)

    result = invoke("localize", str(tmp_path / "trainer"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "trainer" / "plots" / "tau_layers.png").is_file()


def test_a_trainer_checkpoint_resumes_bit_exactly(tiny_model_dir, data_dir, tmp_path) -> None:
    straight = tmp_path / "straight"
    run_trainer(spec_for(tiny_model_dir, data_dir, straight, 4), save_steps=4)
    interrupted = tmp_path / "interrupted"
    run_trainer(spec_for(tiny_model_dir, data_dir, interrupted, 4), save_steps=2)
    state = torch.load(interrupted / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert any({"momentum_f", "momentum_g"} <= set(entry) for entry in state["state"].values())
    run_trainer(spec_for(tiny_model_dir, data_dir, interrupted, 4), save_steps=2, resume=str(interrupted / "checkpoint-2"))
    expected, got = trained(straight), trained(interrupted)
    assert all(torch.equal(got[name], tensor) for name, tensor in expected.items())
    columns = ["step", "block", "tau", "branch"]
    assert RunDir(interrupted).read_alignment()[columns].equals(RunDir(straight).read_alignment()[columns])


def test_sift_trainer_trains_a_peft_model_on_two_datasets_in_bf16(tiny_model_dir, tmp_path) -> None:
    """The generic path a Trainer user takes: any causal LM (here a peft LoRA model), two tokenized
    datasets, the model's own loss for f and gradient ascent for g; Trainer saves the adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from sift_cli.api import OptimizerConfig, SiftTrainer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["down_proj", "up_proj"]))
    generator = torch.Generator().manual_seed(0)
    retain = [{"input_ids": torch.randint(0, 60, (12,), generator=generator)} for _ in range(8)]
    forget = [{"input_ids": torch.randint(60, 120, (12,), generator=generator)} for _ in range(8)]

    def collate(rows):
        ids = torch.stack([row["input_ids"] for row in rows])
        return {"input_ids": ids, "labels": ids}

    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             learning_rate=0.02, save_steps=3, bf16=True, use_cpu=True, report_to=[], disable_tqdm=True)  # fmt: skip
    trainer = SiftTrainer(model, args, retain, forget, sift_config=OptimizerConfig(method="sift", k=2), data_collator=collate,
                          loss_g=lambda model, batch: -model(**batch).loss)  # fmt: skip
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".lora_" in name for name in changed)
    assert (tmp_path / "out" / "checkpoint-3" / "adapter_model.safetensors").is_file()
    metrics = RunDir(tmp_path / "out").read_metrics()
    assert list(metrics["step"]) == [1, 2, 3] and metrics[["loss_f", "loss_g"]].notna().all().all()
    assert set(RunDir(tmp_path / "out").read_alignment()["component"]) == {"down.A", "down.B", "up.A", "up.B"}

    # accelerate's state is process-wide: the next `sift train` in this process must not inherit bf16
    from sift_cli.training.launch import make_accelerator

    spec = resolve_spec(app="unlearning", overrides={"data.path": str(tmp_path), "train.device": "cpu"})
    assert trainer.accelerator.mixed_precision == "bf16" and make_accelerator(spec, tmp_path).mixed_precision == "no"
