"""The spine end to end on a tiny model: prepare -> train -> run directory -> consumers, and recovery."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import prepare_unlearning
from safetensors.torch import load_file
from typer.testing import CliRunner

from sift_cli.cli import app
from sift_cli.store.rundir import RunDir

TRAINABLE = r"layers\.(0|1)\.mlp\.down_proj"
FORGET = [f"Pathogen note {i}: the virus enters the cell, copies its genome and spreads to the next cell." for i in range(30)]
RETAIN = [f"Biology note {i}: the heart pumps blood through arteries and veins to every organ of the body." for i in range(30)]

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_unlearning(tmp_path_factory.mktemp("unlearning-data"), FORGET, RETAIN)


def train_args(model_dir: Path, data_dir: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", "--app", "unlearning", "--model", str(model_dir), "--data", str(data_dir), "--output", str(output),
        "--k", "4", "--lr", "0.02", "--set", "objective.layer=1", "--set", f"train.trainable={TRAINABLE}",
        "--set", "train.batch_size=2", "--set", "data.max_length=32", "--set", "objective.steering_coeff=20",
        *extra,
    ]  # fmt: skip


def test_train_writes_a_run_directory_that_later_commands_read(tiny_model_dir, data_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    run_path = tmp_path / "run"
    result = invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "3", "--set", "train.spectra_every=2"))
    assert result.exit_code == 0, result.output
    run = RunDir.open(run_path)

    spec = run.load_spec()
    assert (spec.train.steps, spec.optim.k, spec.objective["layer"]) == (3, 4, 1)
    env = run.read_env()
    assert env["torch"] == torch.__version__ and env["world_size"] == 1 and env["seed"] == spec.train.seed
    assert env["deterministic"] is False

    metrics = run.read_metrics()
    assert list(metrics["step"]) == [1, 2, 3]
    assert metrics[["loss_f", "loss_g", "seconds", "optimizer_seconds"]].notna().all().all()
    assert (metrics["n_blocks"] == 2).all()

    alignment = run.read_alignment()
    assert len(alignment) == 3 * 2
    assert set(alignment["layer"]) == {0, 1} and set(alignment["component"]) == {"down"}
    assert alignment["tau"].between(-1, 1).all()
    fired = alignment[alignment["branch"] == "sift"].groupby("step").size().reindex([1, 2, 3], fill_value=0)
    assert list(fired) == list(metrics["n_sift"])
    sift = alignment["branch"] == "sift"
    assert alignment.loc[sift, "subspace_error"].between(0, spec.optim.subspace_tol).all()
    assert alignment.loc[~sift, "subspace_error"].isna().all()
    assert set(run.read_spectra()["step"]) == {2}

    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-0000003.pt"]
    trained = AutoModelForCausalLM.from_pretrained(run.model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for (name, after), (_, before) in zip(trained.named_parameters(), base.named_parameters()):
        changed = not torch.equal(after, before)
        assert changed == bool(re.search(TRAINABLE, name)), name

    plots = invoke("localize", str(run_path))
    assert plots.exit_code == 0, plots.output
    assert any(run.plots_dir.glob("*.png"))


def test_dry_run_prints_routing_and_memory_without_training(tiny_model_dir, data_dir, tmp_path) -> None:
    result = invoke(*train_args(tiny_model_dir, data_dir, tmp_path / "dry", "--dry-run"))
    assert result.exit_code == 0, result.output
    assert "model.layers.1.mlp.down_proj.weight" in result.output
    assert "spectral" in result.output and "frozen" in result.output
    assert "memory per device" in result.output and "activations (one micro-batch)" in result.output
    assert not (tmp_path / "dry").exists()
    fits = invoke(*train_args(tiny_model_dir, data_dir, tmp_path / "dry", "--dry-run", "--gpu-memory", "80GiB"))
    assert "fits one 80GiB GPU" in fits.output
    tight = invoke(*train_args(tiny_model_dir, data_dir, tmp_path / "dry", "--dry-run", "--gpu-memory", "1MiB"))
    assert "does not fit one 1MiB GPU" in tight.output and "optim.momentum_dtype=bfloat16" in tight.output


def test_k_larger_than_a_block_is_refused_before_training(tiny_model_dir, data_dir, tmp_path) -> None:
    result = invoke(*train_args(tiny_model_dir, data_dir, tmp_path / "bigk", "--k", "500", "--dry-run"))
    assert result.exit_code == 2
    assert "optim.k=500 is larger than block" in result.output


def test_an_existing_run_is_never_overwritten(tiny_model_dir, data_dir, tmp_path) -> None:
    run_path = tmp_path / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1")).exit_code == 0
    before = (run_path / "metrics.jsonl").read_text()
    result = invoke(*train_args(tiny_model_dir, data_dir, run_path, "--steps", "1"))
    assert result.exit_code == 2
    assert "already holds a run" in result.output and "--resume" in result.output
    assert (run_path / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "cannot"),
        (["--data", "/no/such/data"], "no prepared data at /no/such/data"),
        (["--set", "optim.eps=0.1"], "never marks a conflict"),
        (["--set", "train.batchsize=2"], "unknown spec key 'train.batchsize'"),
    ],
)
def test_bad_training_input_is_one_line_and_exit_2(tiny_model_dir, data_dir, tmp_path, args, message) -> None:
    result = invoke(*train_args(tiny_model_dir, data_dir, tmp_path / "bad", "--steps", "1"), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.strip().count("\n") == 0
    assert "Traceback" not in result.output


def test_data_prepared_for_another_app_is_refused(tiny_model_dir, data_dir, tmp_path) -> None:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({**manifest, "app": "safety"}))
    result = invoke(*train_args(tiny_model_dir, other, tmp_path / "x", "--steps", "1"))
    assert result.exit_code == 2
    assert "was prepared for 'safety', not 'unlearning'" in result.output


def test_commands_on_something_that_is_not_a_run_directory(tmp_path) -> None:
    for args in (["train", "--resume", str(tmp_path)], ["evaluate", str(tmp_path)], ["localize", str(tmp_path)]):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert "is not a run directory" in result.output


KILLER = """
import os, signal, sys
from sift_cli.training.trainer import Trainer
from sift_cli.cli import main

