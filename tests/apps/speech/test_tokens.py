"""Speech tokens in the tokenizer, 13:26 interleaving and the text/speech label masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from speech_data import speech_tokenizer_and_model

from sift_cli.apps.speech import app as speech
from sift_cli.apps.speech import prompts, sources
from sift_cli.apps.speech.tokens import (
    BEGIN_AUDIO,
    END_AUDIO,
    IGNORE,
    add_speech_tokens,
    audio_token,
    interleave,
    read_speech_vocab,
)
from sift_cli.errors import SiftError


def test_speech_tokens_are_added_and_read_from_the_tokenizer() -> None:
    tokenizer, model, vocab = speech_tokenizer_and_model()
    assert vocab.audio_0 == tokenizer.convert_tokens_to_ids(audio_token(0))
    assert vocab.begin == tokenizer.convert_tokens_to_ids(BEGIN_AUDIO) < vocab.audio_0
    assert vocab.end == tokenizer.convert_tokens_to_ids(END_AUDIO) < vocab.audio_0
    assert tokenizer.convert_tokens_to_ids(audio_token(39)) == vocab.audio_0 + 39
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    again = add_speech_tokens(model, tokenizer, 40)
    assert again == vocab and model.get_input_embeddings().num_embeddings == len(tokenizer)
    with pytest.raises(SiftError, match="lacks <\\|audio_63\\|>"):
        read_speech_vocab(tokenizer, 64)


def test_interleaving_is_13_text_then_26_wrapped_speech_then_the_rest_of_the_speech() -> None:
    """GLM-4-Voice's reply format (paper, Fig. A3): 28 text and 102 speech tokens give blocks 13, 26, 13,
    26, 2, 50; after the last text chunk all remaining speech is one block."""
    tokenizer, _, vocab = speech_tokenizer_and_model()
    text = list(range(100, 128))
    codes = [i % 40 for i in range(102)]
    out = interleave(text, codes, vocab)
    block = lambda part: [vocab.begin, *[vocab.audio_0 + c for c in part], vocab.end]  # noqa: E731
    assert out == text[:13] + block(codes[:26]) + text[13:26] + block(codes[26:52]) + text[26:] + block(codes[52:])
    only_speech_left = interleave(text[:5], codes, vocab)
    assert only_speech_left == text[:5] + block(codes)
    assert interleave([], codes[:30], vocab) == block(codes[:30])
    speech_runs_out = interleave(text, codes[:10], vocab)
    assert speech_runs_out == text[:13] + block(codes[:10]) + text[13:]
    assert interleave(text, [], vocab) == text


def test_masks_split_text_and_speech_by_the_audio_0_id(fixtures: dict[str, Path]) -> None:
    tokenizer, _, vocab = speech_tokenizer_and_model()
    example = sources.load_examples("cose", str(fixtures["cose"]), "train")[0][1]
    row = {**example.row(), "instruction_speech": [3, 1, 4, 1, 5], "response_speech": [i % 40 for i in range(30)]}
    options = speech.Options()
    fmt = prompts.resolve_format(tokenizer, "auto")
    assert fmt == "chat"
    for variant in ("text", "audio"):
        item = speech.encode(tokenizer, vocab, fmt, row, variant, options, max_length=512)
        assert item is not None
        ids = torch.tensor(item["input_ids"])
        f_labels, g_labels = torch.tensor(item["f_labels"]), torch.tensor(item["g_labels"])
        labelled = (f_labels != IGNORE) | (g_labels != IGNORE)
        prompt_length = int((~labelled).nonzero().max()) + 1 if (~labelled).any() else 0
        assert not labelled[:prompt_length].any()
        assert torch.equal(g_labels != IGNORE, labelled & (ids >= vocab.audio_0))
        assert torch.equal(f_labels != IGNORE, labelled & (ids < vocab.audio_0))
        assert int((g_labels != IGNORE).sum()) == 30
        assert item["input_ids"][-1] == tokenizer.eos_token_id
    audio_prompt = prompts.prompt_ids(tokenizer, fmt, "audio", prompts.user_content(row, "audio"))
    wrapped = [vocab.begin, *[vocab.audio_0 + c for c in (3, 1, 4, 1, 5)], vocab.end]
    assert any(audio_prompt[i : i + len(wrapped)] == wrapped for i in range(len(audio_prompt)))
    assert speech.encode(tokenizer, vocab, fmt, row, "audio", options, max_length=8) is None
