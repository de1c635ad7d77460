"""`train.report_to`: the run's metrics also reach TensorBoard (local event files), and a missing tracker
package is refused in one line before anything is written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_train import data_dir, invoke, train_args  # noqa: F401  (data_dir is a fixture)

from sift_cli.store.rundir import RunDir
from sift_cli.training.tracking import conflict_share


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_receives_losses_lr_sift_blocks_and_conflict_share_per_layer(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    pytest.importorskip("tensorboard")
    run_path = tmp_path / "run"
    result = invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "3", "--set", "train.report_to=tensorboard"))
    assert result.exit_code == 0, result.output

    logged = scalars(run_path / "tensorboard")
    metrics = RunDir.open(run_path).read_metrics()
    for name in ("loss_f", "loss_g", "lr", "n_sift"):
        assert [step for step, _ in logged[name]] == [1, 2, 3]
        assert [value for _, value in logged[name]] == pytest.approx(list(metrics[name]), rel=1e-6)
    alignment = RunDir.open(run_path).read_alignment()
    for layer in (0, 1):
        share = alignment[alignment["layer"] == layer].groupby("step")["branch"].apply(lambda b: (b == "sift").mean())
        assert [value for _, value in logged[f"conflict_share/layer_{layer:02d}"]] == pytest.approx(list(share))


def test_metrics_go_only_to_the_run_directory_by_default(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    run_path = tmp_path / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1")).exit_code == 0
    assert not (run_path / "tensorboard").exists()


def test_an_unavailable_wandb_is_one_line_before_anything_is_written(tiny_model_dir, data_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setitem(sys.modules, "wandb", None)
    run_path = tmp_path / "run"
    result = invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1", "--set", "train.report_to=wandb"))
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "pip install 'sift-cli[wandb]'" in result.output
    assert not run_path.exists()


def test_an_unknown_tracker_is_refused_by_the_spec(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    result = invoke(*train_args(tiny_model_dir, data_dir, tmp_path / "run", "--set", "train.report_to=mlflow"))
    assert result.exit_code == 2 and "train.report_to" in result.output


def test_conflict_share_is_the_share_of_a_layers_blocks_on_the_sift_branch() -> None:
    class Block:
        def __init__(self, name: str, branch: str) -> None:
            self.name, self.branch = name, branch

    blocks = [
        Block("model.layers.3.mlp.down_proj.weight", "sift"),
        Block("model.layers.3.self_attn.q_proj.weight", "muon"),
        Block("model.layers.12.mlp.up_proj.weight", "muon"),
    ]
    assert conflict_share(blocks) == {"conflict_share/layer_03": 0.5, "conflict_share/layer_12": 0.0}
