"""Speech tokens inside a language model's vocabulary, and the 13:26 interleaving of GLM-4-Voice.

A speech code n is the token `<|audio_n|>`; the ids are read from the tokenizer at run time, and a
token counts as speech when its id is at least that of `<|audio_0|>`. That rule is only sound when the
audio tokens are the last, contiguous block of the vocabulary, so it is checked rather than assumed.
A model that lacks the tokens (SmolLM2 on a CPU) gets them appended and its embeddings resized;
text that tokenizes to an id past `<|audio_0|>` is refused where sequences are built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from sift_cli.apps.batching import IGNORE
from sift_cli.errors import SiftError

BEGIN_AUDIO = "<|begin_of_audio|>"
END_AUDIO = "<|end_of_audio|>"
TEXT_CHUNK = 13
SPEECH_CHUNK = 26


def audio_token(code: int) -> str:
    return f"<|audio_{code}|>"


def speech_string(codes: Sequence[int]) -> str:
    """Codes as one wrapped block of audio tokens, the form GLM-4-Voice reads a spoken instruction in."""
    return BEGIN_AUDIO + "".join(audio_token(code) for code in codes) + END_AUDIO


@dataclass(frozen=True)
class SpeechVocab:
    """Where the speech tokens sit in one tokenizer's vocabulary."""

    audio_0: int
    size: int
    begin: int
    end: int

    def ids(self, codes: Sequence[int]) -> list[int]:
        return [self.audio_0 + code for code in codes]

    def split(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Text token ids (wrappers dropped) and speech codes of a generated sequence."""
        text = [i for i in ids if i < self.audio_0 and i not in (self.begin, self.end)]
        codes = [i - self.audio_0 for i in ids if self.audio_0 <= i < self.audio_0 + self.size]
        return text, codes


def read_speech_vocab(tokenizer: Any, size: int) -> SpeechVocab:
    """The speech vocabulary of `tokenizer`, checked: all `size` audio tokens present, contiguous, last."""
    vocab = tokenizer.get_vocab()
    missing = [name for name in (BEGIN_AUDIO, END_AUDIO, audio_token(0), audio_token(size - 1)) if name not in vocab]
    if missing:
        raise SiftError(
            f"the tokenizer lacks {missing[0]}; the prepared data needs {size} speech tokens (<|audio_0|>..<|audio_{size - 1}|>) "
            "plus the audio wrappers; use a speech LM such as THUDM/glm-4-voice-9b or let training add them"
        )
    audio_0 = vocab[audio_token(0)]
    if any(vocab.get(audio_token(code)) != audio_0 + code for code in range(size)):
        raise SiftError(f"the tokenizer's audio tokens are not contiguous from id {audio_0}; speech ids cannot be told apart by id")
    begin, end = vocab[BEGIN_AUDIO], vocab[END_AUDIO]
    if begin >= audio_0 or end >= audio_0:
        raise SiftError(
            "the audio wrapper tokens have ids past <|audio_0|>; the speech-token rule (id >= <|audio_0|>) needs the audio tokens last"
        )
    return SpeechVocab(audio_0=audio_0, size=size, begin=begin, end=end)


def add_speech_tokens(model: nn.Module, tokenizer: Any, size: int) -> SpeechVocab:
    """Append the audio wrappers and `size` audio tokens when the tokenizer has none, and grow the model's
    embeddings (and a tied or separate output layer) to match; a tokenizer that has them is only checked."""
    vocab = tokenizer.get_vocab()
    if audio_token(0) not in vocab:
        wrappers = [name for name in (BEGIN_AUDIO, END_AUDIO) if name not in vocab]
        tokenizer.add_tokens(wrappers, special_tokens=True)
        tokenizer.add_tokens([audio_token(code) for code in range(size)], special_tokens=True)
    speech = read_speech_vocab(tokenizer, size)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return speech


def interleave(
    text_ids: Sequence[int], codes: Sequence[int], vocab: SpeechVocab, text_chunk: int = TEXT_CHUNK, speech_chunk: int = SPEECH_CHUNK
) -> list[int]:
    """`text_chunk` text tokens, then `speech_chunk` speech tokens wrapped in begin/end of audio, in turn,
    as GLM-4-Voice writes a reply (paper, Fig. A3): after the last text chunk, all remaining speech
    follows in one final block (block sizes 13, 26, 13, 26, 2, 50 for 28 text and 102 speech tokens).
    Text left over once the speech has run out follows in its own chunks."""
    chunks = [text_ids[start : start + text_chunk] for start in range(0, len(text_ids), text_chunk)] or [[]]
    out: list[int] = []
    spoken = 0
    for index, chunk in enumerate(chunks):
        out.extend(chunk)
        block = codes[spoken:] if index == len(chunks) - 1 else codes[spoken : spoken + speech_chunk]
        spoken += len(block)
        if block:
            out.extend([vocab.begin, *vocab.ids(block), vocab.end])
    return out


def label_streams(response: Sequence[int], vocab: SpeechVocab, prompt_length: int) -> tuple[list[int], list[int]]:
    """f labels (text tokens, wrappers and end of turn) and g labels (speech tokens), prompt masked."""
    masked = [IGNORE] * prompt_length
    f_labels = masked + [t if t < vocab.audio_0 else IGNORE for t in response]
    g_labels = masked + [t if t >= vocab.audio_0 else IGNORE for t in response]
    return f_labels, g_labels
