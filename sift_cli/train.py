"""The training loop: two objectives, one optimizer, a run directory that later commands read.

Each step draws a batch for f and one for g (per micro-batch under gradient accumulation), captures
their gradients separately into the optimizer, and steps once. Everything needed to continue exactly
(trained weights, optimizer state with both momenta and subspace caches, schedule, RNG states, data
positions) is checkpointed atomically, so `--resume` after a crash or SIGKILL replays nothing twice.
"""

from __future__ import annotations

import math
import platform
import random
import re
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

import sift_cli
from sift_cli import fused_qkv, naming
from sift_cli.apps import get_app
from sift_cli.apps.base import Batch, Objectives
from sift_cli.atomic import write_json, write_text, write_with
from sift_cli.engine import OptimizerConfig, Route, SiftOptimizer, StepReport, route_parameters
from sift_cli.errors import SiftError
from sift_cli.models import load_model, load_tokenizer
from sift_cli.prepared import load_prepared
from sift_cli.rundir import ENV, RunDir
from sift_cli.spec import OptimSpec, RunSpec

CHECKPOINT_GLOB = "step-*.pt"
KEEP_CHECKPOINTS = 2


class TrainingStopped(SiftError):
    """The run stopped early on purpose (SIGINT, non-finite values); its last checkpoint is intact."""


@dataclass
class IndexStream:
    """Endless, seeded, epoch-wise shuffled indices; `position` alone restores where it was."""

    size: int
    seed: int
    position: int = 0

    def take(self, count: int) -> list[int]:
        indices = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.size)
            indices.append(int(self._permutation(epoch)[offset]))
            self.position += 1
        return indices

    def _permutation(self, epoch: int) -> torch.Tensor:
        if getattr(self, "_cached_epoch", None) != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cached = torch.randperm(self.size, generator=generator)
            self._cached_epoch = epoch
        return self._cached


def optimizer_config(optim: OptimSpec, model_config: Any = None) -> OptimizerConfig:
    """The engine's config of a spec's optim section; a fused query_key_value matrix of `model_config`
    (GLM) is split into its Q, K and V row blocks unless optim.split_fused_qkv is false (splits given in
    optim.block_splits win over the detected ones)."""
    settings = {item.name: getattr(optim, item.name) for item in fields(OptimizerConfig)}
    detected = fused_qkv.block_splits(model_config) if optim.split_fused_qkv and model_config is not None else {}
    settings["block_splits"] = {**{pattern: tuple(rows) for pattern, rows in detected.items()}, **optim.block_splits}
    return OptimizerConfig(**settings)


def trainable_regex(spec: RunSpec) -> str:
    return spec.train.trainable or get_app(spec.app).DEFAULT_TRAINABLE


def select_trainable(model: nn.Module, pattern: str) -> list[tuple[str, nn.Parameter]]:
    """Freeze every parameter whose name does not match `pattern`; return the trained ones."""
    regex = re.compile(pattern)
    named = []
    for name, param in model.named_parameters():
        param.requires_grad_(bool(regex.search(name)))
        if param.requires_grad:
            named.append((name, param))
    if not named:
        raise SiftError(f"train.trainable={pattern!r} matches no parameter of the model; check the regex against `sift train --dry-run`")
    return named


def plan_routes(named: Sequence[tuple[str, nn.Parameter]], optim: OptimSpec, model_config: Any) -> list[Route]:
    """Every trained parameter's route, after checking that SIFT's top-K subspaces exist in every
    candidate block (a row slice of a fused matrix included): K <= min(m, n)."""
    try:
        routes = route_parameters(list(named), optimizer_config(optim, model_config))
    except ValueError as exc:
        raise SiftError(f"{exc}; set optim.split_fused_qkv: false to train the fused matrix as one block") from None
    if optim.method != "sift" or optim.k is None:
        return routes
    for route in routes:
        if route.kind != "spectral" or not route.candidate:
            continue
        for block in route.blocks():
            if optim.k > min(block.shape):
                raise SiftError(
                    f"optim.k={optim.k} is larger than block {block.name} {block.shape} allows "
                    f"(at most {min(block.shape)}); lower --k or use --set optim.k=null for full rank"
                )
    return routes


