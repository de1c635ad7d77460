"""`sift train` under torchrun on CPU (gloo, 2 processes): the same run as one process on the same
global batch, an exact resume after a rank is killed, and bad launches refused on every rank."""

from __future__ import annotations

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

pytestmark = pytest.mark.distributed

DRIVER = Path(__file__).with_name("distributed_driver.py")
TRAINABLE = r"layers\.(0|1)\.mlp\.down_proj"
# Every text is longer than data.max_length tokens, so every sequence is cut to exactly max_length:
# the mean loss of two half batches then equals the mean loss of the whole batch.
FORGET = [f"Pathogen note {i}: the virus enters the cell, copies its genome and spreads to the next cell and the one after it." for i in range(24)]
RETAIN = [f"Biology note {i}: the heart pumps blood through arteries and veins to every organ of the body, day and night." for i in range(24)]
TIMEOUT = 240

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_unlearning(tmp_path_factory.mktemp("distributed-data"), FORGET, RETAIN)


def train_args(model_dir: Path, data_dir: Path, output: Path, batch: int, *extra: str) -> list[str]:
    return [
        "train", "--app", "unlearning", "--model", str(model_dir), "--data", str(data_dir), "--output", str(output),
        "--k", "4", "--lr", "0.02", "--set", "objective.layer=1", "--set", f"train.trainable={TRAINABLE}",
        "--set", f"train.batch_size={batch}", "--set", "data.max_length=16", "--set", "objective.steering_coeff=20",
        "--set", "train.device=cpu", *extra,
    ]  # fmt: skip


