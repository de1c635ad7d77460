"""The owner-rank step on row-sharded (DTensor) parameters equals the single-process step: two gloo
processes, every method, uneven shards, a fused matrix gated as three row blocks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("sharded_step_worker.py")


def test_sharded_step_equals_the_single_process_step(tmp_path) -> None:
    out = tmp_path / "results.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    results = torch.load(out, weights_only=False)
    for method, runs in results.items():
        (single, single_branches), (sharded, sharded_branches) = runs["single"], runs["sharded"]
        assert sharded_branches == single_branches, method
        for name in single:
            error = (single[name] - sharded[name]).norm() / single[name].norm()
            assert error <= 1e-6, (method, name, float(error))
    assert sum(branch == "sift" for step in results["sift"]["single"][1] for branch in step) >= 6