def lr_multiplier(train: Any) -> Callable[[int], float]:
    """Warm-up then constant, linear or cosine decay, as a LambdaLR factor of the step index."""

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / (train.warmup_steps + 1)
        progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
        if train.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if train.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG's state in types that `torch.load(weights_only=True)` accepts (no numpy arrays)."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                   "has_gauss": has_gauss, "cached_gaussian": cached_gaussian}  # fmt: skip
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
         numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    )  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def environment(device: torch.device, world_size: int, seed: int) -> dict[str, Any]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sift": sift_cli.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "world_size": world_size,
        "seed": seed,
    }


def latest_checkpoint(run: RunDir) -> Path | None:
    found = sorted(run.checkpoints.glob(CHECKPOINT_GLOB))
    return found[-1] if found else None


class Trainer:
    """One run: model, objectives, optimizer and schedule, stepping and checkpointing."""

    def __init__(self, spec: RunSpec, run: RunDir, console: Console) -> None:
        from accelerate import Accelerator

        self.spec, self.run, self.console = spec, run, console
        cpu = spec.train.device == "cpu" or (spec.train.device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=cpu)
        self.device = self.accelerator.device
        seed_everything(spec.train.seed)
        app = get_app(spec.app)
        data = load_prepared(spec.data.path, spec.app)
        self.tokenizer = load_tokenizer(spec.model)
        self.model = load_model(spec.model).to(self.device)
        select_trainable(self.model, trainable_regex(spec))
        self.objectives: Objectives = app.build_objectives(self.model, self.tokenizer, spec, data)
        # An app may replace modules while building its objectives (new token embeddings), so the
        # trained parameters are collected again afterwards.
        self.named = select_trainable(self.model, trainable_regex(spec))
        model_config = getattr(self.model, "config", None)
        routes = plan_routes(self.named, spec.optim, model_config)
        for module in self.objectives.modules:
            module.to(self.device)
        self.spectral: dict[str, Route] = {
            block.name: route for route in routes if route.kind == "spectral" for block in route.blocks()
        }
        self.optimizer = SiftOptimizer(self.named, optimizer_config(spec.optim, model_config))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(spec.train))
        seed = spec.train.seed
        self.streams = {
            "f": IndexStream(len(self.objectives.f_data), seed=2 * seed + 1),
            "g": IndexStream(len(self.objectives.g_data), seed=2 * seed + 2),
        }
        self.step = 0

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "weights": {name: param.detach().cpu() for name, param in self.named},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "data_position": {key: stream.position for key, stream in self.streams.items()},
        }
        path = self.run.checkpoints / f"step-{self.step:07d}.pt"
        write_with(path, lambda tmp: torch.save(state, tmp))
        for old in sorted(self.run.checkpoints.glob(CHECKPOINT_GLOB))[:-KEEP_CHECKPOINTS]:
            old.unlink()

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for name, param in self.named:
                param.copy_(state["weights"][name].to(param.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        for key, position in state["data_position"].items():
            self.streams[key].position = position
        self.step = state["step"]

    def _batch(self, which: str) -> Batch:
        objectives = self.objectives
        data, collate = (
            (objectives.f_data, objectives.collate_f) if which == "f" else (objectives.g_data, objectives.collate_g)
        )
        indices = self.streams[which].take(self.spec.train.batch_size * self.accelerator.num_processes)
        rank = self.accelerator.process_index
        mine = indices[rank :: self.accelerator.num_processes]
        return {key: value.to(self.device) for key, value in collate([data[i] for i in mine]).items()}

    def _objective_gradient(self, which: str) -> float:
        """Accumulate one objective's gradient over the micro-batches; return its mean loss."""
        loss_fn = self.objectives.loss_f if which == "f" else self.objectives.loss_g
        accum = self.spec.train.grad_accum
        total = 0.0
        for _ in range(accum):
            loss = loss_fn(self.model, self._batch(which))
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingStopped(
                    f"loss_{which} became {value} at step {self.step + 1}; lower --lr or check the data "
                    f"(last good checkpoint kept in {self.run.checkpoints})"
                )
            (loss / accum).backward()
            total += value / accum
        if self.accelerator.num_processes > 1:
            for _, param in self.named:
                if param.grad is not None:
                    param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        self.optimizer.capture(which)
        return total

    def train_step(self) -> tuple[float, float, StepReport]:
        self.model.train()
        loss_f = self._objective_gradient("f")
        loss_g = self._objective_gradient("g")
        report = self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        finite = torch.stack([torch.isfinite(param).all() for _, param in self.named])
        if not bool(finite.all()):
            name = self.named[int((~finite).nonzero()[0])][0]
            raise TrainingStopped(
                f"the update made {name} non-finite at step {self.step}; lower --lr "
                f"(last good checkpoint kept in {self.run.checkpoints})"
            )
        return loss_f, loss_g, report

    def log(self, loss_f: float, loss_g: float, report: StepReport, seconds: float) -> None:
        spectral = [block for block in report.blocks if block.name in self.spectral]
        if self.step % self.spec.train.log_every == 0 or self.step == self.spec.train.steps:
            self.run.append_metrics(
                {
                    "step": self.step,
                    "loss_f": loss_f,
                    "loss_g": loss_g,
                    "lr": self.scheduler.get_last_lr()[0],
                    "seconds": seconds,
                    "optimizer_seconds": report.seconds,
                    "n_sift": report.n_sift,
                    "n_blocks": len(spectral),
                }
            )
        tau_key = "tau_grad" if self.spec.optim.tau_source == "grad" else "tau_momentum"
        self.run.append_alignment(
            {
                "step": self.step,
                "block": block.name,
                "layer": naming.layer_index(block.name),
                "component": naming.component(block.name),
                "tau_grad": block.tau_grad,
                "tau_momentum": block.tau_momentum,
                "tau": getattr(block, tau_key),
                "branch": block.branch,
                "candidate": self.spectral[block.name].candidate,
                "subspace_error": block.subspace_error,
                "subspace_fallback": block.subspace_fallback,
            }
            for block in spectral
        )
        every = self.spec.train.spectra_every
        if every and self.step % every == 0:
            wanted = [name for name, route in self.spectral.items() if route.candidate]
            for name, (s_f, s_g) in self.optimizer.momentum_singular_values(wanted).items():
                self.run.append_spectra(self.step, name, "f", s_f.tolist())
                self.run.append_spectra(self.step, name, "g", s_g.tolist())

    def save_model(self) -> None:
        target = self.run.model_dir
        self.accelerator.unwrap_model(self.model).save_pretrained(target)
        self.tokenizer.save_pretrained(target)


@contextmanager
def interrupt_flag() -> Iterator[dict[str, bool]]:
    """Turn SIGINT into a flag the loop checks between steps, so a checkpoint is written before exit."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def prepare_run_dir(spec: RunSpec, resume: bool) -> RunDir:
    run = RunDir(Path(spec.output))
    if not resume and (run.spec_path.exists() or latest_checkpoint(run) is not None):
        raise SiftError(
            f"{run.path} already holds a run; resume it with `sift train --resume {run.path}` or pass a new --output"
        )
    run.path.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text(run.spec_path, spec.to_yaml())
    return run


def train(spec: RunSpec, console: Console | None = None, resume: bool = False) -> RunDir:
    """Run (or resume) `spec` to completion and return its run directory."""
    console = console or Console()
    run = prepare_run_dir(spec, resume)
    trainer = Trainer(spec, run, console)
    for note in trainer.objectives.notes:
        console.print(note)
    checkpoint = latest_checkpoint(run) if resume else None
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
        console.print(f"resumed from {checkpoint.name} (step {trainer.step})")
    run.truncate_logs(trainer.step)
    write_json(run.path / ENV, environment(trainer.device, trainer.accelerator.num_processes, spec.train.seed))
    _loop(trainer, console)
    trainer.save_model()
    console.print(f"run written to {run.path}")
    return run


def _loop(trainer: Trainer, console: Console) -> None:
    spec = trainer.spec
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("f={task.fields[loss_f]:.4g} g={task.fields[loss_g]:.4g} sift={task.fields[n_sift]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with interrupt_flag() as flag, Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(
            f"{spec.app}/{spec.optim.method}", total=spec.train.steps, completed=trainer.step, loss_f=math.nan, loss_g=math.nan, n_sift=0
        )
        while trainer.step < spec.train.steps:
            started = time.perf_counter()
            loss_f, loss_g, report = trainer.train_step()
            trainer.log(loss_f, loss_g, report, time.perf_counter() - started)
            progress.update(task, completed=trainer.step, loss_f=loss_f, loss_g=loss_g, n_sift=report.n_sift)
            if trainer.step % spec.train.checkpoint_every == 0 or trainer.step == spec.train.steps:
                trainer.save_checkpoint()
            if flag["stop"]:
                trainer.save_checkpoint()
                raise TrainingStopped(
                    f"interrupted at step {trainer.step}; checkpoint written, continue with `sift train --resume {trainer.run.path}`"
                )
