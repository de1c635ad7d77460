"""`train.parallel: fsdp2`: the model sharded with torch's `fully_shard`, checkpoints with
torch.distributed.checkpoint (DCP).

Each decoder layer is one FSDP2 unit (its parameters are gathered for its forward and backward and
freed after), the root holds the rest. Trained parameters, their gradients, the master weights and
both momenta are DTensors sharded on dim 0; the optimizer's owner-rank step (engine/distributed.py)
does what needs whole matrices.

A sharded checkpoint is a directory `step-NNNNNNN/`: DCP's files for every DTensor (weights and
sharded optimizer state; each rank writes its own shard file, rank 0 the metadata) and `rank-R.pt`
per rank for what is not sharded (scalars, the schedule, RNG, data positions, and the subspace caches,
which live on each block's owner rank). It is written into a hidden staging directory that rank 0
creates and renames into place, so a kill mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.tensor import DTensor

from sift_cli.errors import SiftError

RANK_FILE = "rank-{rank}.pt"


def shard_model(model: nn.Module, device: torch.device, world: int) -> None:
    """fully_shard each decoder layer, then the root (embeddings, norms, head), on a 1-D mesh of all ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for layer in getattr(decoder, "layers", []):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU, gathered on rank 0 (a collective: every rank calls it; the
    others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _split_state(named: list[tuple[str, nn.Parameter]], optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the DTensors DCP saves, by name; the rest of each parameter's optimizer state, by name)."""
    sharded: dict[str, Any] = {"weights": {name: p for name, p in named}, "optimizer": {}}
    rest: dict[str, dict[str, Any]] = {}
    for name, p in named:
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, DTensor):
                sharded["optimizer"][f"{name}/{key}"] = value
            else:
                rest.setdefault(name, {})[key] = value
    return sharded, rest


def save_sharded(path: Path, named: list[tuple[str, nn.Parameter]], optimizer: Any, extra: dict[str, Any], main: bool) -> None:
    """Write a sharded checkpoint to `path` (a directory), every rank together."""
    staging = path.with_name(f".{path.name}.tmp")
    if main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    dist.barrier()
    sharded, rest = _split_state(named, optimizer)
    dcp.save(sharded, checkpoint_id=str(staging))
    rank = dist.get_rank()
    torch.save({**extra, "optimizer_rest": rest}, staging / RANK_FILE.format(rank=rank))
    dist.barrier()
    if main:
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)
    dist.barrier()


def read_rank_file(path: Path, rank: int) -> dict[str, Any]:
    """This rank's unsharded part of a sharded checkpoint; a checkpoint written by fewer processes has
    none for this rank (the world size check then names the right number)."""
    own = path / RANK_FILE.format(rank=rank)
    source = own if own.is_file() else path / RANK_FILE.format(rank=0)
    return torch.load(source, map_location="cpu", weights_only=True)


def load_sharded(path: Path, named: list[tuple[str, nn.Parameter]], optimizer: Any, rank_state: dict[str, Any]) -> None:
    """Load the DTensors of a sharded checkpoint into the (already sharded) parameters and optimizer
    state in place, then the unsharded optimizer state of this rank."""
    optimizer.init_state()
    sharded, _ = _split_state(named, optimizer)
    try:
        dcp.load(sharded, checkpoint_id=str(path))
    except Exception as exc:  # DCP raises CheckpointException wrapping each rank's failure
        raise SiftError(f"{path.name} does not fit this run ({str(exc).strip().splitlines()[0][:120]}); restore spec.yaml") from None
    by_name = dict(named)
    for name, entries in rank_state["optimizer_rest"].items():
        optimizer.state[by_name[name]].update(entries)
