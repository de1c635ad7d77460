"""User-facing errors: one line naming the problem and its fix, exit code 2, no traceback."""

from __future__ import annotations

import errno


class SiftError(Exception):
    """Bad input or environment the user can fix; the CLI prints the message and exits with code 2."""

    exit_code = 2


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """An exception's first line (at most `limit` characters), or its type name when it has no message:
    what a one-line error quotes of a library's failure."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def describe_os_error(exc: OSError) -> str:
    """One line for a failure of the file system: the path, the cause in words, and what to do. A full
    disk (or a file-size limit, or a quota) says so: the write it interrupted was never renamed into
    place, so the previous files are whole and the command can run again once there is room."""
    where = f" {exc.filename}" if exc.filename else ""
    cause = exc.strerror or type(exc).__name__
    if exc.errno in FULL:
        return (f"cannot write{where}: the disk is full or a file-size limit was reached ({cause}); nothing half-written "
                "was kept: free space, then run the command again (`sift train --resume RUN` continues a run)")  # fmt: skip
    if exc.errno in DENIED:
        return f"cannot write{where} ({cause}); make it writable or pass another --output"
    if exc.filename:
        return f"cannot use{where}: {cause}"
    return f"{type(exc).__name__}: {first_line(exc)}"  # a connection or another system error without a path
