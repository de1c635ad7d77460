"""An unreachable hub is a one-line failure at once, not retries; HF_HUB_OFFLINE is honoured."""

from __future__ import annotations

import socket

import pytest
from test_train import data_dir, invoke, train_args  # noqa: F401  (data_dir is a fixture)

from sift_cli.hf import hub


@pytest.fixture
def closed_endpoint(monkeypatch) -> str:
    """An endpoint on a local port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    return f"http://127.0.0.1:{port}"


def test_a_hub_model_with_the_hub_unreachable_fails_in_one_line(tiny_model_dir, data_dir, tmp_path, closed_endpoint) -> None:  # noqa: F811
    result = invoke(*train_args(tiny_model_dir, data_dir, tmp_path / "run", "--steps", "1"), "--model", "someone/no-such-model")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert f"{closed_endpoint} cannot be reached" in result.output


def test_offline_mode_names_the_setting(tiny_model_dir, data_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke(*train_args(tiny_model_dir, data_dir, tmp_path / "run", "--steps", "1"), "--model", "someone/no-such-model")
    assert result.exit_code == 2 and "HF_HUB_OFFLINE=1 is set" in result.output


def test_a_hub_dataset_with_the_hub_unreachable_fails_before_downloading(tmp_path, closed_endpoint) -> None:
    result = invoke("prepare", "unlearning", "--forget", "cyber", "--retain", "wikitext", "-o", str(tmp_path / "data"))
    assert result.exit_code == 2
    assert "needs the Hugging Face hub" in result.output and result.output.strip().count("\n") == 0
    assert not hub.offline_requested()
