"""One run's model, objectives, optimizer and schedule: building them on every rank, one training
step of two objectives, the step's log records, checkpoint state and the saved model."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sift_cli.apps import get_app
from sift_cli.apps.base import Batch, Objectives
from sift_cli.engine import Route, SiftOptimizer, StepReport
from sift_cli.engine.distributed import local as local_part
from sift_cli.errors import SiftError, first_line
from sift_cli.hf.loading import load_model, load_tokenizer, resolve_model_path
from sift_cli.hf.lora import MERGED, merged, save_adapter
from sift_cli.spec import RunSpec
from sift_cli.store.prepared import PreparedData, load_prepared
from sift_cli.store.rundir import RunDir
from sift_cli.store.transaction import staged_directory
from sift_cli.training import tracking
from sift_cli.training.checkpoints import checkpoint_path, prune_checkpoints, restore_latest, write_checkpoint
from sift_cli.training.launch import Ranks
from sift_cli.training.objectives import ObjectiveModel, check_fit
from sift_cli.training.plan import lora_rank, plan_routes, run_optimizer_config, select_trained, with_adapters
from sift_cli.training.records import alignment_rows, metrics_record
from sift_cli.training.state import IndexStream, lr_multiplier, rng_state, seed_everything, set_deterministic, set_rng_state


class TrainingStopped(SiftError):
    """The run stopped early on purpose (SIGINT or SIGTERM, non-finite values); its last checkpoint is intact."""


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
        self.model = with_adapters(load_model(spec.model), spec).to(self.device)
        select_trained(self.model, spec)
        self.objectives: Objectives = app.build_objectives(self.model, self.tokenizer, spec, data)
        check_fit(self.objectives, spec)
        # An app may replace modules while building its objectives (new token embeddings), so the
        # trained parameters are collected again afterwards.
        self.named = select_trained(self.model, spec)
        model_config = getattr(self.model, "config", None)
        routes = plan_routes(self.named, spec.optim, model_config, lora_rank(spec))
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
            from sift_cli.training.fsdp import shard_model

            shard_model(self.model, self.device, self.ranks.world)
            self.named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        else:
            self.objective_model = self.accelerator.prepare(self.objective_model)
        self.optimizer = SiftOptimizer(self.named, run_optimizer_config(self.spec, self.model))
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
        Under FSDP2 every rank writes its shards (sift_cli.training.fsdp)."""
        if self.sharded:
            from sift_cli.training.fsdp import save_sharded

            save_sharded(checkpoint_path(self.run, self.step, sharded=True), self.named, self.optimizer, self._position(), self.ranks.main)
            if self.ranks.main:
                prune_checkpoints(self.run)
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
        write_checkpoint(self.run, self.step, state)
        prune_checkpoints(self.run)
        self.ranks.barrier()

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
                from sift_cli.training.fsdp import load_sharded

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
        """Load the newest readable checkpoint (see checkpoints.restore_latest)."""
        return restore_latest(self.run, self.ranks.rank, self.console, self.load_checkpoint)

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
            lr = self.scheduler.get_last_lr()[0]
            record = metrics_record(self.step, loss_f, loss_g, lr, seconds, report, len(spectral))
            self.run.append_metrics(record)
            if self.spec.train.report_to != "none":
                values = {key: value for key, value in record.items() if key != "step"}
                self.accelerator.log({**values, **tracking.conflict_share(spectral)}, step=self.step)
        self.run.append_alignment(alignment_rows(self.step, report, self.spectral, self.spec.optim.tau_source))
        every = self.spec.train.spectra_every
        if every and self.step % every == 0:
            wanted = [name for name, route in self.spectral.items() if route.candidate]
            for name, (s_f, s_g) in self.optimizer.momentum_singular_values(wanted).items():
                self.run.append_spectra(self.step, name, "f", s_f.tolist())
                self.run.append_spectra(self.step, name, "g", s_g.tolist())

    def save_model(self) -> None:
        """Rank 0 writes model/ as one transaction, so a kill mid-save never leaves a half-written model."""
        if self.sharded:
            from sift_cli.training.fsdp import full_state_dict

            weights = full_state_dict(self.model)  # a collective: every rank gathers, rank 0 keeps
        if self.ranks.main:
            with staged_directory(self.run.model_dir) as staging:
                if self.sharded:
                    self.model.save_pretrained(staging, state_dict=weights)
                elif self.spec.train.lora is not None:
                    save_adapter(self.model, staging, resolve_model_path(self.spec.model))
                    if self.spec.train.lora.merge:
                        merged(load_model(self.spec.model), staging).save_pretrained(staging / MERGED)
                else:
                    self.model.save_pretrained(staging)
                self.tokenizer.save_pretrained(staging)
        self.ranks.barrier()
