"""Prepared-data directories: what `sift prepare` writes and `sift train` reads.

A directory holds jsonl tables and a `manifest.json` naming the app, the sources, the filters, and each
table's row count and SHA-256, so a run can say exactly what it trained on, refuse data made for another
app, and refuse tables that changed (or were half rewritten) since they were prepared.

A directory is written as one transaction (`sift_cli.store.transaction`): built beside the target and
renamed into place, never into a directory that holds anything but earlier prepared data, and never
over one of its own inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from sift_cli.errors import SiftError, first_line
from sift_cli.store.atomic import write_json, write_jsonl
from sift_cli.store.places import check_output_place
from sift_cli.store.transaction import is_temporary, staged_directory

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PreparedData:
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        files = self.manifest["files"]
        if name not in files:
            raise SiftError(
                f"{self.path / MANIFEST} names no {name!r} table (it has {', '.join(files) or 'none'}); "
                f"re-run `sift prepare {self.manifest['app']}` for this directory"
            )
        path = self.path / files[name]
        if not path.is_file():
            raise SiftError(f"{path} is missing from the prepared data; re-run `sift prepare {self.manifest['app']}`")
        return path

    def rows(self, name: str, fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The table's rows, each checked to hold `fields` as text (a missing or non-text one is named
        with its line)."""
        path = self.file(name)
        rows = []
        for number, row in enumerate(read_jsonl(path), start=1):
            missing = [field for field in fields if field not in row]
            if missing:
                raise SiftError(
                    f"{path}:{number}: row lacks {', '.join(repr(f) for f in missing)}; re-run `sift prepare {self.manifest['app']}`"
                )
            wrong = next((field for field in fields if not isinstance(row[field], str)), None)
            if wrong is not None:
                raise SiftError(
                    f"{path}:{number}: the row's {wrong!r} is {type(row[wrong]).__name__}, not text; re-run `sift prepare {self.manifest['app']}`"
                )
            rows.append(row)
        return rows


def load_prepared(path: Path, app: str) -> PreparedData:
    """The prepared data at `path`, checked: made for `app`, every table inside the directory and as
    the manifest recorded it (row count and SHA-256)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise SiftError(f"no prepared data at {path} (no {MANIFEST}); run `sift prepare {app} --output {path}` first")
    fix = f"re-run `sift prepare {app} --output {path}`"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SiftError(f"{manifest_path} is corrupt ({exc.msg}); {fix}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise SiftError(f"{manifest_path} cannot be read ({type(exc).__name__}); {fix}") from None
    if not isinstance(manifest, dict):
        raise SiftError(f"{manifest_path} does not hold a manifest object; {fix}")
    if manifest.get("app") != app:
        raise SiftError(
            f"{path} was prepared for {manifest.get('app')!r}, not {app!r}; run `sift prepare {app}` or point data.path elsewhere"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise SiftError(f"{manifest_path} has no 'files' mapping of table names to files; {fix}")
    root = path.resolve()
    for name, relative in files.items():
        target = (path / relative).resolve()
        if Path(relative).is_absolute() or not target.is_relative_to(root):
            raise SiftError(f"{manifest_path}: table {name!r} points outside {path} ({relative}); {fix}")
        if not target.is_file():
            raise SiftError(f"{path / relative} is missing from the prepared data; {fix}")
        _check_table(path / relative, manifest, name, fix)
    return PreparedData(path, manifest)


def _check_table(path: Path, manifest: dict[str, Any], name: str, fix: str) -> None:
    """A table as its manifest recorded it: its SHA-256 and its row count, both required (a manifest
    that lacks either cannot vouch for the table)."""
    expected_hash = (manifest.get("sha256") or {}).get(name)
    expected_rows = (manifest.get("counts") or {}).get(name)
    if not isinstance(expected_hash, str) or isinstance(expected_rows, bool) or not isinstance(expected_rows, int):
        raise SiftError(f"{path.parent / MANIFEST} records no SHA-256 and row count for table {name!r}, so it cannot be checked; {fix}")
    if file_sha256(path) != expected_hash:
        raise SiftError(f"{path} changed since it was prepared (its SHA-256 differs from the manifest's); {fix}")
    with open(path, "rb") as fh:
        found = sum(1 for line in fh if line.strip())
    if found != expected_rows:
        raise SiftError(f"{path} holds {found} rows but the manifest says {expected_rows}; {fix}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_output(output: Path, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, before anything is read or computed, an --output that `write_prepared` would have to
    refuse: a file, a directory holding anything but earlier prepared data, an unwritable place, or
    a directory that is (or holds) one of the inputs; and local inputs that do not exist."""
    output = Path(output)
    check_output_place(output)
    resolved = output.resolve()
    for item in inputs:
        if not Path(item).expanduser().exists():
            # before any download: an offline user hears about the typo, not about the hub
            raise SiftError(f"{item} does not exist and is not one of the hub sources; check the path (`--help` lists the sources)")
        source = Path(item).expanduser().resolve()
        if source == resolved or source.is_relative_to(resolved):
            raise SiftError(f"--output {output} would replace the input {item}; write the prepared data to another directory")
    if output.exists():
        if not output.is_dir():
            raise SiftError(f"--output {output} is a file; pass a directory for the prepared data")
        foreign = _foreign_entries(output)
        if foreign:
            raise SiftError(
                f"--output {output} holds files that are not prepared data ({', '.join(foreign[:3])}); pass a new or empty directory"
            )
    ancestor = output.parent if not output.exists() else output
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise SiftError(f"--output {output} cannot be created ({ancestor} is not a writable directory); pass another directory")


