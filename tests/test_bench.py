"""The benchmarks run end to end on tiny settings and return finite numbers."""

import math

import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer
from rich.console import Console

from sift_cli.bench.engine import run_engine_bench
from sift_cli.bench.toy import Config, SeedRuns, area, best_f, chosen_on, log_ratio_test


def test_front_readings_on_known_points():
    """Best f at a g level, the dominated area and the choice on selection seeds, on points written by
    hand (the area worked out in the comment)."""
    a, b = Config("sift", 0.01, "eps", -0.1), Config("muon", 0.01, "lam", 2.0)
    runs = SeedRuns(g_start=2.0, points={(a, 10): (0.2, 0.5), (a, 20): (1.0, 0.1), (b, 10): (0.4, 0.3)})
    assert best_f(runs, "sift", 0.5) == 0.2 and best_f(runs, "sift", 0.2) == 1.0 and best_f(runs, "muon", 0.2) == math.inf
    # sift in (f / g_start, g): (0.1, 0.5) and (0.5, 0.1); dominated up to (1, 1): 0.9*0.5 + 0.5*0.4 = 0.65
    assert area(runs, "sift") == pytest.approx(0.65)
    assert chosen_on([runs, runs], "sift", 0.2) == (a, 20) and chosen_on([runs], "muon", 0.2) is None
    test = log_ratio_test([1.0, 2.0, 4.0, math.inf], [2.0, 2.0, 2.0, 1.0])
    assert test["seeds"] == 3 and test["ratio"] == pytest.approx(1.0) and test["lower"] == 1 and test["p"] >= test["floor"] == 0.25


def test_bench_toy_prints_fronts_with_whole_headers(tmp_path):
    """Off a terminal (a log, CI) the table keeps its headers whole; every p is at least its floor."""
    from typer.testing import CliRunner

    from sift_cli.cli import app

    result = CliRunner().invoke(app, ["bench", "toy", "--problem", "disjoint", "--seeds", "4", "--steps", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "front: f SIFT/Muon" in result.output and "chosen: f SIFT/Muon" in result.output and "…" not in result.output
    assert "SIFT's gate open on eps -0.1" in " ".join(result.output.split())
    bad = CliRunner().invoke(app, ["bench", "toy", "--seeds", "2"])
    assert bad.exit_code == 2 and "at least 4" in bad.output


def test_engine_bench_along_a_drifting_stream():
    rows = run_engine_bench(k=8, streams=["drifting"], steps=4, shapes=[(48, 80)], device="cpu", console=Console(quiet=True))
    (row,) = rows
    assert (row["stream"], row["shape"], row["steps"]) == ("drifting", "48x80", 4)
    assert row["sift-exact_error"]["max"] < 1e-4 and row["released-code_error"]["max"] < 1e-4
    assert row["sift-fast_error"]["p95"] <= 0.02
    assert row["max_estimate"] <= 0.01 and 0 <= row["fallback_rate"] <= 1
    assert all(row[f"{method}_x_muon"] > 0 for method in ("sift-fast", "sift-exact", "released-code"))


@pytest.mark.slow
def test_training_streams_record_real_gradients_per_block():
    """Needs the offline SmolLM2 (make installs it): the bench's real momentum streams come from training."""
    from sift_cli.bench.streams import TRAINING_BLOCKS, training_streams

    steps = list(training_streams(2))
    assert len(steps) == 2 and set(steps[0]) == set(TRAINING_BLOCKS)
    for name in TRAINING_BLOCKS:
        (f1, g1), (f2, g2) = steps[0][name], steps[1][name]
        assert f1.shape == g1.shape and all(torch.isfinite(x).all() for x in (f1, g1, f2, g2))
        # RMU's retain loss compares the model with its frozen copy, so f's gradient is zero until the first step
        assert f1.abs().sum() == 0 and f2.abs().sum() > 0 and g1.abs().sum() > 0, name


def test_whole_step_bench_measures_each_variant_on_a_small_model():
    from sift_cli.bench.train import VARIANTS, measure

    tokenizer = tiny_tokenizer()
    results = {}
    for variant, settings in VARIANTS.items():
        torch.manual_seed(0)
        results[variant] = measure(tiny_llama(len(tokenizer)), tokenizer, settings, k=4, steps=2, batch_size=2, length=32)
    blocks = results["muon"]["blocks"]
    assert blocks == 4 * 7
    assert results["muon"]["sift_blocks"] == 0 and results["adamw"]["sift_blocks"] == 0
    assert results["sift (gate forced open)"]["sift_blocks"] == blocks
    assert results["sift (gated, eps -0.1)"]["sift_blocks"] <= blocks
    for row in results.values():
        assert 0 < row["optimizer_seconds"] < row["step_seconds"]


def test_whole_step_bench_reads_new_windows_every_step():
    """A batch repeated every step gives momenta of rank below K; the bench's windows never repeat."""
    from sift_cli.bench.train import TEXTS, batches

    tokenizer = tiny_tokenizer()
    steps = batches(tokenizer, TEXTS["f"], batch_size=4, length=32, count=3)
    rows = torch.cat(steps)
    assert [tuple(b.shape) for b in steps] == [(4, 32)] * 3
    assert len({tuple(row.tolist()) for row in rows}) == 12
    with pytest.raises(RuntimeError, match="too few"):
        batches(tokenizer, ["A short text."], batch_size=4, length=32, count=3)
