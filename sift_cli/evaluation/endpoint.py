"""The judge settings an app's `objective:` section holds: plain pydantic, so that the run spec can
validate them without importing the judges (which load models and speak HTTP)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class JudgeEndpoint(BaseModel):
    """The judge settings every app's `objective:` section shares (an app adds its own `judge` kind)."""

    judge_model: str = Field("gpt-4o", description="endpoint model name, or a local model path / HF id")
    judge_base_url: str = "https://api.openai.com/v1"
    judge_api_key_env: str = Field("OPENAI_API_KEY", description="NAME of the environment variable holding the key")

    @field_validator("judge_base_url")
    @classmethod
    def _no_credentials_in_the_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.username or parts.password or parts.query:
            raise ValueError(
                "objective.judge_base_url carries credentials (user:password@ or a query string), which the run directory "
                "and the model card would publish; pass the bare URL and put the key in the variable named by judge_api_key_env"
            )
        return value

    @field_validator("judge_api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, value: str) -> str:
        if not ENV_NAME.match(value):
            raise ValueError(
                "objective.judge_api_key_env must be the NAME of an environment variable (letters, digits, _), not the key itself"
            )
        return value
