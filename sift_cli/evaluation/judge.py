"""LLM judges behind one method, `complete(messages) -> reply text`: an OpenAI-compatible endpoint or a local model.

Apps own their judging prompts and reply parsing; this module only moves messages and replies, and
turns every failure (network, HTTP status, malformed JSON) into `JudgeError` so that an app can count
it as an error instead of mistaking it for a verdict. The API key is read from an environment
variable whose name is configurable; the key itself stays in memory and is never written or logged:
every text the endpoint sends back (replies and error bodies, which some endpoints echo the request's
headers into) has the key replaced before anyone can store or print it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any, Literal, Protocol
from urllib.parse import quote, quote_plus

from sift_cli.errors import SiftError, first_line
from sift_cli.evaluation.endpoint import JudgeEndpoint

Messages = list[dict[str, str]]
RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)
REDACTED = "[redacted]"
QUOTED_BYTES = 200
"""How much of an error body a JudgeError quotes (after the key is redacted from the whole body)."""


class JudgeError(Exception):
    """One judge call failed; the caller records the item as a judging error.

    `str()` is a fixed summary (the HTTP status, or the kind of failure) that callers may store per
    item; `detail` is what the endpoint said, with the key redacted, for the console only."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(summary)
        self.detail = detail


def require_some_judged(failures: list[JudgeError], calls: int, what: str) -> str | None:
    """Fail when every judge call failed (a rate over nothing judged is no result); otherwise return
    the line that says how many failed and the first reason, or None when none did."""
    if not failures:
        return None
    first = failures[0]
    reason = f"{first}" + (f" ({first.detail})" if first.detail else "")
    line = f"{len(failures)} of {calls} judge calls failed for {what}; the first: {reason}"
    if len(failures) == calls:
        raise SiftError(f"{line}; check judge_base_url, judge_model and the key variable (judge_api_key_env)")
    return line


def secret_forms(secret: str) -> list[str]:
    """Every spelling of `secret` an endpoint can be expected to echo: as sent, JSON-escaped (with and
    without escaped slashes, PHP's default), and URL-encoded (path, form and fully quoted), longest first."""
    json_form = json.dumps(secret)[1:-1]
    forms = {secret, json_form, json_form.replace("/", "\\/"), quote(secret, safe=""), quote(secret), quote_plus(secret)}
    return sorted((form for form in forms if form), key=len, reverse=True)


def redact(text: str, secret: str) -> str:
    """`text` with every spelling of `secret` replaced (percent-encoded ones in either case of hex
    digit); redact before truncating, so that no cut can leave part of the secret behind."""
    for form in secret_forms(secret) if secret else []:
        text = re.sub(re.escape(form), REDACTED, text, flags=re.IGNORECASE if "%" in form else 0)
    return text


class ChatJudge(Protocol):
    def complete(self, messages: Messages) -> str: ...


class OpenAICompatibleJudge:
    """POST {base_url}/chat/completions with temperature 0, retrying transient failures."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60,
        max_retries: int = 2,
        retry_wait: float = 1.0,
    ) -> None:
        key = os.environ.get(api_key_env)
        if not key:
            raise SiftError(
                f"the judge's API key variable {api_key_env} is not set; export it, or name the variable that holds the key"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_wait = retry_wait
        self._key = key

    def __repr__(self) -> str:
        return f"OpenAICompatibleJudge(url={self.url!r}, model={self.model!r})"

    def complete(self, messages: Messages) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"}
        attempt = 0
        while True:
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return redact(_reply_text(redact(raw.decode("utf-8", "replace"), self._key)), self._key)
            except urllib.error.HTTPError as exc:
                detail = redact(exc.read().decode("utf-8", "replace"), self._key)[:QUOTED_BYTES]
                if exc.code not in RETRY_STATUSES or attempt >= self.max_retries:
                    raise JudgeError(f"judge returned HTTP {exc.code}", detail) from None
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
                if attempt >= self.max_retries:
                    reason = redact(str(getattr(exc, "reason", None) or exc), self._key)
                    raise JudgeError(f"judge unreachable at {self.url}", reason[:QUOTED_BYTES]) from None
            time.sleep(self.retry_wait * 2**attempt)
            attempt += 1


def _reply_text(raw: str) -> str:
    """The completion's text from a response body (already redacted)."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise JudgeError("judge reply is not a chat completion", raw[:QUOTED_BYTES]) from None
    if not isinstance(content, str):
        raise JudgeError("judge reply has no text content")
    return content


class LocalHFJudge:
    """A causal LM on this machine (any HF id or directory, or the offline default), greedy decoding."""

    def __init__(self, model_path: str, max_new_tokens: int = 256, dtype: str = "float32") -> None:
        from sift_cli.hf.loading import load_model, load_tokenizer
        from sift_cli.spec import ModelSpec

        spec = ModelSpec(name=model_path, dtype=dtype)
        self.tokenizer = load_tokenizer(spec)
        self.model = load_model(spec)
        self.model_path = model_path
        self.max_new_tokens = max_new_tokens

    def complete(self, messages: Messages) -> str:
        from sift_cli.evaluation.generate import generate

        try:
            return generate(self.model, self.tokenizer, [messages], self.max_new_tokens, batch_size=1)[0]
        except RuntimeError as exc:
            raise JudgeError(f"local judge failed: {first_line(exc)}") from None


def make_judge(
    kind: Literal["openai", "local"],
    model: str,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 60,
    max_retries: int = 2,
    max_new_tokens: int = 256,
) -> ChatJudge:
    """The judge a spec names: `openai` needs `base_url`, `local` loads `model` on this machine."""
    if kind == "openai":
        if not base_url:
            raise SiftError("an 'openai' judge needs a base URL (e.g. https://api.openai.com/v1); set the judge's base_url")
        return OpenAICompatibleJudge(base_url, model, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries)
    if kind == "local":
        return LocalHFJudge(model, max_new_tokens=max_new_tokens)
    raise SiftError(f"unknown judge kind {kind!r}; use 'openai' (an OpenAI-compatible endpoint) or 'local' (a model path)")


def describe(judge: Any) -> dict[str, Any]:
    """What to record about a judge in results: kind, model and endpoint, never the key."""
    if isinstance(judge, OpenAICompatibleJudge):
        return {"kind": "openai", "model": judge.model, "url": judge.url}
    if isinstance(judge, LocalHFJudge):
        return {"kind": "local", "model": judge.model_path}
    return {"kind": type(judge).__name__}


def endpoint_judge(kind: Literal["openai", "local"], endpoint: JudgeEndpoint) -> ChatJudge:
    """The judge an app's `objective:` section names."""
    return make_judge(kind, endpoint.judge_model, base_url=endpoint.judge_base_url, api_key_env=endpoint.judge_api_key_env)
