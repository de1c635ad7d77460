"""Prepared-data directories: what `sift prepare` writes and `sift train` reads.

A directory holds jsonl files and a `manifest.json` naming the app, the sources, the filters and the
row counts, so a run can say exactly what it trained on and refuse data made for another app.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from sift_cli.errors import SiftError
from sift_cli.store.atomic import write_json, write_jsonl

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PreparedData:
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        path = self.path / self.manifest["files"][name]
        if not path.is_file():
            raise SiftError(f"{path} is missing from the prepared data; re-run `sift prepare {self.manifest['app']}`")
        return path

    def rows(self, name: str) -> list[dict[str, Any]]:
        return list(read_jsonl(self.file(name)))


def load_prepared(path: Path, app: str) -> PreparedData:
    """The prepared data at `path`, checked to exist and to be made for `app`."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise SiftError(f"no prepared data at {path} (no {MANIFEST}); run `sift prepare {app} --output {path}` first")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SiftError(f"{manifest_path} is corrupt ({exc.msg}); re-run `sift prepare {app}`") from None
    if manifest.get("app") != app:
        raise SiftError(
            f"{path} was prepared for {manifest.get('app')!r}, not {app!r}; run `sift prepare {app}` or point data.path elsewhere"
        )
    return PreparedData(Path(path), manifest)


def write_prepared(
    path: Path, app: str, tables: dict[str, list[dict[str, Any]]], sources: dict[str, Any], filters: dict[str, Any]
) -> PreparedData:
    """Write each table as `<name>.jsonl` and the manifest last, so a half-written directory is never valid."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, rows in tables.items():
        files[name] = f"{name}.jsonl"
        write_jsonl(path / files[name], rows)
    manifest = {
        "app": app,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": sources,
        "filters": filters,
        "counts": {name: len(rows) for name, rows in tables.items()},
        "files": files,
    }
    write_json(path / MANIFEST, manifest)
    return PreparedData(path, manifest)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a jsonl file; a corrupt line is a one-line error with its line number."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
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
        rows = data if isinstance(data, list) else data.get("data", [])
    elif suffix in (".parquet", ".csv"):
        import pandas as pd

        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
        rows = frame.to_dict(orient="records")
    else:
        raise SiftError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .parquet or .csv")
    missing = [f for f in fields if rows and f not in rows[0]]
    if missing:
        raise SiftError(f"{path} lacks column(s) {', '.join(missing)}; found {', '.join(rows[0])}")
    return rows
