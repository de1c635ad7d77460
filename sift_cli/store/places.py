"""Where sift may write: one check every verb's --output goes through before anything is written.

An output that is a symbolic link is refused (a dangling one would make sift create the link's target,
wherever it points), and so is an output inside a run directory, whose subdirectories (model/,
checkpoints/, eval/, data/) are sift's own and are replaced whole."""

from __future__ import annotations

import os
from pathlib import Path

from sift_cli.errors import SiftError

SPEC = "spec.yaml"
"""The file that makes a directory a run (`sift train` writes it first)."""


def check_output_place(output: Path, flag: str = "--output") -> None:
    output = Path(output)
    if output.is_symlink():
        raise SiftError(f"{flag} {output} is a symbolic link (to {os.readlink(output)}); pass the directory it should be")
    for ancestor in output.absolute().resolve().parents:
        if (ancestor / SPEC).is_file():
            raise SiftError(f"{flag} {output} is inside the run {ancestor}, whose directories sift manages; pass a directory outside it")
