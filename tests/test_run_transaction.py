"""A run directory is a transaction: locked while written, nothing written before validation, --resume
takes only what makes sense for it, a damaged checkpoint falls back, and the run is self-contained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from test_train import data_dir, invoke, train_args, weights  # noqa: F401  (data_dir is a fixture)

from sift_cli import api
from sift_cli.apps.base import EvalOptions
from sift_cli.errors import SiftError
from sift_cli.evaluation.evaluate import evaluate_run
from sift_cli.store.lock import locked
from sift_cli.store.rundir import RunDir


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: what 'nothing changed on disk' compares."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_refusal(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output


def test_a_directory_that_is_not_a_run_is_never_written_into(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "metrics.jsonl").write_text('{"step": 1, "loss_f": 0.5}\n')
    (mine / "alignment.csv").write_text("step,block\n1,a\n")
    (mine / "model" / "config.json").write_text("{}")
    before = tree(mine)
    one_line_refusal(invoke(*train_args(tiny_model_dir, data_dir, mine, "--steps", "1")), "holds files that are not a sift run")
    assert tree(mine) == before


@pytest.mark.parametrize(
    "args",
    [["--model", "/no/such/model"], ["--k", "500"], ["--set", "train.seed=18446744073709551616"],
     ["--set", "train.trainable=layers\\.(9"]],
    ids=["bad model", "K too large", "seed too large", "bad trainable regex"],
)  # fmt: skip
def test_a_failed_start_writes_nothing_and_the_corrected_command_runs(tiny_model_dir, data_dir, tmp_path, args) -> None:  # noqa: F811
    run_path = tmp_path / "run"
    result = invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1"), *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not run_path.exists()
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1")).exit_code == 0


def test_resume_refuses_flags_it_cannot_honour_and_its_dry_run_writes_nothing(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    run_path = tmp_path / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1")).exit_code == 0
    before = tree(run_path)
    for flag in (["--method", "muon"], ["--set", "train.batch_size=4"], ["--output", str(tmp_path / "x")], ["--k", "2"]):
        one_line_refusal(invoke("train", "--resume", str(run_path), *flag), f"not {flag[0]}")
    dry = invoke("train", "--resume", str(run_path), "--steps", "3", "--lr", "0.01", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would resume" in dry.output and "train.steps 1 -> 3" in dry.output
    assert tree(run_path) == before


def test_resume_with_more_steps_and_a_new_lr_is_recorded_in_the_history(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    run_path = tmp_path / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "2")).exit_code == 0
    result = invoke("train", "--resume", str(run_path), "--steps", "4", "--lr", "0.005")
    assert result.exit_code == 0, result.output
    run = RunDir.open(run_path)
    assert list(run.read_metrics()["step"]) == [1, 2, 3, 4]
    assert run.read_metrics()["lr"].tolist()[2:] == [0.005, 0.005]
    spec = run.load_spec()
    assert (spec.train.steps, spec.optim.lr) == (4, 0.005)
    start, resume = run.read_history()
    assert start["event"] == "start" and resume["event"] == "resume" and resume["step"] == 2
    assert resume["changes"] == {"train.steps": [2, 4], "optim.lr": [0.02, 0.005]}
    one_line_refusal(invoke("train", "--resume", str(run_path), "--steps", "3"), "would undo training")


def test_a_non_finite_stop_is_continued_with_a_lower_lr_through_resume(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    run_path = tmp_path / "diverged"
    args = train_args(tiny_model_dir, data_dir, run_path, "--steps", "3", "--method", "adamw", "--lr", "1e36")
    stopped = invoke(*args, "--set", "train.checkpoint_every=10")
    assert stopped.exit_code == 2
    assert f"with a lower rate: `sift train --resume {run_path} --lr 1e+35`" in stopped.output
    resumed = invoke("train", "--resume", str(run_path), "--lr", "1e-3")
    assert resumed.exit_code == 0, resumed.output
    assert RunDir.open(run_path).read_history()[-1]["changes"] == {"optim.lr": [1e36, 1e-3]}
    assert list(RunDir(run_path).read_metrics()["step"]) == [1, 2, 3]
    assert all(torch.isfinite(t).all() for t in weights(run_path).values())


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before_it(tiny_model_dir, data_dir, tmp_path, damage) -> None:  # noqa: F811
    common = ["--set", "train.checkpoint_every=1"]
    straight = tmp_path / "straight"
    assert invoke(*train_args(tiny_model_dir, data_dir, straight, "--steps", "3", *common)).exit_code == 0
    run_path = tmp_path / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "2", *common)).exit_code == 0
    latest = run_path / "checkpoints" / "step-0000002.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2] if damage == "truncated" else b"")
    result = invoke("train", "--resume", str(run_path), "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "step-0000002.pt is unreadable" in result.output and "resumed from step-0000001.pt" in result.output
    expected, got = weights(straight), weights(run_path)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert list(RunDir(run_path).read_metrics()["step"]) == [1, 2, 3]


def test_temporary_files_of_killed_writes_are_removed_when_the_run_resumes(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    run_path = tmp_path / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1")).exit_code == 0
    leftovers = [
        run_path / "checkpoints" / ".step-0000002.pt.k1ll3d.tmp",
        run_path / "model" / ".tmpab12cd",
        run_path / ".metrics.jsonl.x9.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")
    (run_path / ".model.999999.zz.tmp").mkdir()
    assert invoke("train", "--resume", str(run_path), "--steps", "2").exit_code == 0
    assert not any(path.exists() for path in leftovers) and not (run_path / ".model.999999.zz.tmp").exists()


def test_the_lock_is_exclusive_and_a_dead_holder_leaves_no_lock(tmp_path) -> None:
    (tmp_path / ".lock").write_text("999999999\n")  # a holder that died: the file stays, its lock does not
    with locked(tmp_path, "train into it"):
        with pytest.raises(SiftError, match=f"in use by another sift process \\(pid {os.getpid()}\\)"):
            with locked(tmp_path, "resume it"):
                pass
    with locked(tmp_path, "resume it"):
        pass


HOLDER = """
import os, sys, time
from pathlib import Path
from sift_cli.training.trainer import Trainer
from sift_cli.cli import main

