"""Several processes, one run: how the ranks of `torchrun` / `accelerate launch` agree.

Every rank runs the same code on the same inputs, but only rank 0 writes the run directory. A check
that fails on one rank while the others carry on into a collective would hang the job, so every
place where a rank can refuse (a bad spec, a held lock, a checkpoint of another world size) goes
through `agreed`: each rank reports its error, and if any failed every rank raises the same one-line
error (exit 2 on every rank, no hang). Scalars that decide the loop (stop requested, non-finite
values) are all-reduced so that every rank takes the same branch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from sift_cli.errors import SiftError, first_line
from sift_cli.spec import RunSpec
from sift_cli.training import tracking

T = TypeVar("T")


class Ranks:
    """The process group of a run as the training loop needs it (one process: every call is local)."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.main = accelerator.is_main_process

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def agreed(self, action: Callable[[], T]) -> T:
        """Run `action` on this rank; if it raised a SiftError on any rank, raise that rank's error on
        every rank (the lowest failing rank's message), so all ranks stop together."""
        error: str | None = None
        result: Any = None
        try:
            result = action()
        except SiftError as exc:
            error = str(exc)
        if self.distributed:
            errors: list[str | None] = [None] * self.world
            dist.all_gather_object(errors, error)
            error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise SiftError(error)
        return result

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, values: list[float]) -> list[float]:
        """The mean over ranks of each value (a non-finite value on one rank makes it non-finite on all)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(tensor)
        return (tensor / self.world).tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


LAUNCH_HINT = (
    "launch with `torchrun --nproc_per_node N $(which sift) train ...` or "
    "`accelerate launch --config_file configs/accelerate/ddp.yaml $(which sift) train ...`"
)


def check_launch(processes: int | None = None) -> None:
    """Refuse a launch whose processes each believe they are alone, wherever the environment shows it:
    WORLD_SIZE > 1 without the rank a launcher gives each process, or (once the accelerator exists,
    `processes`) WORLD_SIZE > 1 but an accelerator of one process; and accelerate's own FSDP plugin
    (`distributed_type: FSDP`, whose `use_cpu: true` starts lone processes), which would also wrap the
    model behind sift's back."""
    announced = int(os.environ.get("WORLD_SIZE", "1") or 1)
    lone = "RANK" not in os.environ and "LOCAL_RANK" not in os.environ
    if announced > 1 and (lone or processes == 1):
        raise SiftError(f"the environment says {announced} processes (WORLD_SIZE={announced}) but this one runs alone; {LAUNCH_HINT}")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise SiftError(
            "accelerate's FSDP plugin is not used by sift; launch with configs/accelerate/fsdp2.yaml "
            "and set --set train.parallel=fsdp2 (sift shards the model itself)"
        )


@contextmanager
def process_group_closed() -> Iterator[None]:
    """Destroy the default process group when the command ends, however it ends, so that a refused
    launch exits with its one line instead of torch's warnings about a group left open."""
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def fresh_accelerator_state() -> None:
    """Forget what an earlier Accelerator in this process set (accelerate keeps one process-wide state):
    a bf16 Trainer earlier in a notebook would otherwise put the next run under its autocast. The
    launcher's process group (accelerate's PartialState) is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


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
    fresh_accelerator_state()
    try:
        accelerator = Accelerator(cpu=cpu, kwargs_handlers=[ddp], **tracking.accelerator_kwargs(spec.train.report_to, run_path))
    except (ValueError, RuntimeError) as exc:
        raise SiftError(f"cannot join the launcher's processes ({first_line(exc, 160)}); {LAUNCH_HINT}") from None
    check_launch(accelerator.num_processes)
    return accelerator
