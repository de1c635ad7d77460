"""`sift compare` end to end on a tiny grid: runs, disjoint splits, choices on validation, report on test."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from test_train import data_dir, invoke, train_args  # noqa: F401  (data_dir is a fixture)

from sift_cli.compare.scores import split_rows


def compare_args(model_dir: Path, data: Path, output: Path, *extra: str) -> list[str]:
    training = train_args(model_dir, data, output)
    settings = [value for flag, value in zip(training, training[1:]) if flag == "--set"]
    return [
        "compare", "--app", "unlearning", "--set", f"model.name={model_dir}", "--set", f"data.path={data}",
        "--set", "optim.k=4", *[item for setting in settings for item in ("--set", setting)],
        "--steps", "2", "-o", str(output), *extra,
    ]  # fmt: skip


def test_split_is_disjoint_balanced_and_keeps_duplicates_together() -> None:
    keys = [f"text {i}" for i in range(11)] + ["text 3", "text 3"]
    halves = split_rows(keys)
    validation, test = set(halves["validation"]), set(halves["test"])
    assert validation.isdisjoint(test) and validation | test == set(range(len(keys)))
    assert abs(len(validation) - len(test)) <= 3
    assert {keys[i] for i in validation}.isdisjoint({keys[i] for i in test})
    assert split_rows(list(reversed(keys)))["validation"] == sorted(len(keys) - 1 - i for i in halves["validation"])


def test_a_tiny_comparison_runs_chooses_and_reports(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    output = tmp_path / "cmp"
    args = compare_args(tiny_model_dir, data_dir, output, "--method", "sift=0.02,0.05", "--method", "muon=0.02",
                        "--method", "muon+pome=0.02")  # fmt: skip
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    runs = sorted(p.name for p in (output / "runs").iterdir())
    assert runs == ["muon+pome-lr0.02-seed0", "muon-lr0.02-seed0", "sift-lr0.02-seed0", "sift-lr0.05-seed0"]
    summary = json.loads((output / "compare.json").read_text())
    assert set(summary["choices"]) == {"sift", "muon", "muon+pome"}
    assert summary["choices"]["sift"]["lr"] in (0.02, 0.05)
    for name, metrics in summary["test"].items():
        for metric, interval in metrics.items():
            assert interval["low"] <= interval["mean"] <= interval["high"], (name, metric)
            assert interval["n"] > 0
    assert set(summary["paired_vs_reference"]) == {"sift", "muon+pome"}
    results = pd.read_csv(output / "results.csv")
    assert set(results["model"]) == {"base", "sift", "muon", "muon+pome"}
    for name in ("pareto.png", "pareto.csv", "curves.png", "curves.csv"):
        assert (output / name).stat().st_size > 0
    pareto = pd.read_csv(output / "pareto.csv")
    assert pareto["chosen"].sum() == 4 and len(pareto) == 5

    scores = json.loads((output / "scores" / "base.json").read_text())
    assert scores["validation"]["forget_nll"] and scores["test"]["forget_nll"]

    trained = {path: path.stat().st_mtime_ns for path in (output / "runs").glob("*/model/model.safetensors")}
    again = invoke(*args)
    assert again.exit_code == 0
    assert {path: path.stat().st_mtime_ns for path in trained} == trained, "a finished run was trained again"
    assert len(trained) == 4
    other = invoke(*compare_args(tiny_model_dir, data_dir, output, "--method", "sift=0.1", "--method", "muon=0.02"))
    assert other.exit_code == 2 and "holds a different comparison" in other.output


def test_bad_compare_inputs_are_one_line(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    cases = [
        (["--method", "sift"], "is not METHOD=LR"),
        (["--method", "sgd=0.1", "--method", "muon=0.1"], "unknown method 'sgd'"),
        (["--method", "sift=0.1"], "reference method 'muon' is not in the grid"),
        (["--method", "sift=0.1", "--method", "muon=0.1", "--seeds", "a"], "--seeds 'a'"),
    ]
    for extra, message in cases:
        result = invoke(*compare_args(tiny_model_dir, data_dir, tmp_path / "bad", *extra))
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.strip().count("\n") == 0, result.output
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_compare_never_writes_into_a_directory_holding_other_files(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    occupied = tmp_path / "mine"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    result = invoke(*compare_args(tiny_model_dir, data_dir, occupied, "--method", "sift=0.02", "--method", "muon=0.02"))
    assert result.exit_code == 2 and "is not a comparison directory" in result.output
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"] and (occupied / "notes.txt").read_text() == "keep me"
