"""The speech tokenizer: the offline local one and GLM-4-Voice's checkpoint layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from speech_data import ToneTts, save_glm_layout

from sift_cli.apps.speech import whisper_vq
from sift_cli.errors import SiftError


def test_local_speech_tokenizer_is_deterministic_at_12_5_tokens_a_second(local_tokenizer: whisper_vq.SpeechTokenizer) -> None:
    voice = ToneTts()
    long, short = voice.synthesize("Answer: D. outside."), voice.synthesize("Hi.")
    batched = local_tokenizer.encode([long, short])
    assert local_tokenizer.tokens_per_second == 12.5
    assert len(batched[0]) == math.ceil(long.seconds * 12.5)
    assert batched[1] == local_tokenizer.encode([short])[0]
    assert batched[0] == whisper_vq.local_tokenizer("cpu").encode([long])[0]
    assert len(set(batched[0])) > 1 and max(batched[0]) < local_tokenizer.codebook_size


@pytest.mark.parametrize(("prefix", "binary"), [("model.encoder.", False), ("", True)])
def test_glm_tokenizer_loader_on_a_random_init_checkpoint(tmp_path: Path, prefix: str, binary: bool) -> None:
    directory = tmp_path / "glm-4-voice-tokenizer"
    encoder = save_glm_layout(directory, prefix, binary)
    loaded = whisper_vq.load_speech_tokenizer(str(directory), "cpu")
    assert loaded.codebook_size == 64 and loaded.tokens_per_second == 12.5
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[name], tensor), name
    audio = ToneTts().synthesize("Where do people go to play?")
    expected = whisper_vq.SpeechTokenizer(encoder, loaded.feature_extractor, "same", torch.device("cpu")).encode([audio])
    assert loaded.encode([audio]) == expected
    assert len(expected[0]) == math.ceil(audio.seconds * 12.5)


def test_glm_tokenizer_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(SiftError, match="not an existing directory"):
        whisper_vq.load_speech_tokenizer(str(tmp_path / "absent"), "cpu")
    with pytest.raises(SiftError, match="HF_HUB_OFFLINE=1 is set"):
        whisper_vq.load_speech_tokenizer("THUDM/glm-4-voice-tokenizer", "cpu")
    directory = tmp_path / "broken"
    save_glm_layout(directory, "", binary=False)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "d_model": 16}))
    with pytest.raises(SiftError, match="do not fit its config"):
        whisper_vq.load_speech_tokenizer(str(directory), "cpu")


def test_block_causal_mask_hides_padding_and_future_blocks() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    allowed = whisper_vq.attention_bias(mask, 2, False, torch.float32)[0, 0] == 0
    assert allowed[0].tolist() == [True, True, False, False, False, False]
    assert allowed[3].tolist() == [True, True, True, True, False, False]
    assert allowed[4].tolist() == [True, True, True, True, True, False]
