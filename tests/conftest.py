"""Shared fixtures: an offline environment and a tiny random Llama with a real byte-level BPE tokenizer.

`tiny_llama` and `tiny_tokenizer` are plain functions too (`from conftest import tiny_llama`), for tests
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

torch.set_num_threads(1)
"""Test matrices and models are tiny: intra-op threads gain nothing on them, and on a shared CI machine
OpenMP contention between threads makes them many times slower."""

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Viruses infect cells and copy themselves; vaccines train the immune system to fight them.",
    "The heart pumps blood through arteries, veins and capillaries to every organ of the body.",
    "Bacteria are single-celled organisms; antibiotics such as penicillin kill many of them.",
    "Question: What organ pumps blood? Answer: the heart. A. B. C. D.",
    "Language models predict the next token from the previous ones, one step at a time.",
    "Wikipedia articles describe history, science, geography, music and sport in plain prose.",
]
TINY_VOCAB = 512
SPECIALS = ["<|endoftext|>", "<|pad|>"]


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in-process on TINY_CORPUS (no files, deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TINY_CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=SPECIALS[0], pad_token=SPECIALS[1])


def tiny_llama(vocab_size: int, layers: int = 4, seed: int = 0):
    """A random-init Llama (hidden 64, GQA 4/2 heads), about 0.2M parameters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


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
