"""A few bf16 training steps of a random-initialised model from a config directory, with AdamW, Muon
and SIFT: seconds per step as ratios to Muon, and peak memory against the dry-run estimate.

Nothing is downloaded: the model comes from a `config.json` (configs/models/). On a GPU the model keeps
its full depth if the estimate fits the free memory, else as many layers as fit. On CPU (the test suite
runs this on a tiny config) the same code runs and peak memory is not measured.

    python scripts/gpu_steps.py --model configs/models/llama-2-7b --steps 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sift_cli import memory
from sift_cli.engine import OptimizerConfig, SiftOptimizer

TRAINED = r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight"
METHODS = {
    "adamw": OptimizerConfig(method="adamw", lr=2e-5),
    "muon": OptimizerConfig(method="muon", lr=2e-5),
    "sift": OptimizerConfig(method="sift", lr=2e-5, k=192, eps=-0.1),
}


def build(config: AutoConfig, device: str) -> torch.nn.Module:
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def trained(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    import re

    named = []
    for name, p in model.named_parameters():
        p.requires_grad_(bool(re.search(TRAINED, name)))
        if p.requires_grad:
            named.append((name, p))
    return named


def peak_estimate(config: AutoConfig, cfg: OptimizerConfig, batch: int, length: int) -> int:
    meta = build(config, "meta")
    return memory.estimate(meta, trained(meta), cfg, memory.language_model_forward(meta, batch, length)).peak


def fit_layers(config: AutoConfig, batch: int, length: int, budget: int) -> AutoConfig:
    """The config with as many layers as let SIFT's estimated peak (the largest of the three methods:
    it adds subspace caches) fit `budget` bytes. Memory grows linearly with depth, so two estimates
    (one layer, all layers) place the cut."""
    sift = METHODS["sift"]
    depth = config.num_hidden_layers
    full = peak_estimate(config, sift, batch, length)
    if full <= budget or depth == 1:
        return config
    fitted = copy.deepcopy(config)
    fitted.num_hidden_layers = 1
    one = peak_estimate(fitted, sift, batch, length)
    per_layer = (full - one) / (depth - 1)
    fitted.num_hidden_layers = max(1, min(depth, 1 + int((budget - one) // per_layer)))
    return fitted


def run_method(config: AutoConfig, name: str, cfg: OptimizerConfig, device: str, steps: int, batch: int, length: int) -> dict:
    torch.manual_seed(0)
    model = build(config, device)
    named = trained(model)
    if cfg.method == "sift" and cfg.k is not None:
        cfg = replace(cfg, k=min(cfg.k, min(min(p.shape) for _, p in named) // 2))
    opt = SiftOptimizer(named, cfg)
    gen = torch.Generator().manual_seed(1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        # g ascends the loss f descends, on sequences that share their first half: the objectives
        # conflict (tau ~ -0.5), so SIFT's branch runs on every block as it would under a constraint.
        ids = torch.randint(0, config.vocab_size, (batch, length), generator=gen)
        other = ids.clone()
        other[:, length // 2 :] = torch.randint(0, config.vocab_size, (batch, length - length // 2), generator=gen)
        for objective, sign, tokens in (("f", 1.0, ids), ("g", -1.0, other)):
            tokens = tokens.to(device)
            (sign * model(input_ids=tokens, labels=tokens).loss).backward()
            opt.capture(objective)
        report = opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    estimate = peak_estimate(config, cfg, batch, length)
    del opt, model
    if device == "cuda":
        torch.cuda.empty_cache()
    timed = seconds[1:] or seconds  # the first step allocates state and cold subspace caches
    return {"method": name, "seconds": statistics.median(timed), "peak": peak, "estimate": estimate, "n_sift": report.n_sift}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="directory holding a config.json")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    config = AutoConfig.from_pretrained(args.model)
    if args.device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        depth = config.num_hidden_layers
        config = fit_layers(config, args.batch, args.length, int(0.9 * free))
        print(f"{args.model.name}: {config.num_hidden_layers} of {depth} layers fit {free / memory.GiB:.1f} GiB free")
    rows = [run_method(config, name, cfg, args.device, args.steps, args.batch, args.length) for name, cfg in METHODS.items()]
    muon = next(row["seconds"] for row in rows if row["method"] == "muon")
    print(f"{'method':<8}{'s/step':>10}{'x Muon':>9}{'SIFT blocks':>13}{'peak GiB':>10}{'estimate GiB':>14}{'peak/est':>10}")
    for row in rows:
        peak = "-" if row["peak"] is None else f"{row['peak'] / memory.GiB:.2f}"
        ratio = "-" if row["peak"] is None else f"{row['peak'] / row['estimate']:.2f}"
        print(f"{row['method']:<8}{row['seconds']:>10.3f}{row['seconds'] / muon:>9.2f}{row['n_sift']:>13}"
              f"{peak:>10}{row['estimate'] / memory.GiB:>14.2f}{ratio:>10}")  # fmt: skip


if __name__ == "__main__":
    main()