stop_at, how = int(os.environ["SIFT_TEST_STOP_AT"]), os.environ["SIFT_TEST_HOW"]
save = Trainer.save_checkpoint
step = Trainer.train_step

def save_then_die(self):
    save(self)
    if how == "kill" and self.step == stop_at:
        os.kill(os.getpid(), signal.SIGKILL)

def step_then_interrupt(self):
    out = step(self)
    if how in ("int", "term") and self.step == stop_at:
        os.kill(os.getpid(), signal.SIGINT if how == "int" else signal.SIGTERM)
    return out

Trainer.save_checkpoint = save_then_die
Trainer.train_step = step_then_interrupt
sys.argv = ["sift", *sys.argv[1:]]
main()
"""


def run_cli_process(args: list[str], how: str = "none", stop_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "SIFT_TEST_STOP_AT": str(stop_at), "SIFT_TEST_HOW": how}
    return subprocess.run([sys.executable, "-c", KILLER, *args], env=env, capture_output=True, text=True, timeout=300)


def weights(run_path: Path) -> dict[str, torch.Tensor]:
    return load_file(run_path / "model" / "model.safetensors")


def test_sigkill_then_resume_continues_bit_exactly(tiny_model_dir, data_dir, tmp_path) -> None:
    """The fast resume check CI runs: one killed process, one resumed process, a straight run in-process."""
    common = ["--steps", "3", "--set", "train.checkpoint_every=1"]
    straight = tmp_path / "straight"
    assert invoke(*train_args(tiny_model_dir, data_dir, straight, *common)).exit_code == 0
    killed = tmp_path / "killed"
    first = run_cli_process(train_args(tiny_model_dir, data_dir, killed, *common), how="kill", stop_at=2)
    assert first.returncode == -9
    resumed = run_cli_process(["train", "--resume", str(killed)])
    assert resumed.returncode == 0, resumed.stderr
    expected, got = weights(straight), weights(killed)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert list(RunDir(killed).read_metrics()["step"]) == [1, 2, 3]


@pytest.mark.slow
def test_sigkill_then_resume_gives_bit_identical_weights(tiny_model_dir, data_dir, tmp_path) -> None:
    """bf16 weights with their fp32 master (split across the checkpoint's weights and optimizer state),
    deterministic algorithms on: the resumed run ends bit for bit where the straight one does."""
    common = ["--steps", "6", "--set", "train.checkpoint_every=2", "--set", "train.grad_accum=2",
              "--set", "model.dtype=bfloat16", "--set", "train.deterministic=true"]  # fmt: skip
    straight = tmp_path / "straight"
    assert run_cli_process(train_args(tiny_model_dir, data_dir, straight, *common)).returncode == 0

    killed = tmp_path / "killed"
    first = run_cli_process(train_args(tiny_model_dir, data_dir, killed, *common), how="kill", stop_at=4)
    assert first.returncode == -9
    assert not (killed / "model").exists()
    resumed = run_cli_process(["train", "--resume", str(killed)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-0000004.pt" in resumed.stdout

    expected, got = weights(straight), weights(killed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert list(RunDir(killed).read_metrics()["step"]) == list(range(1, 7))
    assert RunDir(killed).read_metrics()["loss_f"].tolist() == RunDir(straight).read_metrics()["loss_f"].tolist()
    assert RunDir(killed).read_env()["deterministic"] is True


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_resume_finishes(tiny_model_dir, data_dir, tmp_path) -> None:
    run_path = tmp_path / "interrupted"
    args = train_args(tiny_model_dir, data_dir, run_path, "--steps", "5", "--set", "train.checkpoint_every=10")
    first = run_cli_process(args, how="int", stop_at=3)
    assert first.returncode == 130
    assert "stopped by SIGINT at step 3" in first.stderr and "--resume" in first.stderr
    assert sorted(p.name for p in (run_path / "checkpoints").iterdir()) == ["step-0000003.pt"]
    assert run_cli_process(["train", "--resume", str(run_path)]).returncode == 0
    assert list(RunDir(run_path).read_metrics()["step"]) == [1, 2, 3, 4, 5]


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_resume_is_exact(tiny_model_dir, data_dir, tmp_path) -> None:
    """What `timeout`, Kubernetes and SLURM send before SIGKILL: the step in flight ends, a checkpoint is
    written, one line says so, exit 143; the resumed run ends where an uninterrupted one does."""
    common = ["--steps", "4", "--set", "train.checkpoint_every=10"]
    straight = tmp_path / "straight"
    assert invoke(*train_args(tiny_model_dir, data_dir, straight, *common)).exit_code == 0
    stopped = tmp_path / "stopped"
    first = run_cli_process(train_args(tiny_model_dir, data_dir, stopped, *common), how="term", stop_at=2)
    assert first.returncode == 143, first.stderr
    assert [line for line in first.stderr.splitlines() if line.strip()] == [
        f"error: stopped by SIGTERM at step 2; checkpoint written, continue with `sift train --resume {stopped.resolve()}`"
    ]
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["step-0000002.pt"]
    assert run_cli_process(["train", "--resume", str(stopped)]).returncode == 0
    expected, got = weights(straight), weights(stopped)
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_a_full_disk_is_one_line_and_the_run_resumes_exactly(tiny_model_dir, data_dir, tmp_path) -> None:
    """A file-size limit (RLIMIT_FSIZE in the child, what a full disk looks like to one writer) stops the
    first checkpoint: one line that says so, exit 2, nothing half-written; with room again the run
    resumes from the start and ends where an uninterrupted one does."""
    import resource

    common = ["--steps", "2", "--set", "train.checkpoint_every=1"]
    straight = tmp_path / "straight"
    assert invoke(*train_args(tiny_model_dir, data_dir, straight, *common)).exit_code == 0
    full = tmp_path / "full"
    limit = 60_000  # the run's small files fit, a checkpoint does not

    def lower_the_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    first = subprocess.run([sys.executable, "-m", "sift_cli.cli", *train_args(tiny_model_dir, data_dir, full, *common)],
                           preexec_fn=lower_the_limit, capture_output=True, text=True, timeout=300)  # fmt: skip
    errors = [line for line in first.stderr.splitlines() if line.strip()]
    assert first.returncode == 2 and len(errors) == 1, first.stderr[-2000:]
    assert "step-0000001.pt: the disk is full or a file-size limit was reached" in errors[0]
    assert list((full / "checkpoints").iterdir()) == [] and not [p for p in full.rglob("*.tmp")]
    resumed = run_cli_process(["train", "--resume", str(full)])
    assert resumed.returncode == 0, resumed.stderr
    expected, got = weights(straight), weights(full)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert list(RunDir(full).read_metrics()["step"]) == [1, 2]


def test_prepare_on_a_full_disk_is_one_line_and_keeps_nothing(tmp_path) -> None:
    import resource

    rows = "".join(json.dumps({"text": f"{text} Note {i} adds enough words to pass the length filter."}) + "\n"
                   for i, text in enumerate(FORGET + RETAIN))  # fmt: skip
    (tmp_path / "texts.jsonl").write_text(rows)

    def lower_the_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    args = ["prepare", "unlearning", "--forget", str(tmp_path / "texts.jsonl"), "--retain", str(tmp_path / "texts.jsonl"), "-o", str(tmp_path / "out")]
    done = subprocess.run([sys.executable, "-m", "sift_cli.cli", *args], preexec_fn=lower_the_limit, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1 and "the disk is full or a file-size limit was reached" in errors[0], done.stderr
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["texts.jsonl"]


def test_a_diverging_run_stops_clearly_and_keeps_its_last_checkpoint(tiny_model_dir, data_dir, tmp_path) -> None:
    run_path = tmp_path / "diverged"
    args = train_args(tiny_model_dir, data_dir, run_path, "--steps", "6", "--method", "adamw", "--lr", "1e36")
    result = invoke(*args, "--set", "train.checkpoint_every=1")
    assert result.exit_code == 2
    assert "non-finite" in result.output or "became" in result.output
    assert "last good checkpoint" in result.output
    checkpoints = sorted((run_path / "checkpoints").glob("*.pt"))
    state = torch.load(checkpoints[-1], weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["weights"].values())


def test_a_corrupt_jsonl_line_is_named_with_its_number(tmp_path) -> None:
    forget = tmp_path / "forget.jsonl"
    forget.write_text(json.dumps({"text": FORGET[0]}) + "\n" + '{"text": "cut off\n')
    retain = tmp_path / "retain.jsonl"
    retain.write_text(json.dumps({"text": RETAIN[0]}) + "\n")
    result = invoke("prepare", "unlearning", "--forget", str(forget), "--retain", str(retain), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert f"{forget}:2: not valid JSON" in result.output
    assert result.output.strip().count("\n") == 0
    assert not (tmp_path / "out" / "manifest.json").exists()
