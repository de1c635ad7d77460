"""The training loop: two objectives, one optimizer, a run directory that later commands read.

Each step draws a batch for f and one for g (per micro-batch under gradient accumulation), captures
their gradients separately into the optimizer, and steps once. Everything needed to continue exactly
(trained weights, optimizer state with both momenta and subspace caches, schedule, RNG states, data
positions) is checkpointed atomically, so `--resume` after a crash or SIGKILL replays nothing twice.
"""

from __future__ import annotations

import math
import os
import platform
import random
import shutil
import signal
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import sift_cli
from sift_cli import tracking
from sift_cli.apps import get_app
from sift_cli.apps.base import Batch, Objectives
from sift_cli.engine import Route, SiftOptimizer, StepReport
from sift_cli.engine.distributed import local as local_part
from sift_cli.errors import SiftError, first_line
from sift_cli.hf import naming
from sift_cli.hf.loading import load_model, load_tokenizer
from sift_cli.hf.model_card import write_model_card
from sift_cli.output import summary
from sift_cli.parallel import LAUNCH_HINT, Ranks, check_launch, process_group_closed
from sift_cli.plan import (
    optimizer_config,
    plan_routes,
    select_trainable,
    trainable_regex,
)
from sift_cli.spec import RunSpec
from sift_cli.store.atomic import write_json, write_text, write_with
from sift_cli.store.lock import locked
from sift_cli.store.prepared import PreparedData, copy_tables, load_prepared
from sift_cli.store.rundir import ENV, POME, RunDir
from sift_cli.store.transaction import staged_directory

CHECKPOINT_GLOB = "step-*"
"""`step-NNNNNNN.pt` (one process, DDP) or `step-NNNNNNN/` (FSDP2: sharded, see sift_cli.fsdp)."""
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


def set_deterministic(on: bool) -> None:
    """torch's deterministic algorithms, or its defaults. cuBLAS needs a fixed workspace for
    deterministic matrix products, set before its first use; ops without a deterministic version raise."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on


def environment(device: torch.device, world_size: int, seed: int, parallel: str) -> dict[str, Any]:
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
        "parallel": parallel if world_size > 1 else "none",
        "seed": seed,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def latest_checkpoint(run: RunDir) -> Path | None:
    found = sorted(run.checkpoints.glob(CHECKPOINT_GLOB))
    return found[-1] if found else None


class UnreadableCheckpoint(Exception):
    """A checkpoint file that does not load (truncated, empty, not a torch archive)."""


def read_checkpoint(path: Path, rank: int = 0) -> dict[str, Any]:
    """A checkpoint's state (of a sharded one, this rank's unsharded part), loaded without executing
    code; any failure to load it is UnreadableCheckpoint."""
    try:
        if path.is_dir():
            from sift_cli.fsdp import read_rank_file

            state = read_rank_file(path, rank)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises EOFError, RuntimeError, UnpicklingError... for a damaged file
        raise UnreadableCheckpoint(first_line(exc, 100)) from None
    if not isinstance(state, dict) or "step" not in state:
        raise UnreadableCheckpoint("not a sift checkpoint")
    return state


def check_fit(objectives: Objectives, spec: RunSpec) -> None:
    """Refuse a run whose data.max_length drops more than data.max_dropped of an objective's examples."""
    for name, fit in objectives.fits.items():
        if fit.total and fit.dropped / fit.total > spec.data.max_dropped:
            raise SiftError(
                f"data.max_length={spec.data.max_length} drops {fit.dropped} of {fit.total} {name} examples "
                f"(more than data.max_dropped={spec.data.max_dropped:g}); raise data.max_length or data.max_dropped"
            )


def fit_lines(objectives: Objectives, max_length: int) -> list[str]:
    """What max_length did to each objective's examples, for the console (nothing when all fit)."""
    return [
        f"{name}: of {fit.total} examples, data.max_length={max_length} dropped {fit.dropped} and cut the end of {fit.cut}"
        for name, fit in objectives.fits.items()
        if fit.dropped or fit.cut
    ]


