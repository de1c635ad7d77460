"""Audio resampling."""

from __future__ import annotations

import math

import numpy as np

from sift_cli.apps.speech.audio import Audio, resample


def test_resampling_keeps_pitch_and_duration() -> None:
    rate = 22050
    t = np.arange(rate) / rate
    audio = resample(Audio(np.sin(2 * math.pi * 440 * t).astype(np.float32), rate), 16000)
    assert len(audio.samples) == 16000 and audio.sample_rate == 16000
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert abs(int(spectrum.argmax()) - 440) <= 1