def _foreign_entries(directory: Path) -> list[str]:
    """Entries of `directory` that are not part of the prepared data its manifest describes."""
    entries = sorted(entry.name for entry in directory.iterdir() if not is_temporary(entry.name))
    if not entries:
        return []
    ours = {MANIFEST}
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        ours |= set(manifest["files"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return entries
    return [name for name in entries if name not in ours]


def write_prepared(
    path: Path,
    app: str,
    tables: dict[str, list[dict[str, Any]]],
    sources: dict[str, Any],
    filters: dict[str, Any],
    inputs: Iterable[str | Path] = (),
) -> PreparedData:
    """Write each table as `<name>.jsonl` plus the manifest, as one transaction (see the module doc)."""
    path = Path(path)
    check_output(path, inputs)
    with staged_directory(path) as staging:
        files = {}
        for name, rows in tables.items():
            files[name] = f"{name}.jsonl"
            write_jsonl(staging / files[name], rows)
        manifest = {
            "app": app,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sources": sources,
            "filters": filters,
            "counts": {name: len(rows) for name, rows in tables.items()},
            "sha256": {name: file_sha256(staging / file) for name, file in files.items()},
            "files": files,
        }
        write_json(staging / MANIFEST, manifest)
    return PreparedData(path, manifest)


def copy_tables(data: PreparedData, target: Path, names: Iterable[str]) -> PreparedData:
    """Copy the tables `names` of `data` (with its manifest, narrowed to them) into `target` as one
    transaction: how a run keeps the held-out data `sift evaluate` needs."""
    names = [name for name in names if name in data.manifest["files"]]
    with staged_directory(Path(target)) as staging:
        for name in names:
            shutil.copyfile(data.file(name), staging / data.manifest["files"][name])
        manifest = {
            **data.manifest,
            "copied_from": str(Path(data.path).resolve()),
            "files": {name: data.manifest["files"][name] for name in names},
            "counts": {name: data.manifest.get("counts", {}).get(name) for name in names},
            "sha256": {name: file_sha256(staging / data.manifest["files"][name]) for name in names},
        }
        write_json(staging / MANIFEST, manifest)
    return PreparedData(Path(target), manifest)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a jsonl file; a corrupt line is a one-line error with its line number."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SiftError(f"{path}:{number}: not UTF-8 text; re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SiftError(f"{path}:{number}: not valid JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise SiftError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            yield row


def read_table(path: Path, fields: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a local .jsonl/.json/.parquet/.csv file, checked to hold `fields`."""
    path = Path(path)
    if not path.is_file():
        raise SiftError(f"{path} does not exist; pass an existing .jsonl, .json, .parquet or .csv file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = list(read_jsonl(path))
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SiftError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
        except UnicodeDecodeError:
            raise SiftError(f"{path}: not UTF-8 text; re-save the file as UTF-8") from None
        rows = data if isinstance(data, list) else data.get("data", []) if isinstance(data, dict) else None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise SiftError(f"{path}: expected a list of objects (or {{\"data\": [...]}}); fix the file")
    elif suffix in (".parquet", ".csv"):
        import pandas as pd

        try:
            frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
        except Exception as exc:  # pandas and pyarrow raise many types for a malformed file
            raise SiftError(f"{path}: cannot be read as {suffix[1:]} ({first_line(exc, 120)}); check the file") from None
        rows = frame.to_dict(orient="records")
    else:
        raise SiftError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .parquet or .csv")
    missing = [f for f in fields if rows and f not in rows[0]]
    if missing:
        raise SiftError(f"{path} lacks column(s) {', '.join(missing)}; found {', '.join(rows[0])}")
    return rows