class ObjectiveModel(torch.nn.Module):
    """The model with the two losses as its forward, which is what DDP wraps: each objective's
    micro-batch is one forward and backward of the wrapper, so DDP averages that objective's gradient
    across ranks (bucketed, overlapped with backward) before the optimizer captures it. The losses get
    the plain model, so an app's forward hooks (RMU stops the forward at a layer by raising) stay
    inside this forward and never cut a DDP iteration short."""

    def __init__(self, model: torch.nn.Module, objectives: Objectives) -> None:
        super().__init__()
        self.model = model
        self._losses = {"f": objectives.loss_f, "g": objectives.loss_g}

    def forward(self, which: str, batch: Batch) -> torch.Tensor:
        return self._losses[which](self.model, batch)


def make_accelerator(spec: RunSpec, run_path: Path) -> Any:
    """The run's accelerator (it joins the launcher's process group); CPU unless CUDA is asked for or,
    under train.device=auto, present."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if spec.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise SiftError(f"train.device={spec.train.device} but no CUDA device is visible; use auto or cpu")
    cpu = spec.train.device == "cpu" or (spec.train.device == "auto" and not torch.cuda.is_available())
    # Buffers (rotary tables) are identical on every rank: broadcasting them at every forward is waste.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    check_launch()
    try:
        accelerator = Accelerator(cpu=cpu, kwargs_handlers=[ddp], **tracking.accelerator_kwargs(spec.train.report_to, run_path))
    except (ValueError, RuntimeError) as exc:
        raise SiftError(f"cannot join the launcher's processes ({first_line(exc, 160)}); {LAUNCH_HINT}") from None
    check_launch(accelerator.num_processes)
    return accelerator


class Trainer:
    """One run: model, objectives, optimizer and schedule, stepping and checkpointing.

    Under several processes every rank builds the same model and optimizer; `train.parallel: ddp`
    wraps the objectives in DDP. Only rank 0 writes the run directory."""

    def __init__(self, spec: RunSpec, run: RunDir, console: Console, accelerator: Any) -> None:
        self.spec, self.run, self.console = spec, run, console
        self.accelerator = accelerator
        self.ranks = Ranks(accelerator)
        self.device = self.accelerator.device
        set_deterministic(spec.train.deterministic)
        seed_everything(spec.train.seed)
        app = get_app(spec.app)
        data = load_prepared(spec.data.path, spec.app)
        self.data: PreparedData = data
        self.tokenizer = load_tokenizer(spec.model)
        self.model = load_model(spec.model).to(self.device)
        select_trainable(self.model, trainable_regex(spec))
        self.objectives: Objectives = app.build_objectives(self.model, self.tokenizer, spec, data)
        check_fit(self.objectives, spec)
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
        self.objective_model: torch.nn.Module = ObjectiveModel(self.model, self.objectives)
        self.model_config = model_config
        self.sharded = spec.train.parallel == "fsdp2" and self.ranks.distributed
        if self.sharded and spec.train.spectra_every:
            raise SiftError(
                "train.spectra_every needs whole momenta, which train.parallel=fsdp2 shards; set train.spectra_every=0 "
                "or use train.parallel=ddp"
            )
        seed = spec.train.seed
        self.streams = {
            "f": IndexStream(len(self.objectives.f_data), seed=2 * seed + 1),
            "g": IndexStream(len(self.objectives.g_data), seed=2 * seed + 2),
        }
        self.step = 0

    def distribute(self) -> None:
        """Wrap the objectives for the launch's processes (DDP, or FSDP2 sharding; nothing under one
        process), then build the optimizer on the parameters as wrapped (fully_shard replaces them by
        DTensors). It is a collective, so it runs after every rank has built its trainer without error."""
        if self.sharded:
            from sift_cli.fsdp import shard_model

            shard_model(self.model, self.device, self.ranks.world)
            self.named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        else:
            self.objective_model = self.accelerator.prepare(self.objective_model)
        self.optimizer = SiftOptimizer(self.named, optimizer_config(self.spec.optim, self.model_config))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(self.spec.train))
        self.spec_lrs = list(self.scheduler.base_lrs)

    def _position(self) -> dict[str, Any]:
        """What is not weights or optimizer state: where the run is and how to continue it exactly."""
        return {
            "step": self.step,
            "world_size": self.ranks.world,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "data_position": {key: stream.position for key, stream in self.streams.items()},
        }

    def save_checkpoint(self) -> None:
        """Rank 0 writes the step's state (under DDP every rank holds the same weights and optimizer
        state); the others wait, so that no rank runs ahead of a checkpoint that may be its resume point.
        Under FSDP2 every rank writes its shards (sift_cli.fsdp)."""
        if self.sharded:
            from sift_cli.fsdp import save_sharded

            save_sharded(self.run.checkpoints / f"step-{self.step:07d}", self.named, self.optimizer, self._position(), self.ranks.main)
            self._prune_checkpoints()
            self.ranks.barrier()
            return
        if not self.ranks.main:
            self.ranks.barrier()
            return
        state = {
            **self._position(),
            "weights": {name: param.detach().cpu() for name, param in self.named},
            "optimizer": self.optimizer.state_dict(),
        }
        path = self.run.checkpoints / f"step-{self.step:07d}.pt"
        write_with(path, lambda tmp: torch.save(state, tmp))
        self._prune_checkpoints()
        self.ranks.barrier()

    def _prune_checkpoints(self) -> None:
        if not self.ranks.main:
            return
        for old in sorted(self.run.checkpoints.glob(CHECKPOINT_GLOB))[:-KEEP_CHECKPOINTS]:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()

    def load_checkpoint(self, state: dict[str, Any], name: str) -> None:
        """Restore a checkpoint's state; one that does not fit this run's parameters or its number of
        processes is a one-line error."""
        saved_world = state.get("world_size", 1)
        if saved_world != self.ranks.world:
            raise SiftError(
                f"{name} was written by {saved_world} process(es) and this resume has {self.ranks.world}: the global batch "
                f"(processes x train.batch_size) would change; resume with {saved_world} "
                f"(`torchrun --nproc_per_node {saved_world} $(which sift) train --resume {self.run.path}`)"
            )
        try:
            if self.sharded:
                from sift_cli.fsdp import load_sharded

                load_sharded(self.run.checkpoints / name, self.named, self.optimizer, state)
            else:
                with torch.no_grad():
                    for param_name, param in self.named:
                        param.copy_(state["weights"][param_name].to(param.device))
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except KeyError as exc:
            raise SiftError(
                f"{name} holds no state for {exc.args[0]}: the run's trained parameters (train.trainable) changed "
                f"since it started; restore {self.run.spec_path.name} or start a new run with --output"
            ) from None
        except (ValueError, RuntimeError) as exc:
            raise SiftError(f"{name} does not fit this run ({first_line(exc, 120)}); restore {self.run.spec_path.name}") from None
        set_rng_state(state["rng"])
        for key, position in state["data_position"].items():
            self.streams[key].position = position
        self.step = state["step"]

    def restore_latest(self) -> tuple[Path | None, list[str]]:
        """Load the newest readable checkpoint; return it and the names of newer unreadable ones, which a
        kill during the write of a checkpoint can leave (a warning names each)."""
        skipped = []
        for path in sorted(self.run.checkpoints.glob(CHECKPOINT_GLOB), reverse=True):
            try:
                state = read_checkpoint(path, self.ranks.rank)
            except UnreadableCheckpoint as exc:
                skipped.append(path.name)
                self.console.print(f"[yellow]warning:[/yellow] {path.name} is unreadable ({exc}); trying the one before it")
                continue
            self.load_checkpoint(state, path.name)
            return path, skipped
        if skipped:
            raise SiftError(
                f"no checkpoint in {self.run.checkpoints} can be read ({', '.join(skipped)}); start again with a new --output"
            )
        return None, skipped

    def use_spec_learning_rates(self) -> None:
        """After a resume that changed the learning rate or the length of the schedule: the spec's base
        rates, at the schedule's current step (a checkpoint restores the rates it was saved with)."""
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = list(self.spec_lrs)
        for group, base in zip(self.optimizer.param_groups, self.spec_lrs):
            group["initial_lr"] = base
            group["lr"] = base * factor
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

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
        """Accumulate one objective's gradient over the micro-batches; return this rank's mean loss.

        Under DDP the gradients of all but the last micro-batch stay local (`no_sync`), so the
        wrapper averages the accumulated gradient across ranks once, in buckets, during the last
        backward; the optimizer then captures it as the objective's gradient."""
        accum = self.spec.train.grad_accum
        total = 0.0
        for micro in range(accum):
            last = micro == accum - 1
            if self.sharded:
                # FSDP2's no_sync: keep unsharded gradients local until the last micro-batch reduce-scatters them
                self.model.set_requires_gradient_sync(last)
            local = self.accelerator.no_sync(self.objective_model) if not last and not self.sharded else nullcontext()
            with local:
                loss = self.objective_model(which, self._batch(which))
                (loss / accum).backward()
            total += loss.item() / accum
        self.optimizer.capture(which)
        return total

    def train_step(self) -> tuple[float, float, StepReport]:
        self.model.train()
        local_f = self._objective_gradient("f")
        local_g = self._objective_gradient("g")
        loss_f, loss_g = self.ranks.mean([local_f, local_g])
        for which, value in (("f", loss_f), ("g", loss_g)):
            if not math.isfinite(value):
                raise TrainingStopped(
                    f"loss_{which} became {value} at step {self.step + 1}; check the data, or continue from the last "
                    f"good checkpoint with a lower rate: `sift train --resume {self.run.path} --lr {self.spec.optim.lr / 10:g}`"
                )
        report = self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        finite = torch.stack([torch.isfinite(local_part(param)).all() for _, param in self.named])
        if self.ranks.any(not bool(finite.all())):
            bad = (~finite).nonzero()
            name = self.named[int(bad[0])][0] if len(bad) else "a parameter shard of another rank"
            raise TrainingStopped(
                f"the update made {name} non-finite at step {self.step}; continue from the last good checkpoint "
                f"with a lower rate: `sift train --resume {self.run.path} --lr {self.spec.optim.lr / 10:g}`"
            )
        return loss_f, loss_g, report

    def log(self, loss_f: float, loss_g: float, report: StepReport, seconds: float) -> None:
        """Rank 0 appends the step's metrics and alignment rows (every rank's report is the same)."""
        if not self.ranks.main:
            return
        spectral = [block for block in report.blocks if block.name in self.spectral]
        if self.step % self.spec.train.log_every == 0 or self.step == self.spec.train.steps:
            record = {
                "step": self.step,
                "loss_f": loss_f,
                "loss_g": loss_g,
                "lr": self.scheduler.get_last_lr()[0],
                "seconds": seconds,
                "optimizer_seconds": report.seconds,
                "n_sift": report.n_sift,
                "n_blocks": len(spectral),
            }
            self.run.append_metrics(record)
            if self.spec.train.report_to != "none":
                values = {key: value for key, value in record.items() if key != "step"}
                self.accelerator.log({**values, **tracking.conflict_share(spectral)}, step=self.step)
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
        """Rank 0 writes model/ as one transaction, so a kill mid-save never leaves a half-written model."""
        if self.sharded:
            from sift_cli.fsdp import full_state_dict

            weights = full_state_dict(self.model)  # a collective: every rank gathers, rank 0 keeps
        if self.ranks.main:
            with staged_directory(self.run.model_dir) as staging:
                if self.sharded:
                    self.model.save_pretrained(staging, state_dict=weights)
                else:
                    self.model.save_pretrained(staging)
                self.tokenizer.save_pretrained(staging)
        self.ranks.barrier()


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


