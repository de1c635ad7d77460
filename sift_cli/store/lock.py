"""An exclusive lock on a run directory, held for as long as one `sift` process writes it.

The lock is `flock` on `<run>/.lock`: the kernel drops it when its process ends, however it ends, so
a lock left by a killed run is stale by construction and the next process simply takes it. The file
names the holder's pid so that a refused process can say who holds the run.
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


@contextmanager
def locked(directory: Path, action: str) -> Iterator[None]:
    """Hold the exclusive lock of `directory` (which must exist) for the body; refuse, in one line,
    when another process holds it. `action` says what the refused process tried (for the message)."""
    path = Path(directory) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SiftError(f"cannot lock {directory} ({exc.strerror}); check that the directory is writable") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise SiftError(
                f"{directory} is in use by another sift process (pid {holder}); wait for it to finish before you {action}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)
