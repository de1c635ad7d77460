"""Prepared data is a transaction: staged and renamed into place, never over other files or its inputs,
checked against its manifest (row counts, hashes, paths inside the directory) when a run reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sift_cli.cli import app
from sift_cli.errors import SiftError
from sift_cli.store.prepared import file_sha256, load_prepared, write_prepared

runner = CliRunner()
TEXTS = [f"Note {i}: the virus enters the cell, copies its genome and spreads to the next cell." for i in range(12)]


def texts_file(path: Path, texts: list[str] = TEXTS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def prepare(forget: Path, retain: Path, output: Path, *extra: str):
    args = ["prepare", "unlearning", "--forget", str(forget), "--retain", str(retain), "-o", str(output), *extra]
    return runner.invoke(app, args, catch_exceptions=False)


def test_prepare_never_writes_over_its_inputs_or_other_files(tmp_path) -> None:
    forget, retain = texts_file(tmp_path / "d" / "forget.jsonl"), texts_file(tmp_path / "d" / "retain.jsonl")
    before = {p: p.read_bytes() for p in (forget, retain)}
    result = prepare(forget, retain, tmp_path / "d")
    assert result.exit_code == 2 and "would replace the input" in result.output
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    result = prepare(forget, retain, notes)
    assert result.exit_code == 2 and "holds files that are not prepared data (todo.txt)" in result.output
    assert {p: p.read_bytes() for p in (forget, retain)} == before
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]


def test_re_prepare_replaces_earlier_prepared_data_and_prints_what_it_dropped(tmp_path) -> None:
    forget = texts_file(tmp_path / "forget.jsonl", TEXTS + ["too short"])
    retain = texts_file(tmp_path / "retain.jsonl")
    out = tmp_path / "out"
    first = prepare(forget, retain, out)
    assert first.exit_code == 0, first.output
    assert "dropped 1 of 13 rows" in first.output
    second = prepare(forget, retain, out, "--max-rows", "5")
    assert second.exit_code == 0, second.output
    data = load_prepared(out, "unlearning")
    assert data.manifest["counts"]["forget"] + data.manifest["counts"]["forget_eval"] == 5
    assert sorted(p.name for p in out.iterdir()) == sorted([*data.manifest["files"].values(), "manifest.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


KILL_AFTER_FIRST_TABLE = """
import os, signal, sys
from sift_cli.store import prepared
from sift_cli.cli import main

write = prepared.write_jsonl
def write_then_die(path, rows):
    write(path, rows)
    os.kill(os.getpid(), signal.SIGKILL)

prepared.write_jsonl = write_then_die
sys.argv = ["sift", *sys.argv[1:]]
main()
"""


def test_an_interrupted_re_prepare_leaves_the_earlier_data_whole_and_its_leftovers_go_next_time(tmp_path) -> None:
    forget, retain = texts_file(tmp_path / "forget.jsonl"), texts_file(tmp_path / "retain.jsonl")
    out = tmp_path / "out"
    assert prepare(forget, retain, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = ["prepare", "unlearning", "--forget", str(forget), "--retain", str(retain), "-o", str(out), "--max-rows", "3"]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_TABLE, *args], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    load_prepared(out, "unlearning")
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert prepare(forget, retain, out, "--max-rows", "3").exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_table_that_differs_from_its_manifest_is_refused(tmp_path) -> None:
    rows = [{"text": t} for t in TEXTS]
    out = tmp_path / "out"
    write_prepared(out, "unlearning", {"forget": rows[:1], "retain": rows}, sources={}, filters={})
    with open(out / "forget.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "a row the filters removed"}) + "\n")
    with pytest.raises(SiftError, match="changed since it was prepared"):
        load_prepared(out, "unlearning")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["sha256"]["forget"] = file_sha256(out / "forget.jsonl")  # a hash that matches, a count that does not
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SiftError, match="holds 2 rows but the manifest says 1"):
        load_prepared(out, "unlearning")
    for unvouched in (None, "deleted"):  # a manifest without a table's hash vouches for nothing
        if unvouched is None:
            manifest["sha256"]["forget"] = None
        else:
            del manifest["sha256"]
        (out / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(SiftError, match="records no SHA-256 and row count for table 'forget'"):
            load_prepared(out, "unlearning")


@pytest.mark.parametrize("outside", ["../../x.jsonl", "/etc/passwd"])
def test_manifest_paths_must_stay_inside_the_directory(tmp_path, outside) -> None:
    out = tmp_path / "a" / "b" / "out"
    write_prepared(out, "unlearning", {"forget": [{"text": "x"}], "retain": [{"text": "y"}]}, sources={}, filters={})
    texts_file(tmp_path / "a" / "x.jsonl")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["forget"] = outside
    manifest.pop("sha256")
    manifest.pop("counts")
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SiftError, match="points outside"):
        load_prepared(out, "unlearning")


def test_check_output_refuses_a_file_and_a_place_under_a_file(tmp_path) -> None:
    from sift_cli.store.prepared import check_output

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SiftError, match="is a file"):
        check_output(a_file)
    with pytest.raises(SiftError, match="not a writable directory"):
        check_output(a_file / "out")
    assert os.listdir(tmp_path) == ["file"]
