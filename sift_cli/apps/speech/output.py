"""From generated speech tokens to words: a speech decoder (tokens -> waveform), then ASR (waveform -> text).

GLM-4-Voice's decoder (a flow-matching model plus a HiFT vocoder, `THUDM/glm-4-voice-decoder`) ships
only as code inside the GLM-4-Voice repository, which no package installs; it is used through that
repository's own `flow_inference.AudioDecoder` when the clone is importable, and any other decoder
plugs in as `package.module:factory`, where `factory(source, device)` returns a callable from speech
codes to an `Audio`. ASR is a Whisper model run through transformers.
"""

from __future__ import annotations

import importlib
import os
import uuid
from pathlib import Path
from typing import Callable, Sequence

import torch

from sift_cli.apps.speech.audio import Audio, resample
from sift_cli.errors import SiftError, first_line

GLM_DECODER = "glm4voice"
GLM_DECODER_SOURCE = "THUDM/glm-4-voice-decoder"
ASR_MODEL = "openai/whisper-large-v3"
DECODER_RATE = 22050
ASR_RATE = 16000
ASR_SEGMENT = 30 * ASR_RATE
DECODER_INSTALL = (
    "git clone https://github.com/THUDM/GLM-4-Voice, `pip install -r requirements.txt` there, and put the clone and its "
    "third_party/Matcha-TTS on PYTHONPATH"
)

SpeechDecoder = Callable[[Sequence[int]], Audio]


def _local_or_hub(source: str, files: Sequence[str]) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=list(files)))
    except Exception as exc:
        offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise SiftError(f"cannot fetch {source}{offline}: {first_line(exc, 160)}; go online once or pass a local directory") from None


class GlmVoiceDecoder:
    """GLM-4-Voice's token-to-waveform decoder at 22.05 kHz, decoding one whole reply at a time."""

    def __init__(self, source: str, device: str) -> None:
        try:
            flow_inference = importlib.import_module("flow_inference")
        except Exception as exc:
            raise SiftError(
                f"the X->audio settings need GLM-4-Voice's speech decoder, which does not import here ({first_line(exc, 160)}); "
                f"{DECODER_INSTALL}, or evaluate only text outputs with --set objective.eval_settings='[text->text,audio->text]'"
            ) from None
        directory = _local_or_hub(source, ["config.yaml", "flow.pt", "hift.pt"])
        self.device = device
        self._decoder = flow_inference.AudioDecoder(
            config_path=str(directory / "config.yaml"),
            flow_ckpt_path=str(directory / "flow.pt"),
            hift_ckpt_path=str(directory / "hift.pt"),
            device=device,
        )

    @torch.no_grad()
    def __call__(self, codes: Sequence[int]) -> Audio:
        tokens = torch.tensor([list(codes)], dtype=torch.long, device=self.device)
        speech, _ = self._decoder.token2wav(
            tokens,
            uuid=str(uuid.uuid4()),
            prompt_token=torch.zeros(1, 0, dtype=torch.long, device=self.device),
            prompt_feat=torch.zeros(1, 0, 80, device=self.device),
            finalize=True,
        )
        return Audio(speech.reshape(-1).float().cpu().numpy(), DECODER_RATE)


def load_decoder(name: str, source: str, device: str) -> SpeechDecoder:
    """`glm4voice`, or a plugin named `package.module:factory`."""
    if name == GLM_DECODER:
        return GlmVoiceDecoder(source, device)
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise SiftError(f"speech decoder {name!r} is neither 'glm4voice' nor 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:
        raise SiftError(f"cannot import speech decoder {name!r} ({first_line(exc, 160)}); install its package or fix the name") from None
    return factory(source, device)


class WhisperAsr:
    """Greedy English transcription in 30-second windows."""

    def __init__(self, model_id: str, device: str) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        try:
            self.processor = WhisperProcessor.from_pretrained(model_id)
            self.model = WhisperForConditionalGeneration.from_pretrained(model_id).to(device).eval()
        except Exception as exc:
            offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
            raise SiftError(
                f"cannot load ASR model {model_id}{offline}: {first_line(exc, 160)}; "
                "go online once or set objective.asr_model to a local Whisper directory"
            ) from None
        self.device = device

    @torch.no_grad()
    def __call__(self, audio: Audio) -> str:
        samples = resample(audio, ASR_RATE).samples
        pieces = []
        for start in range(0, len(samples), ASR_SEGMENT):
            features = self.processor(samples[start : start + ASR_SEGMENT], sampling_rate=ASR_RATE, return_tensors="pt")
            ids = self.model.generate(features.input_features.to(self.device, self.model.dtype), language="en", task="transcribe")
            pieces.append(self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
        return " ".join(piece for piece in pieces if piece)


class SpeechToText:
    """Speech codes -> waveform -> transcript; empty output stays empty rather than failing."""

    def __init__(self, decoder: SpeechDecoder, asr: Callable[[Audio], str]) -> None:
        self.decoder, self.asr = decoder, asr

    def __call__(self, codes: Sequence[int]) -> str:
        return self.asr(self.decoder(codes)) if codes else ""


def load_speech_to_text(decoder: str, decoder_source: str, asr_model: str, device: str) -> SpeechToText:
    """The decoder first: it is the piece most likely missing, and it should fail before ASR downloads."""
    return SpeechToText(load_decoder(decoder, decoder_source, device), WhisperAsr(asr_model, device))
