"""Padding token-labelled examples into batches, shared by the apps whose f and g label one sequence."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from sift_cli.apps.base import Batch, Loss, Objectives

IGNORE = -100
"""Label of positions no loss looks at (the prompt, padding, the other objective's tokens)."""


def label_collator(labels_key: str, pad_id: int) -> Callable[[list[dict[str, list[int]]]], Batch]:
    """Right-pad encoded examples into input_ids, attention_mask and one objective's labels."""

    def collate(items: list[dict[str, list[int]]]) -> Batch:
        width = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for row, item in enumerate(items):
            length = len(item["input_ids"])
            input_ids[row, :length] = torch.tensor(item["input_ids"])
            attention[row, :length] = 1
            labels[row, :length] = torch.tensor(item[labels_key])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    return collate


def labelled_objectives(tokenizer: Any, f_data: Sequence[Any], g_data: Sequence[Any], loss_f: Loss, loss_g: Loss) -> Objectives:
    """Objectives over examples that carry `f_labels` and `g_labels` for one token sequence, padded with
    the tokenizer's pad id (its EOS when it has none; padding is masked, so the id only needs to exist)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Objectives(
        f_data=f_data,
        g_data=g_data,
        collate_f=label_collator("f_labels", pad_id),
        collate_g=label_collator("g_labels", pad_id),
        loss_f=loss_f,
        loss_g=loss_g,
    )
