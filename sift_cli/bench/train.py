"""`sift bench train`: whole training steps of Muon, SIFT and AdamW on one model, as ratios to Muon.

A whole step is what a user waits for: both objectives' forward and backward passes, the gradient
capture, and the optimizer step. The objectives are the issue's conflict setting: f is the language-
model loss on one text, g is -0.1 x the language-model loss on another, so the gradients of every block
point against each other and SIFT's gate sees real conflicts. Each step reads new windows of the demo's
offline paragraphs (human anatomy for f, infectious disease for g), as training does: a batch repeated
every step would give momenta of rank below K, which no real run has and which sends every block to
the exact decomposition. Every 2-D projection of the decoder is trained. Each method runs in its own
child process, so its peak resident memory is its own; the parent prints seconds per step (whole, and
the optimizer alone) and peak memory as ratios to Muon measured in the same run.

SIFT runs twice: gated at the preset's eps (the branch fires where the gradients conflict), and with
the gate forced open on every block (eps above every possible cosine), the worst case of its cost.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from sift_cli.demo.data import FORGET_TRAIN, RETAIN_TRAIN
from sift_cli.engine import OptimizerConfig, SiftOptimizer

TRAINABLE = r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight"
G_WEIGHT = -0.1
VARIANTS: dict[str, dict[str, Any]] = {
    "muon": {"method": "muon"},
    "sift (gated, eps -0.1)": {"method": "sift", "eps": -0.1},
    "sift (gate forced open)": {"method": "sift", "eps": 2.0},
    "adamw": {"method": "adamw"},
}
TEXTS = {"f": RETAIN_TRAIN, "g": FORGET_TRAIN}


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def batches(tokenizer: Any, texts: list[str], batch_size: int, length: int, count: int) -> list[torch.Tensor]:
    """`count` batches of `batch_size` windows of `length` tokens, spread evenly over the joined texts, so
    no two windows of a run start at the same token."""
    stream = tokenizer(" ".join(texts), return_tensors="pt")["input_ids"][0]
    room = stream.numel() - length
    windows = batch_size * count
    if room < windows:
        raise RuntimeError(f"the bench texts hold {stream.numel()} tokens, too few for {windows} windows of {length}")
    starts = [i * room // windows for i in range(windows)]
    rows = torch.stack([stream[start : start + length] for start in starts])
    return list(rows.split(batch_size))


def measure(model: nn.Module, tokenizer: Any, settings: dict[str, Any], k: int, steps: int, batch_size: int, length: int) -> dict[str, Any]:
    """Seconds per whole step and per optimizer step (means over `steps` after one warm-up step), SIFT
    blocks and exact-decomposition fallbacks per step, and this process's peak resident memory."""
    named = [(name, p) for name, p in model.named_parameters() if p.ndim == 2 and re.search(TRAINABLE, name)]
    wanted = {id(p) for _, p in named}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    optimizer = SiftOptimizer(named, OptimizerConfig(lr=1e-4, k=k, **settings))
    ids = {key: batches(tokenizer, texts, batch_size, length, steps + 1) for key, texts in TEXTS.items()}
    whole, inner, fired, fallbacks = [], [], [], []
    for step in range(steps + 1):
        started = time.perf_counter()
        lm_loss(model, ids["f"][step]).backward()
        optimizer.capture("f")
        (G_WEIGHT * lm_loss(model, ids["g"][step])).backward()
        optimizer.capture("g")
        report = optimizer.step()
        if step > 0:
            whole.append(time.perf_counter() - started)
            inner.append(report.seconds)
            fired.append(report.n_sift)
            fallbacks.append(sum(block.subspace_fallback for block in report.blocks))
    return {
        "step_seconds": sum(whole) / steps,
        "optimizer_seconds": sum(inner) / steps,
        "sift_blocks": sum(fired) / steps,
        "fallbacks": sum(fallbacks) / steps,
        "blocks": len(named),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _child(variant: str, k: int, steps: int, batch_size: int, length: int) -> dict[str, Any]:
    """One variant in a fresh process (its own peak memory), on the offline SmolLM2."""
    probe = (
        "import json, sys, torch\n"
        "from sift_cli.output import configure_output\n"
        "configure_output(False)\n"
        "torch.manual_seed(0)\n"
        "from sift_cli.bench.train import VARIANTS, measure\n"
        "from sift_cli.hf.loading import load_model, load_tokenizer\n"
        "from sift_cli.spec import ModelSpec\n"
        "spec = ModelSpec()\n"
        "model, tokenizer = load_model(spec), load_tokenizer(spec)\n"
        f"print(json.dumps(measure(model, tokenizer, VARIANTS[{variant!r}], {k}, {steps}, {batch_size}, {length})))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench train ({variant}) failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_train_bench(k: int = 128, steps: int = 2, batch_size: int = 4, length: int = 128, console: Console | None = None) -> list[dict[str, Any]]:
    """Every variant's whole-step and optimizer seconds and peak memory, and their ratios to Muon."""
    rows = [{"variant": variant, **_child(variant, k, steps, batch_size, length)} for variant in VARIANTS]
    muon = rows[0]
    for row in rows:
        for key in ("step_seconds", "optimizer_seconds", "peak_rss_bytes"):
            row[f"{key}_x_muon"] = row[key] / muon[key]
    table = Table(title=f"whole training steps, SmolLM2-135M, every projection trained, K={k}, batch {batch_size}x{length}",
                  title_justify="left", caption=f"means of {steps} steps after one warm-up; ratios to Muon in this run")  # fmt: skip
    for column in ("variant", "step s", "x Muon", "optimizer s", "x Muon ", "SIFT blocks", "exact fallbacks", "peak RSS", "x Muon  "):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in rows:
        table.add_row(
            row["variant"], f"{row['step_seconds']:.1f}", f"{row['step_seconds_x_muon']:.2f}",
            f"{row['optimizer_seconds']:.1f}", f"{row['optimizer_seconds_x_muon']:.2f}",
            f"{row['sift_blocks']:.0f}/{row['blocks']}", f"{row['fallbacks']:.0f}", f"{row['peak_rss_bytes'] / 2**30:.2f} GiB", f"{row['peak_rss_bytes_x_muon']:.2f}",
        )  # fmt: skip
    (console or Console()).print(table)
    return rows
