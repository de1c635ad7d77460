"""The benchmarks run end to end on tiny settings and return finite numbers."""

import math

import pytest
from rich.console import Console

from sift_cli.bench import run_engine_bench, run_toy_comparison


def test_run_toy_comparison_small():
    rows = run_toy_comparison(steps=4, lrs=(1e-2,), console=Console(quiet=True))
    assert [r["method"] for r in rows] == ["sift", "muon", "adamw", "blur"]
    for row in rows:
        assert math.isfinite(row["final_f"]) and math.isfinite(row["final_g"]) and row["best_lr"] == 1e-2
    assert rows[0]["sift_blocks_per_step"] >= 0 and rows[1]["sift_blocks_per_step"] == 0


def test_run_engine_bench_small():
    quiet = Console(quiet=True)
    rows = run_engine_bench(shapes=[(48, 80)], k=8, repeats=2, warmup=2, device="cpu", console=quiet)
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"adamw", "muon", "sift-exact", "sift-fast", "released-code"}
    assert by_method["muon"]["ratio_to_muon"] == 1.0
    assert by_method["sift-exact"]["rel_error"] < 1e-4
    assert by_method["released-code"]["rel_error"] < 1e-4
    assert by_method["sift-fast"]["rel_error"] < 0.02 and by_method["sift-fast"]["cold_rel_error"] < 0.02
    for row in rows:
        assert row["ratio_to_muon"] == pytest.approx(row["seconds"] / by_method["muon"]["seconds"], rel=0.01)