def check_new_output(path: Path) -> None:
    """Refuse, before anything loads, an --output a new run cannot own: a file, a run (resume it), a
    directory holding anything else, or a place that cannot be created."""
    run = RunDir(path)
    if path.exists() and not path.is_dir():
        raise SiftError(f"--output {path} is a file; pass a directory for the run")
    if run.holds_run():
        raise SiftError(
            f"{path} already holds a run; resume it with `sift train --resume {path}` or pass a new --output"
        )
    foreign = run.foreign_entries()
    if foreign:
        raise SiftError(
            f"--output {path} holds files that are not a sift run ({', '.join(foreign[:3])}); pass a new or empty directory"
        )
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise SiftError(f"--output {path} cannot be written ({ancestor} is not a writable directory); pass another directory")


def absolute_spec(spec: RunSpec) -> RunSpec:
    """The spec with every path that exists here made absolute (data, output, a local model, local
    files in the app's options), so the run directory means the same thing from any directory."""

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            return str(Path(value).expanduser().resolve())
        if isinstance(value, list):
            return [absolute(item) for item in value]
        return value

    tree = spec.model_dump(mode="json")
    tree["data"]["path"] = str(Path(spec.data.path).resolve())
    tree["output"] = str(Path(spec.output).resolve())
    tree["model"]["name"] = absolute(spec.model.name)
    tree["objective"] = {key: absolute(value) for key, value in spec.objective.items()}
    return type(spec).model_validate(tree)


