"""`SiftTrainer`: a transformers `Trainer` that trains on two objectives with SIFT or a baseline.

Each optimizer step draws a batch of f examples and one of g examples (per micro-batch under gradient
accumulation), backpropagates each loss separately and captures its gradient into `SiftOptimizer`,
then steps once: the loop of `sift train`, inside `Trainer`'s own (its logging, `save_steps`
checkpoints, `resume_from_checkpoint`, bf16, accelerate and FSDP launch, `report_to`).

The data order is `sift train`'s: example i of the paired dataset is the i-th draw of two seeded,
epoch-wise shuffled streams (one per objective), read sequentially, so N steps of `SiftTrainer` and N
steps of `sift train` from one spec, data and seed see the same batches; a resumed run skips the
batches it has trained on, as Trainer does. The run's `alignment.csv` and `metrics.jsonl` are written
into `output_dir` in `sift train`'s format, with the optimizer settings `sift localize` needs.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from sift_cli.apps.base import Batch, Loss, Objectives
from sift_cli.engine import OptimizerConfig, Route, SiftOptimizer, route_parameters
from sift_cli.errors import SiftError
from sift_cli.store.atomic import write_json
from sift_cli.store.rundir import TRAINER_SETTINGS, RunDir
from sift_cli.training.launch import fresh_accelerator_state
from sift_cli.training.records import alignment_rows, metrics_record
from sift_cli.training.state import IndexStream

if TYPE_CHECKING:
    from sift_cli.spec import RunSpec


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's own loss on a batch with `labels` (next-token cross-entropy for a causal LM)."""
    return model(**batch).loss


