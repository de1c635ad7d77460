"""What a training run holds in memory, per device: estimated for `sift train --dry-run`, measured for
`sift bench memory`.

The optimizer's share is never guessed: it is summed from SiftOptimizer.state_layout(), which the
engine's tests hold equal to what a step allocates. Activations are what autograd saves for the
backward pass in one forward of the spec's micro-batch, recorded on the meta device (shapes and dtypes
without memory), so the figure follows the trained layers, the dtype and the attention implementation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from sift_cli.engine import OptimizerConfig, SiftOptimizer
from sift_cli.engine.optimizer import SUBSPACE_CACHES
from sift_cli.errors import SiftError
from sift_cli.resources import configs_dir
from sift_cli.spec import LoraSpec, RunSpec
from sift_cli.training.plan import meta_model, optimizer_config, run_optimizer_config, select_trainable, select_trained, trainable_regex

MODEL_CONFIGS = configs_dir() / "models"
"""<name>/config.json of the paper's models (shapes only), in the top-level configs/ (and the wheel)."""

GiB = 2**30
STEP_TRANSIENT_COPIES = 6
"""fp32 temporaries of the largest trained tensor while the optimizer steps it: the weight being
updated, the two Nesterov momenta, the direction and two Newton-Schulz / AdamW intermediates."""

STATE_PARTS = {
    "master_low": "master weights",
    "master": "master weights",
    "compensation": "master weights",
    "momentum_f": "momenta",
    "momentum_g": "momenta",
    "exp_avg": "AdamW moments",
    "exp_avg_sq": "AdamW moments",
}


def state_part(key: str) -> str:
    """The memory category of an optimizer state key (`basis_f[q]` is a subspace cache)."""
    return "subspace caches" if key.startswith(SUBSPACE_CACHES) else STATE_PARTS.get(key, "other")


def _nbytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    return int(torch.Size(tuple(shape)).numel()) * dtype.itemsize


def layout_bytes(opt: SiftOptimizer) -> dict[str, int]:
    """Bytes of optimizer state by category, from the engine's own layout (steady state, after steps)."""
    totals: dict[str, int] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, (shape, dtype) in opt.state_layout(p).items():
                totals[state_part(key)] = totals.get(state_part(key), 0) + _nbytes(shape, dtype)
    return totals


def allocated_bytes(opt: SiftOptimizer) -> dict[str, int]:
    """Bytes of the state tensors the optimizer has actually allocated, by category."""
    totals: dict[str, int] = {}
    for state in opt.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                totals[state_part(key)] = totals.get(state_part(key), 0) + value.nbytes
    return totals


def torch_adamw_mixed_precision_bytes(params: list[nn.Parameter]) -> int:
    """Measured state of the usual mixed-precision AdamW: an fp32 master of each parameter plus what
    torch.optim.AdamW allocates for it in one step (two fp32 moments and a step count)."""
    masters = [nn.Parameter(p.detach().to(torch.float32, copy=True)) for p in params]
    opt = torch.optim.AdamW(masters, foreach=False)
    for master in masters:
        master.grad = torch.zeros_like(master)
    opt.step()
    state = sum(v.nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.device == masters[0].device)
    return state + sum(m.nbytes for m in masters)


def saved_activation_bytes(forward: Callable[[], object], params: Iterable[Tensor]) -> int:
    """Bytes autograd saves for backward during `forward()` (the activations a training step keeps),
    parameters excluded. Storages are counted once; meta tensors have no addresses, so there views of
    one tensor count once."""
    param_ids = {id(p) for p in params}
    seen: set[tuple[int, int]] = set()
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        base = t._base if t._base is not None else t
        if id(t) in param_ids or id(base) in param_ids:
            return t
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes()) if t.device.type != "meta" else (id(base), 0)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return total


