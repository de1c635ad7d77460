"""The benchmarks run end to end on tiny settings and return finite numbers."""

import math

from rich.console import Console

from sift_cli.bench import run_engine_bench, run_toy_comparison


def test_run_toy_comparison_small():
    rows = run_toy_comparison(steps=4, lrs=(1e-2,), console=Console(quiet=True))
    assert [r["method"] for r in rows] == ["sift", "muon", "adamw", "blur"]
    for row in rows:
        assert math.isfinite(row["final_f"]) and math.isfinite(row["final_g"]) and row["best_lr"] == 1e-2
    assert rows[0]["sift_blocks_per_step"] >= 0 and rows[1]["sift_blocks_per_step"] == 0


def test_engine_bench_along_a_drifting_stream():
    rows = run_engine_bench(k=8, streams=["drifting"], steps=4, shapes=[(48, 80)], device="cpu", console=Console(quiet=True))
    (row,) = rows
    assert (row["stream"], row["shape"], row["steps"]) == ("drifting", "48x80", 4)
    assert row["sift-exact_error"]["max"] < 1e-4 and row["released-code_error"]["max"] < 1e-4
    assert row["sift-fast_error"]["p95"] <= 0.02
    assert row["max_estimate"] <= 0.01 and 0 <= row["fallback_rate"] <= 1
    assert all(row[f"{method}_x_muon"] > 0 for method in ("sift-fast", "sift-exact", "released-code"))
