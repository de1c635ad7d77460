"""Test helpers shared by several test modules: reference matrices, a local HTTP server, and a tiny
random Llama with a real byte-level BPE tokenizer."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

F64 = torch.float64


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=F64)).Q


def decaying(m: int, n: int, seed: int) -> torch.Tensor:
    """U diag(1/i) V^T in float64: the hard case for top-k subspaces (sigma_k ~ sigma_k+1)."""
    r = min(m, n)
    return (orthonormal(m, r, seed) / torch.arange(1, r + 1, dtype=F64)) @ orthonormal(n, r, seed + 1).mT


@contextmanager
def serving(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free local port; yields http://127.0.0.1:PORT."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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


def prepare_unlearning(root: Path, forget: list[str], retain: list[str]) -> Path:
    """`sift prepare unlearning` on texts written as JSONL under root; returns the prepared directory."""
    from typer.testing import CliRunner

    from sift_cli.cli import app

    args = ["prepare", "unlearning"]
    for role, texts in (("forget", forget), ("retain", retain)):
        path = root / f"{role}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        args += [f"--{role}", str(path)]
    args += ["-o", str(root / "prepared")]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "prepared"
