"""The list of applications, which the CLI, the run spec and the presets all derive from.

Every app is a package `sift_cli.apps.<name>` of the same shape:
- `options.py`: `Options`, its typed `objective:` section (plain pydantic: the run spec validates it
  through `sift_cli.apps.registry` without loading the app);
- `app.py`: `Options` again, `DEFAULT_TRAINABLE`, `build_objectives`, `evaluate` and `prepare` (see
  `sift_cli.apps.base.App`);
- `command.py`: `prepare`, the typer command `sift prepare <name>` (light imports only);
- and whatever data readers it needs beside them.
Adding an app means adding its package and its options type to the registry; no CLI code changes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable

from sift_cli.apps.registry import APPS, check_app

if TYPE_CHECKING:
    from sift_cli.apps.base import App

__all__ = ["APPS", "check_app", "get_app", "prepare_command"]


def get_app(name: str) -> App:
    """The app module for `name`, imported on first use so that `sift --help` stays fast."""
    check_app(name)
    return importlib.import_module(f"sift_cli.apps.{name}.app")  # type: ignore[return-value]


def prepare_command(name: str) -> Callable[..., Any]:
    """The `sift prepare <name>` command the app declares."""
    check_app(name)
    return importlib.import_module(f"sift_cli.apps.{name}.command").prepare
