"""Token-labelled examples: padding them into batches and scoring their labelled tokens, shared by the apps."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from sift_cli.apps.base import Batch, Loss, Objectives

IGNORE = -100
"""Label of positions no loss looks at (the prompt, padding, the other objective's tokens)."""


def pad_id(tokenizer: Any) -> int:
    """The id padding is written with: the tokenizer's pad token, else its EOS (padding is masked, so the
    id only has to exist)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def label_log_probs(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every labelled token (flat, in mask order) and the mask of the positions they sit at.

    Labels predict their own position, so logits shift by one. Only the labelled positions' logits are
    promoted to fp32: prompt and padding rows of a (batch, length, vocab) tensor never are."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    selected = torch.log_softmax(logits[mask].float(), dim=-1)
    return selected.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1), mask


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
    the tokenizer's pad id."""
    pad = pad_id(tokenizer)
    return Objectives(
        f_data=f_data,
        g_data=g_data,
        collate_f=label_collator("f_labels", pad),
        collate_g=label_collator("g_labels", pad),
        loss_f=loss_f,
        loss_g=loss_g,
    )


@torch.no_grad()
def per_example_nll(model: nn.Module, items: Sequence[dict[str, list[int]]], labels_key: str, pad_id: int, batch_size: int) -> list[float]:
    """Mean NLL per labelled token of each item, one number per item (items without a labelled token must
    be left out by the caller). Kept per item so that a comparison can resample items and pair two models
    item by item."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = label_collator(labels_key, pad_id)
    scores: list[float] = []
    for start in range(0, len(items), batch_size):
        batch = {key: value.to(device) for key, value in collate(list(items[start : start + batch_size])).items()}
        logps, mask = label_log_probs(model, batch)
        counts = mask.sum(dim=1).tolist()
        scores += [-chunk.double().mean().item() for chunk in torch.split(logps.cpu(), counts)]
    model.train(was_training)
    return scores
