"""Atomic file writes, so that a kill at any moment leaves the previous version readable."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def _umask() -> int:
    """The process umask (read by setting it, then restoring it), so atomic files get normal permissions."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_with(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    _replace_with(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """One JSON object per line, non-ASCII text kept as it is."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp_path)` (e.g. torch.save) and move the result over `path` in one rename."""
    _replace_with(Path(path), write)