@contextmanager
def fused_causal_attention() -> Iterator[None]:
    """Make scaled_dot_product_attention the fused causal kernel while a meta forward runs.

    On the meta device SDPA falls back to its math kernel, which saves the T x T attention probabilities
    for backward; training on a GPU (or CPU) runs a fused kernel that saves only q, k, v, the output and
    a logsumexp. The fused CPU kernel's op has a meta version that records exactly those. The masks of
    the forwards built here are causal, so the kernel's own causal masking replaces them."""
    original = F.scaled_dot_product_attention

    def fused(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:  # fmt: skip
        groups = query.shape[-3] // key.shape[-3]
        if groups > 1:
            key, value = key.repeat_interleave(groups, -3), value.repeat_interleave(groups, -3)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, True, scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def language_model_forward(model: nn.Module, rows: int, length: int, stop_layer: int | None = None) -> Callable[[], object]:
    """A forward of `rows` sequences of `length` tokens with a next-token loss (or, for RMU, up to the
    output of decoder layer `stop_layer`), on the model's device; on meta with fused attention."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(0)).to(device)
    # A ready 4-D causal mask: a 2-D one (or none) makes transformers inspect its values, which a meta
    # tensor does not have.
    mask = torch.ones(length, length, dtype=torch.bool, device=device).tril().expand(rows, 1, length, length)

    def run() -> object:
        if stop_layer is None:
            return model(input_ids=ids, attention_mask=mask, labels=ids).loss
        from sift_cli.apps.unlearning.app import layer_output

        return layer_output(model, model.get_decoder().layers[stop_layer], {"input_ids": ids, "attention_mask": mask})

    def forward() -> object:
        if device.type != "meta":
            return run()
        with fused_causal_attention():
            return run()

    return forward


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device. `parts` in the order they are printed; `peak` adds them, taking the larger of
    the activations and the optimizer step's temporaries (one is freed before the other exists)."""

    parts: dict[str, int]
    trained_parameters: int

    @property
    def peak(self) -> int:
        parts = dict(self.parts)
        activations = parts.pop("activations (one micro-batch)", 0)
        transient = parts.pop("optimizer step temporaries", 0)
        return sum(parts.values()) + max(activations, transient)

    def state_per_parameter(self) -> float:
        state = sum(v for k, v in self.parts.items() if k.startswith("optimizer: "))
        return state / max(1, self.trained_parameters)


def estimate(
    model: nn.Module,
    named: list[tuple[str, nn.Parameter]],
    cfg: OptimizerConfig,
    forward: Callable[[], object] | None,
    frozen_copy_bytes: int = 0,
    processes: int = 1,
    parallel: str = "ddp",
) -> MemoryEstimate:
    """Per rank: weights, the two captured gradients (f and g, parameter dtype), optimizer state by
    category, the step's temporaries and the activations saved by `forward` (None: not estimated).

    Under DDP with several processes each rank holds everything, plus DDP's gradient buckets (one
    copy of the trained gradients). Under FSDP2 weights, gradients and optimizer state are divided
    among the processes (subspace caches live on each block's owner, 1/N of them on average); a rank
    also holds one decoder layer gathered whole for its forward and backward, and its optimizer step
    gathers whole momenta of the matrices it owns (the step temporaries, which stay whole) and sends
    and receives 1/N of the momenta of one shape at a time."""
    opt = SiftOptimizer(named, cfg)
    trained = [p for _, p in named]
    shard = processes if parallel == "fsdp2" and processes > 1 else 1
    parts = {"weights": sum(p.nbytes for p in model.parameters()) // shard}
    if shard > 1:
        layers = getattr(model.get_decoder(), "layers", []) if hasattr(model, "get_decoder") else []
        parts["one layer gathered (FSDP2)"] = max((sum(p.nbytes for p in layer.parameters()) for layer in layers), default=0)
    if frozen_copy_bytes:
        parts["frozen reference copy"] = frozen_copy_bytes
    parts["gradients (f and g)"] = 2 * sum(p.nbytes for p in trained) // shard
    if processes > 1 and parallel == "ddp":
        parts["DDP gradient buckets"] = sum(p.nbytes for p in trained)
    parts.update({f"optimizer: {part}": size // shard for part, size in layout_bytes(opt).items()})
    temporaries = STEP_TRANSIENT_COPIES * 4 * max(p.numel() for p in trained)
    if shard > 1:
        by_shape: dict[tuple[int, ...], int] = {}
        for p in trained:
            if p.ndim == 2:
                by_shape[tuple(p.shape)] = by_shape.get(tuple(p.shape), 0) + p.numel()
        # both momenta, fp32, sent and received
        temporaries += 2 * 2 * 4 * max(by_shape.values(), default=0) // shard
    parts["optimizer step temporaries"] = temporaries
    if forward is not None:
        parts["activations (one micro-batch)"] = saved_activation_bytes(forward, model.parameters())
    return MemoryEstimate(parts, sum(p.numel() for p in trained) // shard)


def parse_size(text: str) -> int:
    """'80GiB', '80GB' (taken as GiB, as GPU vendors quote), '141 GiB' or a bare number of GiB -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(g|gb|gib|m|mb|mib)?\s*", text, re.IGNORECASE)
    if match is None:
        raise SiftError(f"--gpu-memory {text!r}: expected a size such as 80GiB or 141GiB")
    unit = (match.group(2) or "g").lower()
    return int(float(match.group(1)) * (2**20 if unit.startswith("m") else GiB))


def savings(est: MemoryEstimate, model: nn.Module, named: list[tuple[str, nn.Parameter]], cfg: OptimizerConfig) -> list[tuple[str, int]]:
    """Settings that lower the peak, with the bytes each saves, largest first."""
    options: list[tuple[str, int]] = []
    base_state = sum(layout_bytes(SiftOptimizer(named, cfg)).values())
    candidates = {
        "--set optim.momentum_dtype=bfloat16": replace(cfg, momentum_dtype="bfloat16"),
        "--set optim.master_weights=false --set optim.update_rounding=stochastic": replace(
            cfg, master_weights=False, update_rounding="stochastic"
        ),
    }
    for flag, changed in candidates.items():
        saved = base_state - sum(layout_bytes(SiftOptimizer(named, changed)).values())
        if saved > 0:
            options.append((flag, saved))
    activations = est.parts.get("activations (one micro-batch)", 0)
    if activations:
        options.append(("halve train.batch_size (raise train.grad_accum to keep the batch) or data.max_length", activations // 2))
    return sorted(options, key=lambda item: -item[1])


BENCH_VARIANTS: dict[str, dict] = {
    "SIFT (default: master weights, fp32 momenta)": {},
    "SIFT, bf16 momenta": {"momentum_dtype": "bfloat16"},
    "SIFT, stochastic rounding (no master)": {"master_weights": False, "update_rounding": "stochastic"},
    "Muon": {"method": "muon"},
    "AdamW (engine)": {"method": "adamw"},
}


def model_from_config(name: str, device: str, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A random-initialised (or, on "meta", unallocated) model from configs/models/<name>."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = MODEL_CONFIGS / name
    if not (path / "config.json").is_file():
        raise SiftError(f"no model config at {path}; choose one of {sorted(p.name for p in MODEL_CONFIGS.iterdir() if p.is_dir())}")
    config = AutoConfig.from_pretrained(path)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def measure_state(model: nn.Module, preset: str, device: str, steps: int = 2) -> list[dict]:
    """Optimizer state per trained parameter for the preset's trained tensors and optimizer settings.

    On CPU the optimizer takes `steps` real steps on random gradients and the allocated state tensors
    are summed. On the meta device nothing can be computed, so init_state() allocates (on meta) what a
    step would, and SIFT's subspace caches, which only a SIFT step creates, come from the engine's layout
    (which the engine's tests hold equal to what a step allocates)."""
    from sift_cli.spec import resolve_spec

    spec = resolve_spec(preset=preset, assignments=["data.path=unused"])
    named = select_trainable(model, trainable_regex(spec))
    numel = sum(p.numel() for _, p in named)
    base = optimizer_config(spec.optim, model.config)
    rows = []
    for label, overrides in BENCH_VARIANTS.items():
        opt = SiftOptimizer(named, replace(base, **overrides))
        if device == "meta":
            opt.init_state()
            parts = allocated_bytes(opt)
            caches = layout_bytes(opt).get("subspace caches", 0)
            if caches:
                parts["subspace caches"] = caches
        else:
            gen = torch.Generator().manual_seed(0)
            for _ in range(steps):
                grads_f = [torch.randn(p.shape, generator=gen) for _, p in named]
                for objective in ("f", "g"):
                    # g opposes f (tau ~ -0.8): every block takes the SIFT branch and allocates its caches
                    for (_, p), g_f in zip(named, grads_f):
                        grad = g_f if objective == "f" else -0.8 * g_f + 0.6 * torch.randn(p.shape, generator=gen)
                        p.grad = grad.to(p.dtype)
                    opt.capture(objective)
                opt.step()
            parts = allocated_bytes(opt)
        rows.append({"variant": label, "bytes_per_param": sum(parts.values()) / numel, "parts": parts})
        del opt
    baseline = torch_adamw_mixed_precision_bytes([p for _, p in named]) / numel
    rows.append({"variant": "mixed-precision AdamW (torch, fp32 master)", "bytes_per_param": baseline, "parts": {}})
    for row in rows:
        row["ratio_to_adamw"] = row["bytes_per_param"] / baseline
        row["trained_parameters"] = numel
    return rows


def run_memory_bench(console: Console | None = None, cases: tuple[tuple[str, str, str], ...] | None = None) -> list[dict]:
    """Optimizer state per trained parameter, measured, for SmolLM2-135M under the unlearning_cpu preset
    on CPU and a Llama-2-7B-shaped model under the safety_paper preset on the meta device, as ratios to
    mixed-precision AdamW measured on the same tensors (bf16 weights in both)."""
    console = console or Console()
    cases = cases or (("smollm2-135m", "unlearning_cpu", "cpu"), ("llama-2-7b", "safety_paper", "meta"))
    out = []
    for name, preset, device in cases:
        model = model_from_config(name, device)
        rows = measure_state(model, preset, device)
        table = Table(title=f"optimizer state per trained parameter: {name} (bf16), {preset} preset, {device}, "
                            f"{rows[0]['trained_parameters']:,} trained")  # fmt: skip
        for column in ("settings", "bytes / param", "x AdamW", "master", "momenta / moments", "caches"):
            table.add_column(column, justify="left" if column == "settings" else "right")
        for row in rows:
            parts, n = row["parts"], row["trained_parameters"]
            moments = parts.get("momenta", 0) + parts.get("AdamW moments", 0)
            table.add_row(
                row["variant"],
                f"{row['bytes_per_param']:.2f}",
                f"{row['ratio_to_adamw']:.2f}",
                f"{parts.get('master weights', 0) / n:.2f}" if parts else "4.00",
                f"{moments / n:.2f}" if parts else "8.00",
                f"{parts.get('subspace caches', 0) / n:.3f}" if parts else "",
            )
            out.append({"model": name, "preset": preset, "device": device, **row})
        console.print(table)
        del model
    return out


def memory_estimate(spec: RunSpec, model: torch.nn.Module, processes: int = 1) -> MemoryEstimate:
    """Per-device memory of `spec` on `model` (a meta model: nothing is allocated). Activations are
    those of one micro-batch of the larger objective: a DPO pair is two sequences (safety), and RMU
    stops at the steered layer and keeps a frozen copy of the layers up to it (unlearning)."""
    named = select_trained(model, spec)
    cfg = run_optimizer_config(spec, model)
    rows = spec.train.batch_size * (2 if spec.app == "safety" else 1)
    stop = spec.objective.get("layer") if spec.app == "unlearning" else None
    frozen = 0
    if stop is not None:
        decoder = model.get_decoder()
        kept = [decoder.embed_tokens, *decoder.layers[: stop + 1]]
        frozen = sum(p.nbytes for module in kept for p in module.parameters())
    elif spec.app == "safety" and not spec.objective.get("precompute_reference", True):
        frozen = sum(p.nbytes for p in model.parameters())
    forward = language_model_forward(model, rows, spec.data.max_length, stop)
    return estimate(model, named, cfg, forward, frozen, processes, spec.train.parallel)


def print_memory(
    spec: RunSpec, model: torch.nn.Module, console: Console, gpu_memory: str | None = None, processes: int = 1
) -> MemoryEstimate:
    """The memory table per device (per rank of `processes`), and with `gpu_memory` whether the run
    fits one such GPU and what to change."""
    est = memory_estimate(spec, model, processes)
    launch = f", {processes} processes ({spec.train.parallel}), per rank" if processes > 1 else ""
    table = Table(
        title=f"memory per device ({spec.model.dtype} weights, batch {spec.train.batch_size} x {spec.data.max_length} tokens{launch})"
    )
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for part, size in est.parts.items():
        table.add_row(part, f"{size / GiB:,.2f}")
    table.add_row("peak (activations or step temporaries, not both)", f"{est.peak / GiB:,.2f}", style="bold")
    console.print(table)
    console.print(
        f"optimizer state: {est.state_per_parameter():.2f} bytes per trained parameter "
        f"(mixed-precision AdamW: 12); add ~1-2 GiB for the CUDA context and allocator"
    )
    if gpu_memory is not None:
        budget = parse_size(gpu_memory)
        if est.peak <= budget:
            console.print(f"fits one {gpu_memory} GPU: {est.peak / GiB:,.1f} GiB of {budget / GiB:,.0f} GiB")
        else:
            console.print(f"[red]does not fit[/red] one {gpu_memory} GPU: needs {est.peak / GiB:,.1f} GiB. To change:")
            named = select_trained(model, spec)
            cfg = run_optimizer_config(spec, model)
            options = savings(est, model, named, cfg)
            if spec.train.lora is None:
                adapted = spec.model_copy(update={"train": spec.train.model_copy(update={"lora": LoraSpec()})})
                lora = memory_estimate(adapted, meta_model(adapted), processes)
                options.append((f"--set train.lora.rank={LoraSpec().rank} (LoRA adapters instead of the weights)", est.peak - lora.peak))
            for flag, saved in sorted(options, key=lambda item: -item[1]):
                console.print(f"  {flag}: saves {saved / GiB:,.1f} GiB")
            console.print("  or shard the run across GPUs: --set train.parallel=fsdp2 with --processes N (see README)")
    return est
