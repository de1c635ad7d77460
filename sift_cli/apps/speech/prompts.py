"""Prompts in GLM-4-Voice's own format, or a chat model's template for models trained elsewhere.

GLM-4-Voice reads `<|system|>\\n{system}<|user|>\\n{input}<|assistant|>streaming_transcription\\n` with
one of two system prompts (a text or a speech instruction) and stops at `<|user|>`. A model without
those role tokens (SmolLM2 on a CPU) gets the same system and user turns through its chat template.
"""

from __future__ import annotations

from typing import Any, Sequence

from sift_cli.apps.speech.tokens import SPEECH_CHUNK, TEXT_CHUNK, speech_string
from sift_cli.errors import SiftError

FORMATS = ("auto", "glm4voice", "chat")
GLM_ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
GLM_STOP = "<|user|>"


def system_prompt(variant: str, text_chunk: int = TEXT_CHUNK, speech_chunk: int = SPEECH_CHUNK) -> str:
    """GLM-4-Voice's system prompts, word for word at the default 13:26 ratio."""
    kind = "speech" if variant == "audio" else "text"
    ending = " " if variant == "audio" else ""
    return (
        f"User will provide you with a {kind} instruction. Do it step by step. First, think about the instruction "
        f"and respond in a interleaved manner, with {text_chunk} text token followed by {speech_chunk} audio tokens.{ending}"
    )


def resolve_format(tokenizer: Any, requested: str) -> str:
    if requested not in FORMATS:
        raise SiftError(f"objective.prompt_format {requested!r} is not one of: {', '.join(FORMATS)}")
    if requested != "auto":
        return requested
    vocab = tokenizer.get_vocab()
    return "glm4voice" if all(role in vocab for role in GLM_ROLES) else "chat"


def user_content(row: dict[str, Any], variant: str) -> str:
    """The instruction as text, or as its speech tokens wrapped in begin/end of audio."""
    return row["instruction"] if variant == "text" else speech_string(row["instruction_speech"])


def prompt_ids(
    tokenizer: Any, fmt: str, variant: str, content: str, text_chunk: int = TEXT_CHUNK, speech_chunk: int = SPEECH_CHUNK
) -> list[int]:
    system = system_prompt(variant, text_chunk, speech_chunk)
    if fmt == "glm4voice":
        text = f"<|system|>\n{system}<|user|>\n{content}<|assistant|>streaming_transcription\n"
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    from sift_cli.evaluation.generate import prompt_ids as chat_prompt_ids

    return chat_prompt_ids(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": content}])


def end_of_reply(tokenizer: Any, fmt: str) -> int:
    """The token that closes a reply: `<|user|>` for GLM-4-Voice, the tokenizer's EOS otherwise."""
    if fmt == "glm4voice":
        return tokenizer.get_vocab()[GLM_STOP]
    if tokenizer.eos_token_id is None:
        raise SiftError("the tokenizer has no EOS token, so a reply cannot be taught to end; set tokenizer.eos_token")
    return tokenizer.eos_token_id


def stop_ids(model: Any, tokenizer: Any, fmt: str) -> Sequence[int]:
    from sift_cli.evaluation.generate import stop_ids as chat_stop_ids

    return sorted({end_of_reply(tokenizer, fmt), *chat_stop_ids(model, tokenizer)})
