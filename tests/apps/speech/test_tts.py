"""Text-to-speech backends: the auto choice, install hints, and real synthesis where installed."""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest

from sift_cli.apps.speech import tts
from sift_cli.errors import SiftError


def test_auto_tts_says_which_backend_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    monkeypatch.setattr(tts, "_build", lambda name, voice: built.append(name) or _Named(name))
    monkeypatch.setattr(tts, "coqui_problem", lambda: "Coqui TTS does not import here (libtorchaudio.so missing)")
    monkeypatch.setattr(tts, "piper_problem", lambda voice=None: None)
    monkeypatch.setattr(tts, "espeak_problem", lambda: None)
    line = tts.choose_tts("auto").line
    assert line == "text to speech: piper voice x (auto: Coqui TTS does not import here (libtorchaudio.so missing), so not the paper's voice)"
    monkeypatch.setattr(tts, "piper_problem", lambda voice=None: "piper-tts is not installed")
    line = tts.choose_tts("auto").line
    assert line.startswith("text to speech: espeak-ng voice x (auto: Coqui TTS does not import here")
    assert "piper-tts is not installed" in line
    monkeypatch.setattr(tts, "coqui_problem", lambda: None)
    assert tts.choose_tts("auto").line == "text to speech: coqui VCTK VITS speaker x (auto: the paper's voice)"
    assert built == ["piper", "espeak", "coqui"]


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "voice": "x"}


def test_missing_tts_backends_give_one_line_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tts, "coqui_problem", lambda: "Coqui TTS is not installed")
    monkeypatch.setattr(tts, "piper_problem", lambda voice=None: "piper-tts is not installed")
    monkeypatch.setattr(tts, "espeak_problem", lambda: "espeak-ng is not on PATH")
    with pytest.raises(SiftError) as error:
        tts.choose_tts("coqui")
    assert "pip install coqui-tts" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SiftError, match="apt-get install -y espeak-ng"):
        tts.choose_tts("auto")
    with pytest.raises(SiftError, match="choose one of: auto, coqui, piper, espeak"):
        tts.choose_tts("festival")


def test_coqui_is_import_guarded() -> None:
    problem = tts.coqui_problem()
    if problem is None:
        pytest.skip("Coqui TTS imports on this machine")
    with pytest.raises(SiftError, match="install it with `pip install coqui-tts"):
        tts.choose_tts("coqui")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_espeak_ng_speaks() -> None:
    audio = tts.choose_tts("espeak").backend.synthesize("-v Answer: D. outside.")
    assert audio.sample_rate == 22050 and 0.5 < audio.seconds < 5 and np.abs(audio.samples).max() > 0.05


@pytest.mark.skipif(tts.piper_problem() is not None, reason="piper-tts or its voice is not installed (pip extra 'speech')")
def test_piper_speaks() -> None:
    audio = tts.choose_tts("piper").backend.synthesize("Answer: D. outside.")
    assert audio.sample_rate == 22050 and 0.5 < audio.seconds < 5 and np.abs(audio.samples).max() > 0.05
