"""Locks on the directories sift writes, one rule for every verb: a process that writes a directory
holds its exclusive lock for as long as it writes; a process that reads a run to build something
from it (`sift pome`) holds a shared lock, so it never reads a run that a writer is changing.

The lock is `flock` on `<dir>/.lock`: the kernel drops it when its process ends, however it ends, so
a lock left by a killed process is stale by construction and the next process simply takes it. The
file names the exclusive holder's pid so that a refused process can say who holds the directory.
`sift prepare` locks the parent of its output (the output itself is renamed into place at the end).
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sift_cli.errors import SiftError

LOCK = ".lock"


def busy(directory: Path, action: str, holder: str) -> SiftError:
    return SiftError(f"{directory} is in use by another sift process (pid {holder}); wait for it to finish before you {action}")


@contextmanager
def locked(directory: Path, action: str, shared: bool = False) -> Iterator[None]:
    """Hold the lock of `directory` (which must exist) for the body, exclusive to write it or `shared`
    to read it; refuse, in one line, when another process holds it in a conflicting way. `action` says
    what the refused process tried (for the message)."""
    path = Path(directory) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY) if shared and path.is_file() else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if shared and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            yield  # a directory no one can write has no writer to hold off
            return
        raise SiftError(f"cannot lock {directory} ({exc.strerror}); check that the directory is writable") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise busy(directory, action, os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown") from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)


def holder(directory: Path) -> str | None:
    """The pid of another process that holds `directory`'s lock now, or None when none does (asked
    without creating anything; this process's own lock is not another's)."""
    try:
        fd = os.open(Path(directory) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        return None if pid == str(os.getpid()) else pid
    finally:
        os.close(fd)
    return None


@contextmanager
def parent_locked(output: Path, action: str) -> Iterator[None]:
    """Hold an exclusive lock on the directory that will contain `output` (flock on the directory
    itself, no file written): how `sift prepare` keeps a second prepare from renaming over the first."""
    parent = Path(output).absolute().parent
    try:
        fd = os.open(parent, os.O_RDONLY)
    except OSError:
        yield  # a parent that does not exist yet holds no other prepare's output either
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise SiftError(f"another sift prepare is writing into {parent}; wait for it to finish before you {action}") from None
        yield
    finally:
        os.close(fd)