step = Trainer.train_step

def step_then_wait(self):
    out = step(self)
    if self.step == 1:
        Path(os.environ["SIFT_TEST_MARK"]).touch()
        release = Path(os.environ["SIFT_TEST_RELEASE"])
        for _ in range(3000):
            if release.exists():
                break
            time.sleep(0.05)
    return out

Trainer.train_step = step_then_wait
sys.argv = ["sift", *sys.argv[1:]]
main()
"""


def test_a_second_process_cannot_write_a_run_that_another_one_is_writing(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    run_path = tmp_path / "run"
    mark, release = tmp_path / "at-step-1", tmp_path / "release"
    args = train_args(tiny_model_dir, data_dir, run_path, "--steps", "3")
    env = {**os.environ, "SIFT_TEST_MARK": str(mark), "SIFT_TEST_RELEASE": str(release)}
    first = subprocess.Popen([sys.executable, "-c", HOLDER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not mark.exists():
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        one_line_refusal(invoke("train", "--resume", str(run_path)), f"in use by another sift process (pid {first.pid})")
        one_line_refusal(invoke(*args), f"in use by another sift process (pid {first.pid}); wait for it to finish before you train into it")
        release.touch()
        _, stderr = first.communicate(timeout=300)
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert list(RunDir(run_path).read_metrics()["step"]) == [1, 2, 3]


def test_a_run_is_self_contained_and_keeps_every_evaluation(tiny_model_dir, data_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    import shutil

    work = tmp_path / "work"
    shutil.copytree(data_dir, work / "data")
    monkeypatch.chdir(work)
    assert invoke(*train_args(tiny_model_dir, Path("data"), Path("runs/a"), "--steps", "1")).exit_code == 0
    run_path = work / "runs" / "a"
    spec = RunDir.open(run_path).load_spec()
    assert Path(spec.data.path) == work / "data" and Path(spec.output) == run_path
    shutil.rmtree(work / "data")
    monkeypatch.chdir(tmp_path)

    quiet = Console(quiet=True)
    first = evaluate_run(run_path, EvalOptions(tasks=[]), console=quiet)
    second = evaluate_run(run_path, EvalOptions(tasks=[], limit=1), console=quiet)
    assert set(first["perplexity"]) == {"forget", "retain"}
    assert first["perplexity_texts"]["forget"] > 1 and second["perplexity_texts"] == {"forget": 1, "retain": 1}
    stored = json.loads((run_path / "eval" / "results.json").read_text())["evaluations"]
    assert [entry["made"]["limit"] for entry in stored] == [None, 1]
    assert stored[0]["made"]["versions"]["torch"] == torch.__version__


def test_resuming_a_finished_run_changes_nothing_and_a_longer_resume_keeps_the_card_results(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    run_path = tmp_path / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1")).exit_code == 0
    api.evaluate(run_path, tasks=[], console=Console(quiet=True))
    files = {p: p.read_bytes() for p in sorted(run_path.rglob("*")) if p.is_file() and p.name != ".lock"}
    again = invoke("train", "--resume", str(run_path))
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    assert {p: p.read_bytes() for p in sorted(run_path.rglob("*")) if p.is_file() and p.name != ".lock"} == files
    assert "perplexity.retain" in (run_path / "model" / "README.md").read_text()
    longer = invoke("train", "--resume", str(run_path), "--steps", "2")
    assert longer.exit_code == 0, longer.output
    assert "perplexity.retain" in (run_path / "model" / "README.md").read_text()  # rebuilt from eval/results.json


def test_a_moved_run_with_moved_data_resumes_with_data(tiny_model_dir, data_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    first = tmp_path / "first"
    assert invoke(*train_args(tiny_model_dir, data, first, "--steps", "1")).exit_code == 0
    moved, moved_data = tmp_path / "elsewhere" / "run", tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    first.rename(moved)
    data.rename(moved_data)
    lost = invoke("train", "--resume", str(moved), "--steps", "2")
    assert lost.exit_code == 2 and "resume with `--data NEW_PLACE`" in lost.output
    other = tmp_path / "other"
    shutil.copytree(moved_data, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["created"] = "2020-01-01T00:00:00+00:00"
    (other / "manifest.json").write_text(json.dumps(manifest))
    refused = invoke("train", "--resume", str(moved), "--steps", "2", "--data", str(other))
    assert refused.exit_code == 2 and "is not the data" in refused.output
    monkeypatch.chdir(moved.parent)
    resumed = invoke("train", "--resume", "run", "--steps", "2", "--data", "data")
    assert resumed.exit_code == 0, resumed.output
    spec = RunDir(moved).load_spec()
    assert spec.output == moved.resolve() and Path(spec.data.path) == moved_data.resolve()
    assert "output: " + str(moved.resolve()) in (moved / "spec.yaml").read_text()
    assert list(RunDir(moved).read_metrics()["step"]) == [1, 2]


def test_evaluate_cleans_what_a_killed_evaluate_left_in_model(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    run_path = tmp_path / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1")).exit_code == 0
    leftover = run_path / "model" / ".README.md.k1ll3d.tmp"
    leftover.write_text("half a card")
    api.evaluate(run_path, tasks=[], console=Console(quiet=True))
    assert not leftover.exists() and (run_path / "model" / "README.md").is_file()
