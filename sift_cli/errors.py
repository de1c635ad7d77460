"""User-facing errors: one line naming the problem and its fix, exit code 2, no traceback."""

from __future__ import annotations


class SiftError(Exception):
    """Bad input or environment the user can fix; the CLI prints the message and exits with code 2."""

    exit_code = 2


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """An exception's first line (at most `limit` characters), or its type name when it has no message:
    what a one-line error quotes of a library's failure."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