def history_record(event: str, **fields: Any) -> dict[str, Any]:
    return {
        "event": event,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["sift", *sys.argv[1:]]),
        **fields,
    }


def resume_changes(spec: RunSpec, steps: int | None = None, lr: float | None = None) -> tuple[RunSpec, dict[str, list[Any]]]:
    """The run's spec with what a resume may change (more steps; a new learning rate, e.g. after a
    non-finite stop) and {setting: [before, after]} of what did change."""
    from sift_cli.spec import validate_spec

    tree = spec.model_dump(mode="json")
    changes: dict[str, list[Any]] = {}
    if steps is not None and steps != spec.train.steps:
        changes["train.steps"] = [spec.train.steps, steps]
        tree["train"]["steps"] = steps
    if lr is not None and lr != spec.optim.lr:
        changes["optim.lr"] = [spec.optim.lr, lr]
        tree["optim"]["lr"] = lr
    return (validate_spec(tree), changes) if changes else (spec, changes)


def train(spec: RunSpec, console: Console | None = None, resume: bool = False, changes: dict[str, list[Any]] | None = None) -> RunDir:
    """Run a new `spec` (or resume the run it belongs to, with `changes` from `resume_changes`) to
    completion and return its run directory.

    A new run writes nothing until the model, the data and the plan have loaded and been checked; the
    run directory is locked against other processes for as long as this one writes it. Under a
    launcher (torchrun, accelerate launch) every rank runs this: all ranks check and load, rank 0
    alone takes the lock and writes while the others wait for it, and a refusal on any rank is the
    same one-line error on every rank."""
    console = console or Console()
    tracking.check_tracker(spec.train.report_to)
    if not resume:
        spec = absolute_spec(spec)
    run = RunDir(Path(spec.output))
    with process_group_closed():
        accelerator = make_accelerator(spec, run.path)
        ranks = Ranks(accelerator)
        if not ranks.main:
            console = Console(quiet=True)
        with ExitStack() as held:
            if resume:
                return _resume(spec, run, console, changes or {}, accelerator, held)
            return _start(spec, run, console, accelerator, held)


