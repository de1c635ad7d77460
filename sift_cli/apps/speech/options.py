"""The `objective:` section of a speech spec: plain pydantic, which the run spec validates without
importing the app."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sift_cli.apps.speech.output import ASR_MODEL, GLM_DECODER, GLM_DECODER_SOURCE
from sift_cli.apps.speech.tokens import SPEECH_CHUNK, TEXT_CHUNK

Setting = Literal["text->text", "audio->text", "text->audio", "audio->audio"]
SETTINGS = ("text->text", "audio->text", "text->audio", "audio->audio")


class Options(BaseModel):
    """The `objective:` section of a speech spec."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["cose", "esnli", "openbookqa"] = Field("cose", description="must match the prepared data")
    instructions: list[Literal["text", "audio"]] = Field(
        default_factory=lambda: ["text", "audio"], min_length=1, description="instruction variants trained on"
    )
    prompt_format: Literal["auto", "glm4voice", "chat"] = Field(
        "auto", description="glm4voice when the tokenizer has GLM's role tokens, else the chat template"
    )
    text_chunk: int = Field(TEXT_CHUNK, ge=1)
    speech_chunk: int = Field(SPEECH_CHUNK, ge=1)
    eval_settings: list[Setting] = Field(default_factory=lambda: list(SETTINGS), min_length=1)
    max_new_tokens: int = Field(512, ge=1, description="reply length when evaluating (text and speech tokens)")
    speech_decoder: str = Field(GLM_DECODER, description="'glm4voice' or a plugin 'package.module:factory'")
    speech_decoder_path: str = Field(GLM_DECODER_SOURCE, description="decoder hub id or local directory")
    asr_model: str = Field(ASR_MODEL, description="Whisper hub id or local directory")
