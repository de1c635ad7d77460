"""Batched greedy generation from chat prompts, shared by the apps that judge what a model writes.

Prompts go through the tokenizer's chat template (a model without one gets the plain text), are
left-padded so that every row's continuation starts at the same column, and are run longest-first so
that batches waste little padding.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

Messages = list[dict[str, str]]


def as_messages(prompt: str | Messages) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def prompt_ids(tokenizer: Any, prompt: str | Messages) -> list[int]:
    """Token ids of a prompt ready for the assistant's reply (the template adds BOS where it wants one)."""
    messages = as_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(message["content"] for message in messages) + "\n"
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def stop_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """End-of-turn ids from both the tokenizer and the model's generation config."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[Messages],
    max_new_tokens: int,
    batch_size: int = 8,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """Greedy replies to `prompts`, in their order; prompts longer than `max_prompt_tokens` keep their end."""
    encoded = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    if max_prompt_tokens is not None:
        encoded = [ids[-max_prompt_tokens:] for ids in encoded]
    stops = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    replies = generate_ids(model, encoded, pad_id, stops, max_new_tokens, batch_size)
    return [tokenizer.decode(reply, skip_special_tokens=True).strip() for reply in replies]


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    stop_ids: Sequence[int],
    max_new_tokens: int,
    batch_size: int = 8,
) -> list[list[int]]:
    """New ids of each prompt's greedy reply, cut before the first stop id.

    Ids at both ends serve the speech app too, whose prompts are built as ids (a spoken instruction is
    hundreds of audio tokens) and whose replies are split into text and speech by id."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id, eos_token_id=list(stop_ids)
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    replies: list[list[int]] = [[] for _ in prompts]
    stops = set(stop_ids)
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        width = max(len(prompts[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for slot, i in enumerate(rows):
            input_ids[slot, width - len(prompts[i]) :] = torch.tensor(list(prompts[i]), dtype=torch.long)
            attention[slot, width - len(prompts[i]) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
        )
        for slot, i in enumerate(rows):
            reply = []
            for token in output[slot, width:].tolist():
                if token in stops:
                    break
                reply.append(token)
            replies[i] = reply
    model.train(was_training)
    return replies
