"""The `objective:` section of a hallucination spec: plain pydantic, which the run spec validates
without importing the app."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from sift_cli.evaluation.endpoint import JudgeEndpoint

PAPER_UTILITY_TASKS = ["mmlu", "gsm8k", "truthfulqa_mc2", "qnli", "mnli"]


class Options(JudgeEndpoint):
    """The `objective:` section of a hallucination spec."""

    model_config = ConfigDict(extra="forbid")

    g_loss: Literal["neg_ce", "unlikelihood"] = Field(
        "neg_ce", description="neg_ce: -CE on hallucinated tokens (paper, unbounded); unlikelihood: -log(1-p) (bounded below by 0)"
    )
    judge: Literal["openai", "local", "none"] = Field(
        "openai", description="openai: an OpenAI-compatible endpoint; local: a model on this machine; none: skip judging"
    )
    max_new_tokens: int = Field(256, ge=1, description="answer length when generating on the test split")
    utility_tasks: list[str] = Field(default_factory=lambda: list(PAPER_UTILITY_TASKS))
