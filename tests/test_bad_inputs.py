"""Every bad input is one line and exit 2, with no traceback and nothing changed on disk.

The cases are the ones a hostile but fair user tried (issue 14). Each builds what it needs in its own
directory, then runs one command; the test compares every file under the test's directory (and the
shared run and data) before and after.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from test_train import data_dir, invoke, train_args  # noqa: F401  (data_dir is a fixture)

from sift_cli.apps.hallucination import ragtruth
from sift_cli.store.prepared import file_sha256


@dataclass
class World:
    model: Path
    data: Path
    run: Path
    tmp: Path


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, data_dir, tmp_path_factory) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("finished") / "run"
    assert invoke(*train_args(tiny_model_dir, data_dir, run, "--steps", "1")).exit_code == 0
    return run


def train(world: World, *extra: str, output: Path | None = None) -> list[str]:
    return train_args(world.model, world.data, output or world.tmp / "new-run", "--steps", "1", *extra)


def a_file(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def texts(path: Path) -> Path:
    rows = [{"text": f"Row {i} is a sentence long enough to pass the default minimum length filter."} for i in range(12)]
    return a_file(path, "".join(json.dumps(row) + "\n" for row in rows).encode())


def prepared_copy(world: World, edit: Callable[[Path, dict], None]) -> Path:
    """A copy of the shared prepared data whose manifest `edit` changes."""
    target = world.tmp / "data"
    shutil.copytree(world.data, target)
    manifest = json.loads((target / "manifest.json").read_text())
    edit(target, manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def without_files(target: Path, manifest: dict) -> None:
    del manifest["files"]


def other_apps_tables(target: Path, manifest: dict) -> None:
    manifest["files"] = {"sft": "forget.jsonl", "dpo": "retain.jsonl"}
    for key, table in (("sha256", "forget"), ("sha256", "retain"), ("counts", "forget"), ("counts", "retain")):
        manifest[key][{"forget": "sft", "retain": "dpo"}[table]] = manifest[key][table]


def without_hash(target: Path, manifest: dict) -> None:
    del manifest["sha256"]["forget"]


def null_hash(target: Path, manifest: dict) -> None:
    manifest["sha256"]["forget"] = None


def wrong_count(target: Path, manifest: dict) -> None:
    manifest["counts"]["forget"] += 1


def text_not_a_string(target: Path, manifest: dict) -> None:
    (target / "forget.jsonl").write_text(json.dumps({"text": 5}) + "\n")
    manifest["sha256"]["forget"] = file_sha256(target / "forget.jsonl")
    manifest["counts"]["forget"] = 1


def outside(target: Path, manifest: dict) -> None:
    manifest["files"]["forget"] = "../../x.jsonl"


def row_without_text(target: Path, manifest: dict) -> None:
    (target / "forget.jsonl").write_text(json.dumps({"content": "no text field"}) + "\n")
    manifest["sha256"]["forget"] = file_sha256(target / "forget.jsonl")
    manifest["counts"]["forget"] = 1


def grown_table(target: Path, manifest: dict) -> None:
    with open(target / "forget.jsonl", "a") as fh:
        fh.write(json.dumps({"text": "a row the filters removed"}) + "\n")


def run_copy(world: World, edit: Callable[[str], str]) -> Path:
    target = world.tmp / "run"
    shutil.copytree(world.run, target)
    (target / "spec.yaml").write_text(edit((target / "spec.yaml").read_text()))
    return target


def run_with_file(world: World, name: str, content: bytes) -> Path:
    target = world.tmp / "run"
    shutil.copytree(world.run, target)
    (target / name).write_bytes(content)
    return target


HELD: list[int] = []
"""Locks a case holds as "another sift process" would (flock is per open file, so this process's own
commands conflict with them); released after each case."""


def held(directory: Path, parent: bool = False) -> Path:
    """`directory`, created, with its lock (or, for prepare, its parent's) held by pid 12345."""
    directory.mkdir(parents=True, exist_ok=True)
    if parent:
        fd = os.open(directory.parent, os.O_RDONLY)
    else:
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT)
        os.pwrite(fd, b"12345\n", 0)
    fcntl.flock(fd, fcntl.LOCK_EX)
    HELD.append(fd)
    return directory


@pytest.fixture(autouse=True)
def release_held_locks():
    yield
    while HELD:
        os.close(HELD.pop())


def dangling(world: World) -> Path:
    link = world.tmp / "link"
    link.symlink_to(world.tmp / "nowhere" / "target")
    return link


def busy_run(world: World) -> Path:
    target = world.tmp / "run"
    shutil.copytree(world.run, target)
    return held(target)


