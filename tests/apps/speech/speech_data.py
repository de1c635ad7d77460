"""Rows in the sources' schemas, a stand-in voice and builders shared by the speech tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from helpers import tiny_llama, tiny_tokenizer

from sift_cli.apps.speech import whisper_vq
from sift_cli.apps.speech.audio import Audio
from sift_cli.apps.speech.tokens import (
    add_speech_tokens,
)

COSE = [
    {
        "id": "075e483d21c29a511267ef62bedc0461",
        "question": "The sanctions against the school were a punishing blow, and they seemed to what the efforts the school had made to change?",
        "choices": ["ignore", "enforce", "authoritarian", "yell at", "avoid"],
        "answer": "ignore",
        "abstractive_explanation": "The sanctions seemed to ignore the efforts the school had made.",
        "extractive_explanation": "they seemed to what the efforts",
    },
    {
        "id": "61fe6e879ff18686d7552425a36344c8",
        "question": "Where do people go to play when the weather is nice?",
        "choices": ["office", "library", "basement", "outside", "bed"],
        "answer": "outside",
        "abstractive_explanation": "People play outside when the weather is nice.",
        "extractive_explanation": "when the weather is nice",
    },
    {
        "id": "bad-answer",
        "question": "Which answer is missing?",
        "choices": ["a", "b", "c", "d", "e"],
        "answer": "z",
        "abstractive_explanation": "The answer is not among the choices.",
        "extractive_explanation": "",
    },
]


ESNLI = [
    {
        "premise": "This church choir sings to the masses as they sing joyous songs from the book at a church.",
        "hypothesis": "The church has cracks in the ceiling.",
        "label": 1,
        "explanation_1": "Not all churches have cracks in the ceiling.",
        "explanation_2": "",
        "explanation_3": "",
    },
    {
        "premise": "A man plays a guitar on stage.",
        "hypothesis": "A man is playing an instrument.",
        "label": 0,
        "explanation_1": "A guitar is an instrument",
        "explanation_2": "",
        "explanation_3": "",
    },
    {
        "premise": "Two dogs run.",
        "hypothesis": "No animals move.",
        "label": -1,
        "explanation_1": "No gold label.",
        "explanation_2": "",
        "explanation_3": "",
    },
]


OBQA = [
    {
        "id": "7-980",
        "question_stem": "The sun is responsible for",
        "choices": {
            "text": ["puppies learning new tricks", "children growing up and getting old", "flowers wilting in a vase", "plants sprouting, blooming and wilting"],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "D",
        "fact1": "the sun is the source of energy for physical cycles on Earth",
        "humanScore": 1.0,
        "clarity": 2.0,
        "turkIdAnonymized": "b356d338b7",
    },
    {
        "id": "7-584",
        "question_stem": "When food is reduced in the stomach",
        "choices": {
            "text": ["the mind needs time to digest", "take a second to digest what I said", "nutrients are being deconstructed", "reader's digest is a body of works"],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "C",
        "fact1": "digestion is when stomach acid breaks down food",
        "humanScore": 1.0,
        "clarity": 2.0,
        "turkIdAnonymized": "c0b5cb7abc",
    },
]


class ToneTts:
    """A deterministic stand-in voice: 30 ms of a tone per character, its pitch set by the character."""

    name = "tone"

    def synthesize(self, text: str) -> Audio:
        rate, step = 22050, 0.03
        t = np.arange(int(rate * step)) / rate
        pieces = [0.3 * np.sin(2 * math.pi * (120 + 7 * (ord(c) % 64)) * t) for c in text]
        return Audio(np.concatenate(pieces).astype(np.float32), rate)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "voice": "tones"}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def speech_tokenizer_and_model(codebook: int = 40) -> tuple[Any, Any, Any]:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    vocab = add_speech_tokens(model, tokenizer, codebook)
    return tokenizer, model, vocab


def save_glm_layout(directory: Path, prefix: str, binary: bool) -> whisper_vq.WhisperVQEncoder:
    """A random-init WhisperVQ tokenizer saved as the hub repo lays it out, plus tensors the loader must skip."""
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    config = {
        "architectures": ["WhisperVQEncoder"],
        "model_type": "whisper",
        "num_mel_bins": 128,
        "d_model": 32,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "encoder_layers": 4,
        "max_source_positions": 1500,
        "pooling_kernel_size": 4,
        "pooling_type": "avg",
        "pooling_position": 2,
        "quantize_position": 2,
        "quantize_vocab_size": 64,
        "quantize_causal_block_size": 200,
        "quantize_causal_encoder": False,
        "encoder_causal_attention": False,
        "encoder_causal_convolution": True,
        "quantize_encoder_only": True,
    }
    encoder = whisper_vq.local_encoder(whisper_vq.VQConfig.from_dict(config, "test"), seed=7)
    state = {prefix + key: value.clone().contiguous() for key, value in encoder.state_dict().items()}
    state[prefix + "layers.2.fc1.weight"] = torch.zeros(64, 32)
    state[prefix + "layer_norm.weight"] = torch.ones(32)
    state[prefix + "embed_positions2.weight"] = torch.zeros(375, 32)
    state[prefix + "ema_count"] = torch.ones(64)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(directory))
    if binary:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file(state, str(directory / "model.safetensors"))
    return encoder


def tone_decoder(source: str, device: str) -> Any:
    """A speech-decoder plugin for the test: speech codes to tones."""
    return lambda codes: ToneTts().synthesize("x" * len(codes))
