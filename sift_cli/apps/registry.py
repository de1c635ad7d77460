"""The application names and each one's `objective:` options type: what the run spec validates
against. Only the light options modules are imported here, so the spec never loads an app (whose
modules read the spec themselves)."""

from __future__ import annotations

from pydantic import BaseModel

from sift_cli.apps.hallucination.options import Options as HallucinationOptions
from sift_cli.apps.safety.options import Options as SafetyOptions
from sift_cli.apps.speech.options import Options as SpeechOptions
from sift_cli.apps.unlearning.options import Options as UnlearningOptions
from sift_cli.errors import SiftError

OPTIONS: dict[str, type[BaseModel]] = {
    "unlearning": UnlearningOptions,
    "hallucination": HallucinationOptions,
    "safety": SafetyOptions,
    "speech": SpeechOptions,
}
APPS = tuple(OPTIONS)


def check_app(name: str) -> None:
    if name not in APPS:
        raise SiftError(f"application {name!r} does not exist; choose one of: {', '.join(APPS)}")
