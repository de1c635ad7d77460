"""`sift compare` end to end on a tiny grid: runs, disjoint splits, choices on validation, report on test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import prepare_unlearning
from test_train import invoke, train_args

from sift_cli.compare.scores import cluster_rows, split_clusters


def compare_args(model_dir: Path, data: Path, output: Path, *extra: str) -> list[str]:
    training = train_args(model_dir, data, output)
    settings = [value for flag, value in zip(training, training[1:]) if flag == "--set"]
    return [
        "compare", "--app", "unlearning", "--set", f"model.name={model_dir}", "--set", f"data.path={data}",
        "--set", "optim.k=4", *[item for setting in settings for item in ("--set", setting)],
        "--steps", "2", "-o", str(output), *extra,
    ]  # fmt: skip


def varied_texts(topic: str, vocabulary: list[str], count: int, seed: int) -> list[str]:
    """Texts that share no run of 8 words (templated texts would be one cluster of near-duplicates)."""
    rng = np.random.default_rng(seed)
    return [f"{topic} note {i}: " + " ".join(rng.choice(vocabulary, size=14)) + "." for i in range(count)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    virus = "virus cell genome copies spreads enters host protein membrane replicates infects strain mutation immune".split()
    body = "heart blood arteries veins organ pumps lungs oxygen muscle bone kidney filters liver nerve".split()
    return prepare_unlearning(tmp_path_factory.mktemp("compare-data"), varied_texts("Pathogen", virus, 30, 0), varied_texts("Biology", body, 30, 1))


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def test_split_keeps_clusters_and_near_duplicates_on_one_side() -> None:
    """Exact and normalized duplicates, overlapping windows of one text and rows of one declared cluster
    never straddle the halves; unrelated rows are dealt so that the halves differ by one cluster."""
    document = " ".join(WORDS * 2)
    windows = [" ".join(document.split()[start : start + 16]) for start in (0, 8)]
    rows = [f"unrelated text number {i}" for i in range(10)]
    rows += ["Text 3 is here.", "text 3   is HERE", *windows, {"source_id": "p1", "response": "a"}, {"source_id": "p1", "response": "b"}]
    labels = cluster_rows(rows, lambda row: row["source_id"] if isinstance(row, dict) else row)
    assert labels[10] == labels[11] and labels[12] == labels[13] and labels[14] == labels[15]
    assert len(set(labels)) == 13
    halves = split_clusters(labels)
    side = {i: split for split, indices in halves.items() for i in indices}
    for i, j in ((10, 11), (12, 13), (14, 15)):
        assert side[i] == side[j]
    assert sorted(side) == list(range(len(rows)))
    sizes = [len({labels[i] for i in indices}) for indices in halves.values()]
    assert abs(sizes[0] - sizes[1]) <= 1
    reversed_labels = cluster_rows(rows[::-1], lambda row: row["source_id"] if isinstance(row, dict) else row)
    assert reversed_labels[::-1] == labels, "cluster labels depend on content, not order"
    templated = [f"Where is item {i}? Answer with the letter of the correct choice, then explain why." for i in range(8)]
    assert len(set(cluster_rows(templated))) == 8, "a template shared by every row is boilerplate, not a near-duplicate"


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

    scores = json.loads((output / "scores" / "base.json").read_text())["scores"]
    assert scores["validation"]["forget_nll"]["id"] and scores["test"]["forget_nll"]["id"]
    assert set(scores["validation"]["forget_nll"]["cluster"]).isdisjoint(scores["test"]["forget_nll"]["cluster"])
    assert summary["inputs"]["prepared"] and all(len(digest) == 64 for digest in summary["inputs"]["prepared"].values())
    assert summary["clusters"]["forget_nll"]["test_examples"] == len(scores["test"]["forget_nll"]["id"])
    assert summary["report_seeds"] == [0] and summary["reported_on_selection_seeds"]
    assert all(test["p_value"] is None and not test["significant"] for found in summary["paired_vs_reference"].values() for test in found.values())
    said = " ".join(first.output.split())
    assert "one report seed" in said and "conditional on one training run" in said

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
        (["--method", "sift=0.1", "--method", "muon=0.1", "--axis", "muon"], "is not METHOD:KEY=V"),
        (["--method", "sift=0.1", "--method", "muon=0.1", "--axis", "adamw:optim.lam=1"], "adamw has no learning rates"),
        (["--method", "sift=0.1", "--method", "muon=0.1", "--axis", "muon:optim.lr=1,2"], "sets optim.lr itself"),
        (["--method", "sift=0.1", "--method", "muon=0.1", "--axis", "muon:optim.lamm=1,2"], "optim.lamm"),
        (["--method", "sift=0.1", "--method", "muon=0.1", "--seeds", "0,1", "--report-seeds", "1,2"], "both a selection and a report seed"),
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


def test_identical_methods_over_report_seeds_mark_nothing(tiny_model_dir, data_dir, tmp_path) -> None:
    """SIFT with eps=-1 never opens its gate (tau < -1 cannot happen), so it is Muon bit for bit: over fresh report seeds every
    difference is exactly zero and nothing is marked; Muon's lam axis is crossed with its lr, the choice
    is flagged at its grid's edge and the unequal grid sizes are said."""
    output = tmp_path / "cmp"
    args = compare_args(tiny_model_dir, data_dir, output, "--method", "sift=0.02", "--method", "muon=0.02",
                        "--axis", "muon:optim.lam=1,2", "--set", "optim.eps=-1", "--seeds", "0", "--report-seeds", "1,2")  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in (output / "runs").iterdir())
    chosen = json.loads((output / "compare.json").read_text())["choices"]["muon"]["config"]
    assert runs == sorted(["muon-lr0.02-lam1-seed0", "muon-lr0.02-lam2-seed0", "sift-lr0.02-seed0",
                           f"{chosen}-seed1", f"{chosen}-seed2", "sift-lr0.02-seed1", "sift-lr0.02-seed2"])  # fmt: skip
    record = json.loads((output / "compare.json").read_text())
    assert record["report_seeds"] == [1, 2] and record["selection_seeds"] == [0] and record["grid_sizes"] == {"sift": 1, "muon": 2}
    assert record["choices"]["muon"]["on_grid_edge"] == ["lam"]
    for metric, test in record["paired_vs_reference"]["sift"].items():
        if chosen == "muon-lr0.02-lam1":
            assert test["difference"] == 0.0 and test["p_value"] == 1.0, metric
        assert test["p_floor"] == 0.5 and not test["significant"], metric
    said = " ".join(result.output.split())
    assert "unequal grids" in said and "smallest possible p 0.5, so nothing can be marked" in said


def test_a_changed_input_refuses_the_cached_comparison(tiny_model_dir, data_dir, tmp_path) -> None:
    questions = tmp_path / "mcq.jsonl"
    rows = [{"question": f"Which organ number {i} pumps blood?", "choices": ["heart", "lung"], "answer": 0} for i in range(6)]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "cmp"
    args = compare_args(tiny_model_dir, data_dir, output, "--method", "sift=0.02", "--method", "muon=0.02", "--tasks", f"cloze:{questions}")
    assert invoke(*args).exit_code == 0
    scores = json.loads((output / "scores" / "base.json").read_text())["scores"]["test"]["acc:mcq_cloze"]
    assert set(scores["score"]) <= {0.0, 1.0} and len(scores["id"]) == len(set(scores["id"])) == 3
    record = (output / "compare.yaml").read_text()
    questions.write_text("".join(json.dumps({**row, "answer": 1}) + "\n" for row in rows))
    again = invoke(*args)
    assert again.exit_code == 2 and "the data changed" in again.output
    assert (output / "compare.yaml").read_text() == record
