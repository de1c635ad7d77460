"""Where the configuration files sift ships are: presets, model configs, launch configs.

They live once, in the repository's top-level `configs/` (what a user browses, copies and edits). A
wheel carries the same files as package data under `sift_cli/configs/` (pyproject maps the one onto
the other), so an installed `sift` and a source checkout find the same files.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def configs_dir() -> Path:
    """`sift_cli/configs` inside an installed wheel, else the checkout's top-level `configs/`."""
    packaged = _PACKAGE / "configs"
    return packaged if packaged.is_dir() else _PACKAGE.parent / "configs"


def presets_dir() -> Path:
    return configs_dir() / "presets"