def launch(args: list[str], processes: int = 2, kill_at: int = 0, term_at: int = 0) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N tests/distributed_driver.py ARGS`, one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIFT_TEST_KILL_AT": str(kill_at), "SIFT_TEST_TERM_AT": str(term_at)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", str(DRIVER), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def single_process(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """The driver without a launcher (torchrun reports any failing rank as its own exit code 1)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, str(DRIVER), *args], env=env, capture_output=True, text=True, timeout=TIMEOUT)


def weights(run_path: Path) -> dict[str, torch.Tensor]:
    return load_file(run_path / "model" / "model.safetensors")


def assert_close_weights(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for name in expected:
        error = (expected[name] - got[name]).norm() / expected[name].norm()
        assert error <= 1e-5, (name, float(error))


def one_process_run(model_dir: Path, data_dir: Path, output: Path, steps: int, batch: int, *extra: str) -> RunDir:
    result = runner.invoke(app, train_args(model_dir, data_dir, output, batch, "--steps", str(steps), *extra))
    assert result.exit_code == 0, result.output
    return RunDir(output)


@pytest.mark.parametrize(("parallel", "method"), [("ddp", "sift"), ("ddp", "blur"), ("fsdp2", "sift"), ("fsdp2", "blur")])
def test_two_processes_train_like_one_process_on_the_same_global_batch(tiny_model_dir, data_dir, tmp_path, parallel, method) -> None:
    """1 process at batch 4 against 2 processes at batch 1 with 2 micro-batches: the same 4 examples
    per step. Under DDP the first micro-batch's gradients stay local (no_sync)."""
    single = one_process_run(tiny_model_dir, data_dir, tmp_path / "one", 3, 4, "--method", method, "--set", "optim.eps=-0.05")
    result = launch(train_args(tiny_model_dir, data_dir, tmp_path / "two", 1, "--steps", "3", "--method", method,
                               "--set", "optim.eps=-0.05", "--set", "train.grad_accum=2", "--set", f"train.parallel={parallel}"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    double = RunDir(tmp_path / "two")
    assert_close_weights(weights(single.path), weights(double.path))
    assert double.read_env()["world_size"] == 2 and double.read_env()["parallel"] == parallel
    assert double.read_alignment()["branch"].tolist() == single.read_alignment()["branch"].tolist()
    if method == "sift":
        assert "sift" in set(double.read_alignment()["branch"])
    losses = double.read_metrics()[["loss_f", "loss_g"]].to_numpy()
    assert losses == pytest.approx(single.read_metrics()[["loss_f", "loss_g"]].to_numpy(), rel=1e-5)
    assert sorted(p.name for p in double.path.iterdir() if p.name.startswith(".")) == [".lock"]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_a_killed_two_process_run_resumes_bit_exactly(tiny_model_dir, data_dir, tmp_path, parallel) -> None:
    common = ["--steps", "3", "--set", "train.checkpoint_every=1", "--set", f"train.parallel={parallel}"]
    straight = tmp_path / "straight"
    assert launch(train_args(tiny_model_dir, data_dir, straight, 2, *common)).returncode == 0
    killed = tmp_path / "killed"
    first = launch(train_args(tiny_model_dir, data_dir, killed, 2, *common), kill_at=2)
    assert first.returncode != 0 and not (killed / "model").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir())[-1].startswith("step-0000002")
    resumed = launch(["train", "--resume", str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step-0000002" in resumed.stdout
    expected, got = weights(straight), weights(killed)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert RunDir(killed).read_metrics()["loss_g"].tolist() == RunDir(straight).read_metrics()["loss_g"].tolist()
    assert [event["processes"] for event in RunDir(killed).read_history()] == [2, 2]

    refused = single_process(["train", "--resume", str(killed), "--steps", "4"])
    assert refused.returncode == 2
    assert "written by 2 process(es) and this resume has 1" in refused.stderr


def rank_errors(result: subprocess.CompletedProcess) -> list[str]:
    """The `error:` lines the ranks printed (torchrun prefixes nothing: each rank writes its own line)."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_sigterm_to_the_launcher_stops_every_rank_at_one_checkpoint(tiny_model_dir, data_dir, tmp_path) -> None:
    """torchrun forwards SIGTERM to its workers: every rank finishes the step, they write one checkpoint
    together and each says so in one line; `--resume` under torchrun ends where a straight run does."""
    common = ["--steps", "4", "--set", "train.checkpoint_every=10"]
    straight = launch(train_args(tiny_model_dir, data_dir, tmp_path / "straight", 2, *common))
    assert straight.returncode == 0, straight.stderr[-2000:]
    stopped = tmp_path / "stopped"
    first = launch(train_args(tiny_model_dir, data_dir, stopped, 2, *common), term_at=2)
    lines = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    # the launcher forwards the signal a moment later: the ranks may finish one more step, together
    steps = {int(found) for found in re.findall(r"stopped by SIGTERM at step (\d+); checkpoint written", "\n".join(lines))}
    assert len(lines) == 2 and len(steps) == 1 and min(steps) >= 2, first.stderr[-2000:]
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == [f"step-{min(steps):07d}.pt"]
    resumed = launch(["train", "--resume", str(stopped)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = weights(tmp_path / "straight"), weights(stopped)
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_bad_launches_fail_in_one_line_with_exit_2_on_every_rank(tiny_model_dir, data_dir, tmp_path) -> None:
    existing = one_process_run(tiny_model_dir, data_dir, tmp_path / "existing", 1, 2)
    before = (existing.path / "metrics.jsonl").read_text()
    result = launch(train_args(tiny_model_dir, data_dir, existing.path, 2, "--steps", "1"))
    errors = rank_errors(result)
    assert len(errors) == 2 and all("already holds a run" in line for line in errors), result.stderr[-2000:]
    assert "exitcode  : 2" in result.stderr and "exitcode  : 1" not in result.stderr
    assert (existing.path / "metrics.jsonl").read_text() == before

    lone = single_process(train_args(tiny_model_dir, data_dir, tmp_path / "lone", 2, "--steps", "1"), WORLD_SIZE="2")
    assert lone.returncode == 2
    assert "says 2 processes (WORLD_SIZE=2) but this one runs alone" in lone.stderr
    assert not (tmp_path / "lone").exists()


def test_dry_run_prints_the_memory_of_each_rank(tiny_model_dir, data_dir, tmp_path) -> None:
    from sift_cli.memory import memory_estimate
    from sift_cli.spec import resolve_spec
    from sift_cli.training.plan import meta_model

    args = train_args(tiny_model_dir, data_dir, tmp_path / "dry", 2, "--dry-run", "--processes", "2", "--set", "train.parallel=fsdp2")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "(fsdp2)" in result.output and "one layer gathered (FSDP2)" in result.output
    assert not (tmp_path / "dry").exists()

    spec = resolve_spec(app="unlearning", assignments=[f"model.name={tiny_model_dir}", f"data.path={data_dir}", "train.parallel=fsdp2",
                                                       "objective.layer=1", f"train.trainable={TRAINABLE}"])  # fmt: skip
    one, two = memory_estimate(spec, meta_model(spec), 1).parts, memory_estimate(spec, meta_model(spec), 2).parts
    for part in ("weights", "gradients (f and g)", "optimizer: momenta"):
        assert two[part] <= one[part] / 2 + 1, part
    ddp = memory_estimate(spec.model_copy(update={"train": spec.train.model_copy(update={"parallel": "ddp"})}), meta_model(spec), 2).parts
    assert ddp["weights"] == one["weights"] and ddp["DDP gradient buckets"] == one["gradients (f and g)"] // 2


def test_sift_trainer_under_ddp_takes_the_step_of_one_process_with_the_whole_batch(tiny_model_dir, tmp_path) -> None:
    """Two ranks of batch 1 each average into the gradient one process takes on batch 2 (Trainer's
    launch, accelerate's DDP); rank 0 logs the losses averaged over ranks."""
    from safetensors.torch import load_file

    from sift_cli.store.rundir import RunDir

    trainer_driver = DRIVER.parent / "trainer_driver.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(trainer_driver), str(tiny_model_dir), str(tmp_path / "one"), "2"], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(trainer_driver),
                          str(tiny_model_dir), str(tmp_path / "two"), "1"], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    expected, got = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "two"))
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(expected[name], base[name]) for name in expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    losses = [RunDir(tmp_path / name).read_metrics()[["loss_f", "loss_g"]].to_numpy() for name in ("one", "two")]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-6)
