"""SIFT in a plain PyTorch loop: two losses, two backward passes, capture, step.

Runs in seconds on a CPU (a tiny Llama built from a config, random token data), and checks what it
shows: the update takes both objectives, gradient accumulation works through capture, and a
state_dict round trip continues bit-exactly. `python examples/plain_loop.py`; the test suite runs it.
"""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sift_cli.api import OptimizerConfig, SiftOptimizer

STEPS, ACCUM, BATCH, LENGTH = 4, 2, 4, 16


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(config)


def batches(seed: int) -> list[torch.Tensor]:
    """STEPS x ACCUM micro-batches of token ids; f and g draw from different halves of the vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    low = 0 if seed == 1 else 64
    return [torch.randint(low, low + 64, (BATCH, LENGTH), generator=generator) for _ in range(STEPS * ACCUM)]


def make_optimizer(model: torch.nn.Module) -> SiftOptimizer:
    # Every trainable parameter goes in with its name: hidden matrices take the spectral path
    # (SIFT's gate, Muon otherwise), names matching adamw_regex (embeddings, norms, lm_head) take AdamW.
    config = OptimizerConfig(method="sift", lr=0.02, adamw_lr=1e-3, eps=-0.1, k=8)
    return SiftOptimizer([(name, p) for name, p in model.named_parameters() if p.requires_grad], config)


def train_steps(model: torch.nn.Module, optimizer: SiftOptimizer, first: int, last: int) -> list[int]:
    """Optimizer steps first..last-1; returns how many blocks took the SIFT branch at each."""
    f_data, g_data = batches(1), batches(2)
    fired = []
    for step in range(first, last):
        for micro in range(ACCUM):
            ids_f, ids_g = f_data[step * ACCUM + micro], g_data[step * ACCUM + micro]
            # f (utility), then g (constraint): each backward leaves .grad, capture() moves it into the
            # optimizer (adding to earlier micro-batches of the same objective) and clears .grad.
            (model(input_ids=ids_f, labels=ids_f).loss / ACCUM).backward()
            optimizer.capture("f")
            (model(input_ids=ids_g, labels=ids_g).loss / ACCUM).backward()
            optimizer.capture("g")
        report = optimizer.step()  # one update from both accumulated gradients
        fired.append(report.n_sift)
    return fired


def main() -> None:
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(model)
    fired = train_steps(model, optimizer, 0, STEPS)
    print(f"{STEPS} steps, blocks on the SIFT branch per step: {fired} of {len(optimizer.param_groups[0]['params'])} matrices")
    assert any(not torch.equal(model.state_dict()[key], before[key]) for key in before)

    # Resume: weights and optimizer state (both momenta, AdamW moments, SIFT's subspace caches) saved
    # after step 2 and loaded into a fresh model and optimizer continue exactly as the straight run.
    resumed = tiny_model()
    first_half = make_optimizer(resumed)
    train_steps(resumed, first_half, 0, STEPS // 2)
    saved = {"model": copy.deepcopy(resumed.state_dict()), "optimizer": copy.deepcopy(first_half.state_dict())}
    fresh = tiny_model()
    fresh.load_state_dict(saved["model"])
    optimizer_again = make_optimizer(fresh)
    optimizer_again.load_state_dict(saved["optimizer"])
    train_steps(fresh, optimizer_again, STEPS // 2, STEPS)
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in model.state_dict().items())
    print("resumed from a state_dict after step 2: weights bit-identical to the straight run")


if __name__ == "__main__":
    main()
