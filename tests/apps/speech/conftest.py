"""Fixtures of the speech tests: source files per dataset, the local speech tokenizer, prepared CoS-E."""

from __future__ import annotations

from pathlib import Path

import pytest
from speech_data import COSE, ESNLI, OBQA, ToneTts, write_jsonl

from sift_cli.apps.speech import app as speech
from sift_cli.apps.speech import sources, whisper_vq


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One directory per dataset, files named after the hub's splits."""
    root = tmp_path_factory.mktemp("speech-sources")
    dirs = {name: root / name for name in sources.DATASETS}
    write_jsonl(dirs["cose"] / "train.jsonl", COSE)
    write_jsonl(dirs["cose"] / "validation.jsonl", COSE[:2])
    write_jsonl(dirs["esnli"] / "train.jsonl", ESNLI)
    write_jsonl(dirs["esnli"] / "test.jsonl", ESNLI[:2])
    write_jsonl(dirs["openbookqa"] / "train.jsonl", OBQA)
    write_jsonl(dirs["openbookqa"] / "test.jsonl", OBQA)
    return dirs


@pytest.fixture(scope="module")
def local_tokenizer() -> whisper_vq.SpeechTokenizer:
    return whisper_vq.local_tokenizer("cpu")


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, fixtures: dict[str, Path], local_tokenizer: whisper_vq.SpeechTokenizer
) -> Path:
    """Spoken CoS-E fixtures, prepared once for the module (treat as read-only)."""
    target = tmp_path_factory.mktemp("speech-prepared") / "data"
    speech.prepare(target, "cose", source=str(fixtures["cose"]), tts=ToneTts(), speech_tokenizer=local_tokenizer)
    return target
