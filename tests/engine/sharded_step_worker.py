"""One rank of tests/engine/test_sharded_step.py: the same parameters and gradients as a single-process
optimizer, sharded on dim 0 across the ranks; rank 0 writes both results for the test to compare."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from sift_cli.engine import OptimizerConfig, SiftOptimizer

SHAPES = {"a.weight": (48, 32), "b.weight": (48, 32), "c.weight": (33, 40), "d.weight": (5, 24), "norm.weight": (32,), "qkv.weight": (30, 16)}


def params(sharded: bool, mesh) -> list[tuple[str, torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for name, shape in SHAPES.items():
        full = torch.randn(shape, generator=gen) * 0.1
        out.append((name, torch.nn.Parameter(distribute_tensor(full, mesh, [Shard(0)]) if sharded else full)))
    return out


def run(method: str, sharded: bool, mesh, steps: int = 3) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    named = params(sharded, mesh)
    cfg = OptimizerConfig(method=method, lr=0.02, k=4, eps=-0.05, weight_decay=0.01, lam=2.0,
                          block_splits={"qkv": (("q", 10), ("k", 10), ("v", 10))})  # fmt: skip
    opt = SiftOptimizer(named, cfg)
    gen = torch.Generator().manual_seed(1)
    branches = []
    for _ in range(steps):
        grads_f = {name: torch.randn(p.shape, generator=gen) for name, p in named}
        for objective in ("f", "g"):
            for name, p in named:
                g = grads_f[name] if objective == "f" else torch.randn(p.shape, generator=gen)
                if objective == "g" and name in ("a.weight", "c.weight", "qkv.weight"):
                    g = -0.9 * grads_f[name] + 0.3 * g  # conflicting objectives: these blocks take the SIFT branch
                p.grad = distribute_tensor(g, mesh, [Shard(0)]) if sharded else g
            opt.capture(objective)
        branches.append([block.branch for block in opt.step().blocks])
    weights = {name: (p.full_tensor() if sharded else p.detach()).clone() for name, p in named}
    return weights, branches


def main() -> None:
    out = sys.argv[1]
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    results = {}
    for method in ("sift", "muon", "adamw", "blur"):
        results[method] = {"single": run(method, False, mesh), "sharded": run(method, True, mesh)}
    if dist.get_rank() == 0:
        torch.save(results, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