def _start(spec: RunSpec, run: RunDir, console: Console, accelerator: Any, held: ExitStack) -> RunDir:
    ranks = Ranks(accelerator)
    # Every rank checks the target before any rank writes it, so none finds rank 0's spec.yaml.
    ranks.agreed(lambda: check_new_output(run.path))
    trainer = ranks.agreed(lambda: Trainer(spec, run, console, accelerator))
    trainer.distribute()

    def claim() -> None:
        if not ranks.main:
            return
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SiftError(f"cannot create {run.path} ({exc.strerror}); pass another --output") from None
        held.enter_context(locked(run.path, "train into it"))
        check_new_output(run.path)
        run.remove_temporary()
        write_text(run.spec_path, spec.to_yaml())
        copy_tables(trainer.data, run.data_dir, get_app(spec.app).EVAL_TABLES)
        run.append_history(history_record("start", step=0, processes=ranks.world))

    ranks.agreed(claim)
    return _run(trainer, console)


def _resume(spec: RunSpec, run: RunDir, console: Console, changes: dict[str, list[Any]], accelerator: Any, held: ExitStack) -> RunDir:
    ranks = Ranks(accelerator)

    def claim() -> None:
        if (run.path / POME).is_file():
            raise SiftError(f"{run.path} is a POME edit of another run, not a training run; resume the source run instead")
        if ranks.main:
            held.enter_context(locked(run.path, "resume it"))
            removed = run.remove_temporary()
            if removed:
                console.print(f"removed {len(removed)} temporary file(s) of an interrupted write: {', '.join(removed[:3])}")

    ranks.agreed(claim)
    latest = latest_checkpoint(run)
    done = int(latest.stem.removeprefix("step-")) if latest is not None else 0

    def load() -> Trainer:
        if spec.train.steps < done:
            raise SiftError(f"{run.path} is at step {done}; --steps {spec.train.steps} would undo training, pass at least {done}")
        return Trainer(spec, run, console, accelerator)

    trainer = ranks.agreed(load)
    trainer.distribute()
    checkpoint, skipped = ranks.agreed(trainer.restore_latest)

    def record() -> None:
        if changes:
            trainer.use_spec_learning_rates()
        if not ranks.main:
            return
        if changes:
            write_text(run.spec_path, spec.to_yaml())
            console.print("resume changes " + ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items()))
        if checkpoint is not None:
            console.print(f"resumed from {checkpoint.name} (step {trainer.step})")
        if not run.data_dir.is_dir():
            copy_tables(trainer.data, run.data_dir, get_app(spec.app).EVAL_TABLES)
        run.append_history(history_record(
            "resume", step=trainer.step, checkpoint=checkpoint.name if checkpoint else None, changes=changes,
            unreadable=skipped, processes=ranks.world,
        ))  # fmt: skip

    ranks.agreed(record)
    return _run(trainer, console)


