"""Registry of applications. Each app module has the same shape (see `sift_cli.apps.base.App`)."""

from __future__ import annotations

import importlib

from sift_cli.apps.base import App
from sift_cli.errors import SiftError

_MODULES = {
    "unlearning": "sift_cli.apps.unlearning.app",
    "hallucination": "sift_cli.apps.hallucination.app",
    "safety": "sift_cli.apps.safety.app",
    "speech": "sift_cli.apps.speech.app",
}


def app_names() -> list[str]:
    return sorted(_MODULES)


def get_app(name: str) -> App:
    """The app module for `name`, imported on first use so that `sift --help` stays fast."""
    if name not in _MODULES:
        raise SiftError(f"application {name!r} is not available yet; choose one of: {', '.join(app_names())}")
    return importlib.import_module(_MODULES[name])  # type: ignore[return-value]
