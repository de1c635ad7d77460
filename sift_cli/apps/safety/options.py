"""The `objective:` section of a safety spec: plain pydantic, which the run spec validates without
importing the app."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import ConfigDict, Field

from sift_cli.evaluation.endpoint import JudgeEndpoint

SAFETY_SETS = ("strongreject", "jailbreakbench", "wildjailbreak")


class Options(JudgeEndpoint):
    """The `objective:` section of a safety run."""

    model_config = ConfigDict(extra="forbid")
    template: Literal["alpaca", "plain"] = Field(
        "alpaca", description="user message: the Alpaca template, or the plain instruction for chat models"
    )
    beta: float = Field(0.01, gt=0, description="DPO inverse temperature")
    precompute_reference: bool = Field(
        True, description="score every DPO pair with the initial model once instead of keeping a frozen copy"
    )
    sft_max_length: Optional[int] = Field(None, ge=8, description="tokens per SFT example (null: data.max_length)")
    dpo_max_length: Optional[int] = Field(None, ge=8, description="tokens per DPO sequence, prompt plus one response (null: data.max_length)")
    safety_sets: list[str] = Field(
        list(SAFETY_SETS), description="harmful-prompt sets for evaluate: strongreject, jailbreakbench, wildjailbreak or files"
    )
    utility_tasks: list[str] = Field(default_factory=list, description="lm-eval tasks when evaluate gets no --tasks")
    max_new_tokens: int = Field(256, ge=1, description="reply length when evaluating safety")
    judge: Literal["keyword", "openai", "local"] = Field(
        "keyword", description="keyword: the offline refusal classifier; openai: an OpenAI-compatible endpoint; local: a model"
    )
