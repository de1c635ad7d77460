"""The judge client against a real chat-completions HTTP server on localhost (stdlib, one thread)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import serving

from sift_cli.errors import SiftError
from sift_cli.evaluation.judge import (
    JudgeError,
    OpenAICompatibleJudge,
    describe,
    make_judge,
)

KEY = "sk-judge/test+4b1e=0d"
ENV = "SIFT_TEST_JUDGE_KEY"
MESSAGES = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Is the sky green?"}]


HANG = -1.0
"""A scripted delay that means: do not answer until the test is over (a server that never replies)."""


class Server(BaseHTTPRequestHandler):
    """Answers each POST with the next scripted (status, raw body, delay) and records what it received."""

    script: list[tuple[int, bytes, float]] = []
    seen: list[dict[str, Any]] = []
    released = threading.Event()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)})
        status, body, delay = type(self).script.pop(0)
        if delay == HANG:
            type(self).released.wait()
        else:
            time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: Any) -> None:
        pass


def completion(text: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(ENV, KEY)
    Server.script, Server.seen = [], []
    Server.released.clear()
    with serving(Server) as url:
        try:
            yield f"{url}/v1/"
        finally:
            Server.released.set()


def test_request_shape_and_key_from_the_named_variable(server: str) -> None:
    Server.script = [(200, completion("No."), 0)]
    judge = OpenAICompatibleJudge(server, "judge-model", api_key_env=ENV)
    assert judge.complete(MESSAGES) == "No."
    (request,) = Server.seen
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == {"model": "judge-model", "messages": MESSAGES, "temperature": 0}
    assert KEY not in repr(judge) and KEY not in json.dumps(describe(judge))


def test_a_missing_key_variable_is_a_sift_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(SiftError, match="NO_SUCH_JUDGE_KEY is not set"):
        make_judge("openai", "m", base_url="http://127.0.0.1:9/v1", api_key_env="NO_SUCH_JUDGE_KEY")


def test_transient_failures_are_retried(server: str) -> None:
    Server.script = [(503, b'{"error": "busy"}', 0), (429, b'{"error": "slow down"}', 0), (200, completion("ok"), 0)]
    judge = OpenAICompatibleJudge(server, "m", api_key_env=ENV, max_retries=2, retry_wait=0)
    assert judge.complete(MESSAGES) == "ok"
    assert len(Server.seen) == 3


def test_errors_become_judge_errors(server: str) -> None:
    """Answers arrive well inside a generous timeout however loaded the machine is; the silent server never
    answers, so only the short-timeout client's timeout can end those requests."""
    judge = OpenAICompatibleJudge(server, "m", api_key_env=ENV, max_retries=1, retry_wait=0, timeout=30)
    impatient = OpenAICompatibleJudge(server, "m", api_key_env=ENV, max_retries=1, retry_wait=0, timeout=0.3)
    cases = [
        ([(401, b'{"error": "bad key"}', 0)], "HTTP 401", 1),
        ([(500, b"oops", 0), (500, b"oops", 0)], "HTTP 500", 2),
        ([(200, b"<html>not json</html>", 0)], "not a chat completion", 1),
        ([(200, b'{"choices": []}', 0)], "not a chat completion", 1),
        ([(200, json.dumps({"choices": [{"message": {"content": None}}]}).encode(), 0)], "no text content", 1),
        ([(200, completion("late"), HANG), (200, completion("late"), HANG)], "unreachable", 2),
    ]
    for script, message, requests in cases:
        Server.script, Server.seen = list(script), []
        client = impatient if script[0][2] == HANG else judge
        with pytest.raises(JudgeError, match=message) as info:
            client.complete(MESSAGES)
        assert KEY not in str(info.value)
        assert len(Server.seen) == requests


def test_an_unreachable_endpoint_is_a_judge_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)
    probe = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    port = probe.server_address[1]
    probe.server_close()
    judge = OpenAICompatibleJudge(f"http://127.0.0.1:{port}/v1", "m", api_key_env=ENV, max_retries=0)
    with pytest.raises(JudgeError, match="unreachable"):
        judge.complete(MESSAGES)


def test_factory_rejects_bad_kinds_and_missing_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(SiftError, match="unknown judge kind 'claude'"):
        make_judge("claude", "m")  # type: ignore[arg-type]
    with pytest.raises(SiftError, match="needs a base URL"):
        make_judge("openai", "m", base_url="", api_key_env=ENV)
    judge = make_judge("openai", "m", base_url="http://127.0.0.1:9/v1", api_key_env=ENV)
    assert describe(judge) == {"kind": "openai", "model": "m", "url": "http://127.0.0.1:9/v1/chat/completions"}


def test_the_key_is_redacted_from_every_text_an_endpoint_echoes_it_into(server: str) -> None:
    """An endpoint that quotes the Authorization header back (in an error body past the quoted length,
    in a reply, in a malformed body) never gets the key into a message or a reply."""
    padding = "x" * 150
    Server.script = [
        (400, f'{{"error": "{padding} bad header Bearer {KEY}"}}'.encode(), 0),
        (200, completion(f"your key is {KEY}"), 0),
        (200, f"not json, but {KEY}".encode(), 0),
    ]
    judge = OpenAICompatibleJudge(server, "judge-model", api_key_env=ENV, max_retries=0)
    with pytest.raises(JudgeError) as error:
        judge.complete(MESSAGES)
    reply = judge.complete(MESSAGES)
    with pytest.raises(JudgeError) as malformed:
        judge.complete(MESSAGES)
    texts = [str(error.value), error.value.detail, reply, str(malformed.value), malformed.value.detail]
    assert all(KEY[:6] not in text for text in texts), texts
    assert str(error.value) == "judge returned HTTP 400" and str(malformed.value) == "judge reply is not a chat completion"
    assert reply == "your key is [redacted]" and "[redacted]" in malformed.value.detail