def ragtruth_dir(world: World, labels: list, responses: int = 1) -> Path:
    response = "The capital of Zorbia is Paris today ."
    rows = [{"id": "r1", "source_id": "s1", "model": "m", "labels": labels, "split": "train", "quality": "good",
             "response": response}][:responses]  # fmt: skip
    source = {"source_id": "s1", "task_type": "QA", "source_info": {"question": "q", "passages": "p"}, "prompt": "Q"}
    directory = world.tmp / "ragtruth"
    a_file(directory / ragtruth.RESPONSE_FILE, "".join(json.dumps(r) + "\n" for r in rows).encode())
    a_file(directory / ragtruth.SOURCE_FILE, (json.dumps(source) + "\n").encode())
    return directory


def prepare_hallucination(world: World, directory: Path) -> list[str]:
    return ["prepare", "hallucination", "--source", str(directory), "-o", str(world.tmp / "prepared")]


CASES: list[tuple[str, Callable[[World], list[str]], str]] = [
    ("non-UTF-8 YAML config", lambda w: ["train", "--config", str(a_file(w.tmp / "spec.yaml", b"app: \xff\xfe\n"))], "is not UTF-8 text"),
    ("non-UTF-8 jsonl", lambda w: ["prepare", "unlearning", "--forget", str(a_file(w.tmp / "f.jsonl", b'{"text": "\xff"}\n')),
                                   "--retain", str(texts(w.tmp / "r.jsonl")), "-o", str(w.tmp / "out")], "f.jsonl:1: not UTF-8 text"),
    ("invalid train.trainable regex", lambda w: train(w, "--set", "train.trainable=layers\\.(0"), "is not a valid regular expression"),
    ("invalid optim.sift_regex", lambda w: train(w, "--set", "optim.sift_regex=(["), "optim.sift_regex"),
    ("seed >= 2^64", lambda w: train(w, "--set", "train.seed=18446744073709551616"), "train.seed"),
    ("train.device=banana", lambda w: train(w, "--set", "train.device=banana"), "is not a device"),
    ("lr=.inf", lambda w: train(w, "--set", "optim.lr=.inf"), "optim.lr"),
    ("unknown app", lambda w: ["train", "--app", "foo"], "choose one of: unlearning"),
    ("train --output a file", lambda w: train(w, output=a_file(w.tmp / "file")), "is a file"),
    ("train --output under a file", lambda w: train(w, output=a_file(w.tmp / "file") / "run"), "not a writable directory"),
    ("train --output holding other files", lambda w: train(w, output=a_file(w.tmp / "mine" / "metrics.jsonl").parent), "not a sift run"),
    ("prepare --output a file", lambda w: ["prepare", "unlearning", "--forget", str(texts(w.tmp / "f.jsonl")), "--retain",
                                           str(texts(w.tmp / "r.jsonl")), "-o", str(a_file(w.tmp / "out"))], "is a file"),
    ("prepare --output over its inputs", lambda w: ["prepare", "unlearning", "--forget", str(texts(w.tmp / "f.jsonl")), "--retain",
                                                    str(texts(w.tmp / "r.jsonl")), "-o", str(w.tmp)], "would replace the input"),
    ("speech --output equal to --source", lambda w: ["prepare", "speech", "--dataset", "cose", "--source", str(texts(w.tmp / "src" / "train.jsonl").parent),
                                                     "-o", str(w.tmp / "src")], "would replace the input"),
    ("localize --output a file", lambda w: ["localize", str(w.run), "--output", str(a_file(w.tmp / "plots"))], "is a file"),
    ("manifest without files", lambda w: train(w, "--data", str(prepared_copy(w, without_files))), "no 'files' mapping"),
    ("manifest naming another app's tables", lambda w: train(w, "--data", str(prepared_copy(w, other_apps_tables))), "names no 'forget' table"),
    ("manifest path outside the directory", lambda w: train(w, "--data", str(prepared_copy(w, outside))), "points outside"),
    ("table changed after prepare", lambda w: train(w, "--data", str(prepared_copy(w, grown_table))), "changed since it was prepared"),
    ("row without text", lambda w: train(w, "--data", str(prepared_copy(w, row_without_text))), "row lacks 'text'"),
    ("malformed run spec.yaml", lambda w: ["train", "--resume", str(run_copy(w, lambda text: "app: [unclosed\n"))], "cannot be read"),
    ("changed trainable on resume", lambda w: ["train", "--resume", str(run_copy(w, lambda text: text.replace(
        "mlp\\.down_proj", "mlp\\.(down|up)_proj"))), "--steps", "2"], "holds no state for"),
    ("resume with a fixed setting", lambda w: ["train", "--resume", str(w.run), "--method", "muon"], "takes only --steps, --lr, --data and --dry-run"),
    ("resume with --steps 0", lambda w: ["train", "--resume", str(w.run), "--steps", "0"], "train.steps"),
    ("RAGTruth label not an object", lambda w: prepare_hallucination(w, ragtruth_dir(w, ["Paris"])), "is a str, not an object"),
    ("RAGTruth string offsets", lambda w: prepare_hallucination(w, ragtruth_dir(w, [{"start": "25", "end": "30"}])), "offsets must be integers"),
    ("RAGTruth text off its offsets", lambda w: prepare_hallucination(w, ragtruth_dir(w, [{"start": 25, "end": 30, "text": "Rome"}])), "is not at [25, 30)"),
    ("RAGTruth empty response file", lambda w: prepare_hallucination(w, ragtruth_dir(w, [], responses=0)), "holds no responses"),
    ("evaluate --limit 0", lambda w: ["evaluate", str(w.run), "--limit", "0", "--tasks", ""], "evaluates nothing"),
    ("evaluate --limit -3", lambda w: ["evaluate", str(w.run), "--limit", "-3"], "evaluates nothing"),
    ("evaluate --batch-size 0", lambda w: ["evaluate", str(w.run), "--batch-size", "0"], "must be at least 1"),
    ("evaluate a missing task file", lambda w: ["evaluate", str(w.run), "--tasks", str(w.tmp / "none.jsonl")], "does not exist"),
    ("bench engine --k 0", lambda w: ["bench", "engine", "--k", "0"], "must be at least 1"),
    ("manifest without a table's hash", lambda w: train(w, "--data", str(prepared_copy(w, without_hash))), "records no SHA-256"),
    ("manifest with a null hash", lambda w: train(w, "--data", str(prepared_copy(w, null_hash))), "records no SHA-256"),
    ("manifest with a wrong count", lambda w: train(w, "--data", str(prepared_copy(w, wrong_count))), "but the manifest says"),
    ("row whose text is a number", lambda w: train(w, "--data", str(prepared_copy(w, text_not_a_string))), "'text' is int, not text"),
    ("localize a non-UTF-8 alignment log", lambda w: ["localize", str(run_with_file(w, "alignment.csv", b"step,block\n\xff\xfe,x\n"))],
     "is not UTF-8 text"),
    ("localize an alignment log of other columns", lambda w: ["localize", str(run_with_file(w, "alignment.csv", b"a,b\n1,2\n"))],
     "not a sift alignment log"),
    ("train into a run another process is writing", lambda w: train(w, output=held(w.tmp / "busy")), "in use by another sift process (pid 12345)"),
    ("resume a run another process is writing", lambda w: ["train", "--resume", str(busy_run(w))], "in use by another sift process (pid 12345)"),
    ("pome of a run another process is writing", lambda w: ["pome", str(busy_run(w)), "-o", str(w.tmp / "p")], "before you edit it with POME"),
    ("evaluate a run another process is writing", lambda w: ["evaluate", str(busy_run(w)), "--tasks", ""], "before you evaluate it"),
    ("compare into a busy comparison", lambda w: ["compare", "--app", "unlearning", "--set", f"data.path={w.data}", "--method", "muon=1e-2",
                                                  "-o", str(held(w.tmp / "cmp"))], "before you compare into it"),
    ("prepare while another prepare writes there", lambda w: ["prepare", "unlearning", "--forget", str(texts(w.tmp / "in" / "f.jsonl")),
                                                              "--retain", str(texts(w.tmp / "in" / "r.jsonl")),
                                                              "-o", str(held(w.tmp / "out", parent=True))], "another sift prepare is writing"),
    ("train --output a dangling symlink", lambda w: train(w, output=dangling(w)), "is a symbolic link"),
    ("localize --output a dangling symlink", lambda w: ["localize", str(w.run), "-o", str(dangling(w))], "is a symbolic link"),
    ("prepare --output a dangling symlink", lambda w: ["prepare", "unlearning", "--forget", str(texts(w.tmp / "f.jsonl")), "--retain",
                                                       str(texts(w.tmp / "r.jsonl")), "-o", str(dangling(w))], "is a symbolic link"),
    ("localize --output inside a run", lambda w: ["localize", str(w.run), "-o", str(w.run / "model")], "is inside the run"),
    ("pome --output inside a run", lambda w: ["pome", str(w.run), "-o", str(w.run / "pome")], "is inside the run"),
    ("compare --output inside a run", lambda w: ["compare", "--app", "unlearning", "--set", f"data.path={w.data}", "--method", "muon=1e-2",
                                                 "-o", str(w.run / "cmp")], "is inside the run"),
    ("--gpu-memory without --dry-run", lambda w: train(w, "--gpu-memory", "80GiB"), "only sizes a --dry-run"),
    ("a bad --gpu-memory, before the plan", lambda w: train(w, "--dry-run", "--gpu-memory", "lots"), "expected a size such as 80GiB"),
    ("prepare safety with a missing local Alpaca file, offline", lambda w: ["prepare", "safety", "--alpaca", str(w.tmp / "none.jsonl"),
                                                                          "-o", str(w.tmp / "out")], "none.jsonl does not exist and is not one of the hub sources"),
    ("compare refused after it started", lambda w: ["compare", "--app", "unlearning", "--set", f"data.path={w.data}", "--method", "muon=1e-2",
                                                    "-o", str(w.tmp / "cmp")], "independent clusters"),
    ("duplicate YAML keys", lambda w: ["train", "--config", str(a_file(w.tmp / "spec.yaml", b"app: unlearning\napp: safety\n"))],
     "key 'app' is given twice"),
    ("steps: true", lambda w: train(w, "--set", "train.steps=true"), "expected an integer (got true)"),
    ("a float for an integer", lambda w: train(w, "--set", "optim.k=4.0"), "expected an integer (got 4.0)"),
    ("a number for a boolean", lambda w: train(w, "--set", "train.deterministic=1"), "expected true or false"),
    ("steps beyond 1e9", lambda w: train(w, "--set", "train.steps=1000000000000000000000000000000"), "less than or equal to 1000000000"),
    ("pome --scale nan", lambda w: ["pome", str(w.run), "-o", str(w.tmp / "p"), "--scale", "nan"], "positive finite number"),
    ("pome --scale -1", lambda w: ["pome", str(w.run), "-o", str(w.tmp / "p"), "--scale", "-1"], "positive finite number"),
    ("pome --scale inf", lambda w: ["pome", str(w.run), "-o", str(w.tmp / "p"), "--scale", "inf"], "positive finite number"),
    ("bench precision --lr nan", lambda w: ["bench", "precision", "--lr", "nan"], "positive finite number"),
    ("bench precision --steps 0", lambda w: ["bench", "precision", "--steps", "0"], "must be at least 1"),
    ("bench train --steps 0", lambda w: ["bench", "train", "--steps", "0"], "must be at least 1"),
    ("bench toy --steps 0", lambda w: ["bench", "toy", "--steps", "0"], "must be at least 4"),
    ("bench toy --steps -1", lambda w: ["bench", "toy", "--steps", "-1"], "must be at least 4"),
    ("bench distributed --processes 100000", lambda w: ["bench", "distributed", "--processes", "100000"], "CPU cores"),
    ("bench engine --tol 2", lambda w: ["bench", "engine", "--tol", "2"], "between 0 and 1"),
    ("bench engine --device tpu", lambda w: ["bench", "engine", "--device", "tpu"], "is not a device"),
]  # fmt: skip


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file's bytes, except `.lock` (it names the last process that held the run, not run data)."""
    return {str(p): p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize(("setup", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tiny_model_dir, data_dir, finished_run, tmp_path, setup, message) -> None:  # noqa: F811
    world = World(model=tiny_model_dir, data=data_dir, run=finished_run, tmp=tmp_path)
    args = setup(world)
    before = snapshot(tmp_path, data_dir, finished_run)
    result = invoke(*args)
    lines = [line for line in result.output.splitlines() if line.strip() and "Loading weights" not in line]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert snapshot(tmp_path, data_dir, finished_run) == before


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--app", "unlearning", "--steps", "abc"], "error: Invalid value for '--steps'"),
    (["train", "--bogus"], "error: No such option: --bogus; see `sift train --help`"),
    (["nosuch"], "error: No such command 'nosuch'; see `sift --help`"),
])  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(args, message) -> None:
    """What the `sift` executable prints (the in-process runner above bypasses its entry point)."""
    done = subprocess.run([sys.executable, "-m", "sift_cli.cli", *args], capture_output=True, text=True, timeout=120)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), done.stdout + done.stderr


def test_a_compare_refused_after_it_started_leaves_no_trace(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    """A comparison refused after it claimed its directory (the test data's held-out examples are too
    few to split, found while the examples are built) takes the directory back, so the corrected
    command is not told that it holds another comparison."""
    args = ["compare", "--app", "unlearning", "--set", f"data.path={data_dir}", "--method", "muon=1e-2", "-o", str(tmp_path / "cmp")]
    assert invoke(*args).exit_code == 2
    assert not (tmp_path / "cmp").exists()


def test_a_file_system_refusal_no_module_foresaw_is_one_line(finished_run, tmp_path, monkeypatch) -> None:
    """The CLI's boundary: an OSError from anywhere (here a read-only plots directory, which root
    cannot simulate with permissions) becomes one line naming the path and the cause, exit 2."""
    import errno

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(finished_run / "plots"))

    monkeypatch.setattr("sift_cli.localize.write_run", refuse)
    result = invoke("localize", str(finished_run))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0] == f"error: cannot write {finished_run / 'plots'} (Permission denied); make it writable or pass another --output"