class PairedObjectives(torch.utils.data.Dataset):
    """Item i: the i-th draw of f's stream and of g's (`sift train`'s seeded streams), as a pair."""

    def __init__(self, f_data: Sequence[Any], g_data: Sequence[Any], seed: int, length: int) -> None:
        self.f_data, self.g_data, self.length = f_data, g_data, length
        self.f_order = IndexStream(len(f_data), seed=2 * seed + 1).take(length)
        self.g_order = IndexStream(len(g_data), seed=2 * seed + 2).take(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.f_data[self.f_order[index]], self.g_data[self.g_order[index]]


class _StepLog(TrainerCallback):
    """After each optimizer step, rank 0 appends the step's metrics and alignment rows; at the start of
    a resumed run, rows past its checkpoint (logged after the checkpoint was written) are dropped."""

    def __init__(self, trainer: SiftTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.trainer.run.path.mkdir(parents=True, exist_ok=True)
            self.trainer.run.truncate_logs(state.global_step)
            write_json(self.trainer.run.path / TRAINER_SETTINGS, {"optim": asdict(self.trainer.sift_config), "steps": args.max_steps})

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.record_step(state.global_step, state.is_world_process_zero)


class SiftTrainer(Trainer):
    """Train a model on f (keep utility) under the constraint g with `SiftOptimizer`.

    f_dataset / g_dataset: the two objectives' examples; collate_f / collate_g turn a list of them into
    a batch (default: `data_collator`); loss_f / loss_g compute a scalar loss from (model, batch)
    (default: the model's own loss on the batch's `labels`, e.g. a forget set's loss for gradient
    ascent is `lambda model, batch: -model(**batch).loss`). `sift_config` holds every optimizer setting
    except the learning rate, which is `args.learning_rate` (Trainer's schedulers drive it);
    `trainable` is a regex of the parameter names to train (default: every parameter that requires
    grad). `args.max_steps` must be set: the two streams are endless, so epochs do not end a run.

    Gradients are not clipped (`max_grad_norm` is set to 0): SIFT and Muon take orthogonalized
    directions, and `sift train` does not clip either. Under DDP the losses must call the wrapped
    model (as the default does) so that gradients are averaged across ranks."""

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments,
        f_dataset: Sequence[Any],
        g_dataset: Sequence[Any],
        sift_config: OptimizerConfig | None = None,
        loss_f: Loss = causal_lm_loss,
        loss_g: Loss = causal_lm_loss,
        collate_f: Callable[[list[Any]], Batch] | None = None,
        collate_g: Callable[[list[Any]], Batch] | None = None,
        trainable: str | None = None,
        **kwargs: Any,
    ) -> None:
        if args.max_steps is None or args.max_steps <= 0:
            raise ValueError("SiftTrainer needs TrainingArguments(max_steps=N): the f and g streams are endless")
        if args.max_grad_norm:
            args.max_grad_norm = 0.0
        collator = kwargs.pop("data_collator", None)
        self.collate = {"f": collate_f or collator, "g": collate_g or collator}
        if self.collate["f"] is None or self.collate["g"] is None:
            raise ValueError("pass collate_f and collate_g (or one data_collator for both)")
        self.losses = {"f": loss_f, "g": loss_g}
        self.sift_config = replace(sift_config or OptimizerConfig(), lr=args.learning_rate)
        self.trainable = trainable
        world = max(1, args.world_size)
        draws = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world
        paired = PairedObjectives(f_dataset, g_dataset, seed=args.seed, length=draws)
        fresh_accelerator_state()
        super().__init__(model=model, args=args, train_dataset=paired, data_collator=self._collate_pair, **kwargs)
        self.run = RunDir(Path(args.output_dir))
        self.spectral: dict[str, Route] = {}
        self._losses_since_step = {"f": 0.0, "g": 0.0}
        self._step_started = time.perf_counter()
        self._last_record: dict[str, Any] | None = None
        self.add_callback(_StepLog(self))

    @classmethod
    def from_objectives(cls, model: nn.Module, args: TrainingArguments, objectives: Objectives, **kwargs: Any) -> SiftTrainer:
        """A trainer on an app's objectives (`get_app(name).build_objectives(...)`, as `sift train` builds them)."""
        return cls(
            model, args, objectives.f_data, objectives.g_data, loss_f=objectives.loss_f, loss_g=objectives.loss_g,
            collate_f=objectives.collate_f, collate_g=objectives.collate_g, **kwargs,
        )  # fmt: skip

    @classmethod
    def from_spec(cls, spec: RunSpec, **arguments: Any) -> SiftTrainer:
        """A trainer for a `sift train` spec: the same model, data, objectives, trained parameters and
        optimizer settings, with TrainingArguments from the spec's train section (`arguments` override
        them). The spec's schedule maps to Trainer's of the same name (Trainer's warm-up starts at 0,
        `sift train`'s at 1/(warmup_steps + 1))."""
        from sift_cli.apps import get_app
        from sift_cli.hf.loading import load_model, load_tokenizer
        from sift_cli.store.prepared import load_prepared
        from sift_cli.training.objectives import check_fit
        from sift_cli.training.plan import optimizer_config, select_trainable, trainable_regex
        from sift_cli.training.state import seed_everything

        if spec.train.lora is not None:
            raise SiftError(
                "SiftTrainer.from_spec does not take train.lora: pass a peft model (peft.get_peft_model) to SiftTrainer, "
                "whose checkpoints Trainer already saves as adapters, or train the spec with `sift train`"
            )
        seed_everything(spec.train.seed)
        data = load_prepared(spec.data.path, spec.app)
        tokenizer = load_tokenizer(spec.model)
        model = load_model(spec.model)
        select_trainable(model, trainable_regex(spec))
        objectives = get_app(spec.app).build_objectives(model, tokenizer, spec, data)
        check_fit(objectives, spec)
        select_trainable(model, trainable_regex(spec))
        train = spec.train
        settings = {
            "output_dir": str(spec.output), "max_steps": train.steps, "per_device_train_batch_size": train.batch_size,
            "gradient_accumulation_steps": train.grad_accum, "learning_rate": spec.optim.lr, "seed": train.seed,
            "lr_scheduler_type": {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[train.schedule],
            "warmup_steps": train.warmup_steps, "save_steps": train.checkpoint_every, "logging_steps": train.log_every,
            "report_to": [] if train.report_to == "none" else [train.report_to], "use_cpu": train.device == "cpu",
            **arguments,
        }  # fmt: skip
        args = TrainingArguments(**settings)
        for module in objectives.modules:
            module.to(args.device)
        config = optimizer_config(spec.optim, getattr(model, "config", None))
        return cls.from_objectives(model, args, objectives, sift_config=config, trainable=trainable_regex(spec), processing_class=tokenizer)

    def _collate_pair(self, pairs: list[tuple[Any, Any]]) -> dict[str, Batch]:
        return {"f": self.collate["f"]([f for f, _ in pairs]), "g": self.collate["g"]([g for _, g in pairs])}

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        """In order: the paired dataset is already the seeded shuffle."""
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def _trained(self) -> list[tuple[str, nn.Parameter]]:
        """What the optimizer trains: the parameters that require grad, narrowed by `trainable` (the
        others are frozen, so that Trainer and the optimizer agree)."""
        pattern = re.compile(self.trainable) if self.trainable else None
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        if pattern is not None:
            for name, p in named:
                p.requires_grad_(bool(pattern.search(name)))
            named = [(name, p) for name, p in named if p.requires_grad]
        if not named:
            raise ValueError(f"no parameter to train: trainable={self.trainable!r} matches none that requires grad")
        return named

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            named = self._trained()
            routes = route_parameters(named, self.sift_config)
            self.spectral = {block.name: route for route in routes if route.kind == "spectral" for block in route.blocks()}
            self.optimizer = SiftOptimizer(named, self.sift_config)
        return self.optimizer

    @property
    def sift_optimizer(self) -> SiftOptimizer:
        """The SiftOptimizer under accelerate's wrapper."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """One micro-batch of each objective: forward, backward, capture (f first, then g). Returns f's
        loss (Trainer logs it as `loss`); g's goes to metrics.jsonl and `loss_g` in the logs."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        accum = self.current_gradient_accumulation_steps
        losses = {}
        for which in ("f", "g"):
            with self.compute_loss_context_manager():
                loss = self.losses[which](model, inputs[which])
            self.accelerator.backward(loss / accum)
            self.sift_optimizer.capture(which)
            losses[which] = loss.detach()
            self._losses_since_step[which] += loss.item() / accum
        return losses["f"] / accum

    def record_step(self, step: int, main: bool) -> None:
        """metrics.jsonl and alignment.csv rows of the step just taken, with the losses averaged over ranks
        as `sift train` logs them (rank 0 writes)."""
        losses = {which: self._losses_since_step[which] for which in ("f", "g")}
        self._losses_since_step = {"f": 0.0, "g": 0.0}
        if self.accelerator.num_processes > 1:
            # every rank's mean loss, averaged (a collective: every rank comes here after each step)
            mean = self.accelerator.reduce(torch.tensor([losses["f"], losses["g"]], device=self.args.device), reduction="mean")
            losses = {"f": float(mean[0]), "g": float(mean[1])}
        seconds, self._step_started = time.perf_counter() - self._step_started, time.perf_counter()
        report = self.sift_optimizer.last_report
        if not main or report is None:
            return
        if not all(math.isfinite(value) for value in losses.values()):
            self.control.should_training_stop = True
        spectral = sum(1 for block in report.blocks if block.name in self.spectral)
        lr = self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else self.sift_config.lr
        record = metrics_record(step, losses["f"], losses["g"], lr, seconds, report, spectral)
        self.run.append_metrics(record)
        self._last_record = record
        self.run.append_alignment(alignment_rows(step, report, self.spectral, self.sift_config.tau_source))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's logs, with the newest step's g loss and SIFT share beside f's `loss`."""
        if "loss" in logs and self._last_record is not None:
            logs = {**logs, "loss_g": self._last_record["loss_g"], "n_sift": self._last_record["n_sift"]}
        super().log(logs, start_time)
