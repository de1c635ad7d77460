"""Shared fixtures: an offline environment and a tiny random Llama with a real byte-level BPE tokenizer.

`tiny_llama` and `tiny_tokenizer` are plain functions too (`from helpers import tiny_llama`), for tests
that need a fresh model per case.

The hub is switched off and the HF caches point at a temporary directory before `datasets` or
`transformers` are imported, so no test can reach the network or write to the user's cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_CACHE = tempfile.mkdtemp(prefix="sift-test-hf-")
os.environ["HF_HOME"] = _CACHE
os.environ["HF_DATASETS_CACHE"] = str(Path(_CACHE) / "datasets")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import tiny_llama, tiny_tokenizer  # noqa: E402

torch.set_num_threads(1)
"""Test matrices and models are tiny: intra-op threads gain nothing on them, and on a shared CI machine
OpenMP contention between threads makes them many times slower."""

@pytest.fixture(scope="session")
def tiny_tokenizer_obj():
    """The tiny tokenizer, shared: do not add tokens to it."""
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_obj) -> Path:
    """A saved tiny model + tokenizer directory, loadable with `from_pretrained` (treat it as read-only)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer_obj
    model = tiny_llama(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run wherever CUDA exists and are skipped (not deselected) elsewhere, so a run on a
    GPU machine cannot silently leave them out."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
