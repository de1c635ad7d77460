"""`sift env`: the table the README says to paste into a public issue never shows a credential."""

from __future__ import annotations

from typer.testing import CliRunner

from sift_cli.cli import app
from sift_cli.envinfo import shown


def test_sift_env_hides_url_credentials(monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://someone:SECRET-PASSWORD@mirror.example:8443/hub?token=SECRET-TOKEN")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["env"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "SECRET" not in result.output and "someone" not in result.output
    assert "https://[redacted]@mirror.example:8443/hub?[redacted]" in result.output


def test_a_variable_named_like_a_secret_is_never_shown() -> None:
    assert shown("HF_TOKEN", "hf_abc") == shown("WANDB_API_KEY", "x") == "(set, not shown)"
    assert shown("HF_HOME", None) == "(unset)" and shown("HF_HOME", "/data/hf") == "/data/hf"
