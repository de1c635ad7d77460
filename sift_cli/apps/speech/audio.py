"""Mono waveforms and the resampling every backend pair needs (TTS voices speak at 22.05 kHz, the
GLM-4-Voice tokenizer and Whisper listen at 16 kHz).

Resampling is the windowed-sinc polyphase filter torchaudio uses (Hann window, 6 zero crossings,
rolloff 0.99), written with plain torch because torchaudio has no CPU wheel next to torch 2.13.
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from sift_cli.errors import SiftError

LOWPASS_WIDTH = 6
ROLLOFF = 0.99


@dataclass(frozen=True)
class Audio:
    """A mono float32 waveform in [-1, 1] and its sample rate."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def from_wav_bytes(data: bytes) -> Audio:
    """A 16-bit PCM WAV (what espeak-ng --stdout writes), mixed down to mono."""
    try:
        with wave.open(io.BytesIO(data)) as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise SiftError(f"the TTS backend wrote audio that is not a WAV file ({exc}); check its installation") from None
    if width != 2:
        raise SiftError(f"expected 16-bit WAV audio from the TTS backend, got {8 * width}-bit")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return Audio(samples, rate)


@lru_cache(maxsize=8)
def _sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_WIDTH * orig / base)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + taps) * base
    t = t.clamp(-LOWPASS_WIDTH, LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_WIDTH / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return (sinc * window * base / orig).to(torch.float32), width


def resample(audio: Audio, rate: int) -> Audio:
    """`audio` at `rate` Hz; the output has ceil(len * rate / old_rate) samples."""
    if audio.sample_rate == rate:
        return audio
    gcd = math.gcd(audio.sample_rate, rate)
    orig, new = audio.sample_rate // gcd, rate // gcd
    kernel, width = _sinc_kernel(orig, new)
    length = len(audio.samples)
    signal = torch.from_numpy(np.ascontiguousarray(audio.samples, dtype=np.float32)).view(1, 1, length)
    padded = torch.nn.functional.pad(signal, (width, width + orig))
    phases = torch.nn.functional.conv1d(padded, kernel, stride=orig)
    out = phases.transpose(1, 2).reshape(-1)[: math.ceil(new * length / orig)]
    return Audio(out.numpy(), rate)
