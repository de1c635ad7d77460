"""Row splits of GLM's fused attention matrix, so the optimizer can gate Q, K and V as separate blocks.

`sift train` passes block_splits(model.config) to the optimizer unless the spec sets
optim.split_fused_qkv: false; other architectures have nothing fused and get no splits.

ChatGLM/GLM-4 computes `query_key_value(x)` and splits its output as [Q | K | V] along the rows of the
weight: Q has num_attention_heads * head_dim rows, K and V each multi_query_group_num * head_dim (grouped
query attention). The paper's localization figures show Q, K and V apart, so each slice gets its own
alignment, branch and update. Without multi-query attention ChatGLM interleaves q, k, v per head, which
is not a contiguous split, and is refused.
"""

from __future__ import annotations

from typing import Any

from sift_cli.errors import SiftError

QKV_PATTERN = r"\.self_attention\.query_key_value\.weight$"


def _get(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


def glm_qkv_rows(config: Any) -> list[tuple[str, int]]:
    """[("q", rows), ("k", rows), ("v", rows)] of a GLM config (a PretrainedConfig or its dict)."""
    heads = _get(config, "num_attention_heads")
    hidden = _get(config, "hidden_size")
    head_dim = _get(config, "kv_channels") or (hidden // heads if heads and hidden else None)
    if not heads or not head_dim:
        raise SiftError("the model config lacks num_attention_heads and kv_channels (or hidden_size); it is not a GLM config")
    if not _get(config, "multi_query_attention"):
        raise SiftError(
            "this GLM config has no multi_query_attention, so query_key_value interleaves q, k, v per head "
            "and cannot be split into three row blocks"
        )
    groups = _get(config, "multi_query_group_num")
    if not groups or heads % groups:
        raise SiftError(f"multi_query_group_num={groups} does not divide num_attention_heads={heads}")
    return [("q", heads * head_dim), ("k", groups * head_dim), ("v", groups * head_dim)]


def block_splits(config: Any) -> dict[str, list[tuple[str, int]]]:
    """{parameter-name regex: [(label, rows), ...]} for the optimizer; empty for models with separate
    q/k/v projections (nothing fused to split)."""
    if _get(config, "multi_query_group_num") is None and _get(config, "kv_channels") is None:
        return {}
    return {QKV_PATTERN: glm_qkv_rows(config)}
