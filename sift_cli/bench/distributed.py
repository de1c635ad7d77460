"""`sift bench distributed`: the sharded optimizer step on 1 and N CPU processes, as ratios.

The bench launches itself under torchrun (gloo), once with one process and once with N. Each rank
holds a SmolLM2-135M-shaped model's trained matrices (the attention and MLP matrices of the first
`layers` decoder layers, fp32) sharded on dim 0 as fully_shard shards them, and feeds the optimizer
the same conflicting gradient stream (every block takes the SIFT branch). It reports the median
seconds of a steady-state optimizer step and two memory figures per rank: the tensors the step keeps
(parameter shards, two gradients, optimizer state) and the process's peak resident memory.

Run the worker directly with `python -m sift_cli.bench.distributed OUT.json LAYERS STEPS` under torchrun.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from rich.console import Console
from rich.table import Table

from sift_cli.errors import SiftError

SMOLLM2_LAYER = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
                 "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}  # fmt: skip
"""(rows, columns) of SmolLM2-135M's trained matrices in one decoder layer (configs/models/smollm2-135m)."""
WARMUP = 2


def worker(out: Path, layers: int, steps: int) -> None:
    """One rank: time `steps` optimizer steps (after WARMUP) and write this rank's figures to `out`
    (rank 0 collects every rank's)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from sift_cli.engine import OptimizerConfig, SiftOptimizer
    from sift_cli.engine.distributed import local

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh("cpu", (world,))
    sharded = world > 1
    gen = torch.Generator().manual_seed(0)

    def place(full: torch.Tensor) -> torch.Tensor:
        return distribute_tensor(full, mesh, [Shard(0)]) if sharded else full

    named = [
        (f"model.layers.{layer}.{name}.weight", torch.nn.Parameter(place(torch.randn(shape, generator=gen) * 0.02)))
        for layer in range(layers)
        for name, shape in SMOLLM2_LAYER.items()
    ]
    opt = SiftOptimizer(named, OptimizerConfig(method="sift", lr=1e-3, k=128, eps=-0.1))
    times = []
    for step in range(WARMUP + steps):
        for objective in ("f", "g"):
            for _, p in named:
                g = torch.randn(p.shape, generator=gen)
                p.grad = place(g if objective == "f" else -0.8 * g)
            opt.capture(objective)
        dist.barrier()
        started = time.perf_counter()
        report = opt.step()
        dist.barrier()
        if step >= WARMUP:
            times.append(time.perf_counter() - started)
    held = sum(local(p).nbytes * 3 for _, p in named)  # the parameter shard and its two gradients
    held += sum(local(v).nbytes for state in opt.state.values() for v in state.values() if torch.is_tensor(v))
    figures = {"rank": rank, "seconds": median(times), "held_bytes": held, "n_sift": report.n_sift,
               "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # fmt: skip
    gathered: list[dict | None] = [None] * world
    dist.all_gather_object(gathered, figures)
    if rank == 0:
        out.write_text(json.dumps({"world": world, "ranks": gathered}))
    dist.destroy_process_group()


def launch(processes: int, layers: int, steps: int, timeout: int = 1800) -> dict:
    """Run the worker under torchrun with `processes` ranks, one thread each; its collected figures."""
    with tempfile.TemporaryDirectory(prefix="sift-distbench-") as tmp:
        out = Path(tmp) / "figures.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "sift_cli.bench.distributed", str(out), str(layers), str(steps)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0 or not out.is_file():
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SiftError(f"the {processes}-process bench failed ({tail[:160]}); run it again with `sift --verbose bench distributed`")
        return json.loads(out.read_text())


def run_distributed_bench(processes: int = 2, layers: int = 6, steps: int = 3, console: Console | None = None) -> list[dict]:
    """Optimizer seconds per step and memory per rank on 1 and `processes` processes, as ratios to
    the one-process run measured in the same call."""
    console = console or Console()
    base = launch(1, layers, steps)["ranks"][0]
    many = launch(processes, layers, steps)["ranks"]
    rows = [{"processes": 1, **base}]
    rows.append({
        "processes": processes,
        "seconds": max(r["seconds"] for r in many),
        "held_bytes": max(r["held_bytes"] for r in many),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in many),
        "n_sift": many[0]["n_sift"],
    })  # fmt: skip
    table = Table(title=f"sharded optimizer step, SmolLM2-135M-shaped ({layers} layers, {7 * layers} matrices, SIFT K=128), CPU, one thread per rank")
    for column in ("processes", "step s (slowest rank)", "x 1 process", "step state / rank MiB", "x 1 process", "peak RSS / rank MiB", "x 1 process"):
        table.add_column(column, justify="right")
    for row in rows:
        row["time_ratio"] = row["seconds"] / base["seconds"]
        row["held_ratio"] = row["held_bytes"] / base["held_bytes"]
        row["rss_ratio"] = row["peak_rss_bytes"] / base["peak_rss_bytes"]
        table.add_row(str(row["processes"]), f"{row['seconds']:.3f}", f"{row['time_ratio']:.2f}", f"{row['held_bytes'] / 2**20:,.0f}",
                      f"{row['held_ratio']:.2f}", f"{row['peak_rss_bytes'] / 2**20:,.0f}", f"{row['rss_ratio']:.2f}")  # fmt: skip
    console.print(table)
    return rows


if __name__ == "__main__":
    worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
