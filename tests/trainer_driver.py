"""SiftTrainer on two token datasets, as one process or one rank of torchrun: `trainer_driver.py MODEL_DIR
OUTPUT BATCH`. Writes OUTPUT/model.safetensors (rank 0), so a test can compare launches."""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from sift_cli.api import OptimizerConfig, SiftTrainer


def collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = torch.stack(rows)
    return {"input_ids": ids, "labels": ids}


def main(model_dir: str, output: str, batch: int) -> None:
    generator = torch.Generator().manual_seed(0)
    retain = [torch.randint(0, 60, (12,), generator=generator) for _ in range(16)]
    forget = [torch.randint(60, 120, (12,), generator=generator) for _ in range(16)]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = TrainingArguments(output_dir=output, max_steps=3, per_device_train_batch_size=batch, learning_rate=0.02, save_strategy="no",
                             use_cpu=True, report_to=[], disable_tqdm=True, ddp_find_unused_parameters=False)  # fmt: skip
    trainer = SiftTrainer(model, args, retain, forget, sift_config=OptimizerConfig(method="sift", k=4, eps=-0.01),
                          collate_f=collate, collate_g=collate, trainable=r"mlp\.(down|up)_proj")  # fmt: skip
    trainer.train()
    trainer.save_model(output)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
