"""`sift pome`: a finished run's POME edit is a new run directory that evaluate and localize read."""

from __future__ import annotations

import json

import torch
from rich.console import Console
from safetensors.torch import load_file
from test_train import data_dir, invoke, train_args  # noqa: F401  (data_dir is a fixture)

from sift_cli.apps.base import EvalOptions
from sift_cli.engine.pome import pome_delta
from sift_cli.evaluation.evaluate import evaluate_run
from sift_cli.store.rundir import RunDir


def test_pome_edit_of_a_muon_run_is_a_run_that_later_commands_read(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    source = tmp_path / "muon"
    assert invoke(*train_args(tiny_model_dir, data_dir, source, "--steps", "2", "--method", "muon")).exit_code == 0
    edited = tmp_path / "muon+pome"
    result = invoke("pome", str(source), "-o", str(edited), "--rank-fraction", "0.5")
    assert result.exit_code == 0, result.output

    base, trained = load_file(tiny_model_dir / "model.safetensors"), load_file(source / "model" / "model.safetensors")
    got = load_file(edited / "model" / "model.safetensors")
    record = json.loads((edited / "pome.json").read_text())
    assert record["edited_blocks"] == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    for name, tensor in got.items():
        if name in record["edited_blocks"]:
            expected = base[name] + pome_delta(trained[name] - base[name], 0.5)
            assert torch.allclose(tensor, expected, atol=1e-6), name
            assert not torch.allclose(tensor, trained[name], atol=1e-6), name
        else:
            assert torch.equal(tensor, trained[name]), name

    assert RunDir.open(edited).load_spec().output == edited.resolve()
    results = evaluate_run(edited, EvalOptions(tasks=[]), console=Console(quiet=True))
    assert set(results["perplexity"]) == {"forget", "retain"}
    assert invoke("localize", str(edited)).exit_code == 0
    assert (edited / "plots").is_dir()

    refused = invoke("train", "--resume", str(edited))
    assert refused.exit_code == 2 and "POME edit" in refused.output


def test_pome_never_writes_over_a_directory_that_holds_files(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    source = tmp_path / "muon"
    assert invoke(*train_args(tiny_model_dir, data_dir, source, "--steps", "1", "--method", "muon")).exit_code == 0
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    for target in (occupied, source):
        result = invoke("pome", str(source), "-o", str(target))
        assert result.exit_code == 2 and result.output.count("\n") == 1
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
