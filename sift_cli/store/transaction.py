"""Directories written as one transaction: built in a hidden staging sibling, then renamed into place.

A reader sees either the previous directory or the complete new one, never a half-written mix; a
process killed while building leaves only a hidden `.<name>.*.tmp` sibling, which the next write of the
same target (once the pid in its name has ended) or the next start of a run removes. `sift pome`, `sift prepare` and a run's `model/` are
written this way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_SUFFIX = ".tmp"


def is_temporary(name: str) -> bool:
    """A name our atomic writes (`.<name>.*.tmp`) or a library's temporary files (`.tmp*`) use."""
    return name.startswith(".") and (name.endswith(TMP_SUFFIX) or name.startswith(".tmp"))


def remove_temporary(directory: Path) -> list[str]:
    """Delete the temporary files and staging directories that killed writes left in `directory`; return
    their names. Only call it while no other process can be writing there (under the run lock)."""
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if is_temporary(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_siblings(target: Path) -> None:
    """Staging directories of `target` whose writer (the pid in their name) has died."""
    prefix = f".{target.name}."
    for entry in target.parent.iterdir():
        if not (entry.name.startswith(prefix) and entry.name.endswith(TMP_SUFFIX) and entry.is_dir()):
            continue
        pid = entry.name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `target`; when the body returns, the staging directory
    replaces `target` (which may be absent, or a directory the caller has decided may be replaced).
    When the body raises, `target` is left as it was and the staging directory is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=target.parent))
    try:
        yield staging
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(source: Path, target: Path) -> None:
    """Move the finished directory `source` to `target`; a previous `target` is moved aside first and
    deleted after, so the window without a `target` is two renames long."""
    if not target.exists():
        os.rename(source, target)
        return
    old = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old{TMP_SUFFIX}")
    os.rename(target, old)
    os.rename(source, target)
    shutil.rmtree(old, ignore_errors=True)