def _run(trainer: Trainer, console: Console) -> RunDir:
    run, spec, ranks = trainer.run, trainer.spec, trainer.ranks
    if ranks.main:
        for note in [*trainer.objectives.notes, *fit_lines(trainer.objectives, spec.data.max_length)]:
            console.print(note)
        run.truncate_logs(trainer.step)
        write_json(run.path / ENV, environment(trainer.device, ranks.world, spec.train.seed, spec.train.parallel))
    tracking.start(trainer.accelerator, spec.train.report_to, spec.model_dump(mode="json"), run.path.name)
    try:
        _loop(trainer, console)
        trainer.save_model()
    finally:
        # Ends the trackers, and under a launcher the process group: every collective is done by now.
        trainer.accelerator.end_training()
    if ranks.main:
        write_model_card(run, spec)
        last = run.read_metrics().iloc[-1]
        processes = f" on {ranks.world} processes ({spec.train.parallel})" if ranks.distributed else ""
        summary(
            console,
            f"trained {spec.app} with {spec.optim.method}{processes}: {trainer.step} steps, "
            f"loss_f {last['loss_f']:.4g}, loss_g {last['loss_g']:.4g}; model/ with its model card",
            run.path,
        )
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
    with interrupt_flag() as flag, Progress(*columns, console=console, transient=False, disable=not trainer.ranks.main) as progress:
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
            if trainer.ranks.any(flag["stop"]):
                trainer.save_checkpoint()
                raise TrainingStopped(
                    f"interrupted at step {trainer.step}; checkpoint written, continue with `sift train --resume {trainer.run.path}`"
                )
