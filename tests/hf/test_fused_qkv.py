"""GLM's fused query_key_value gated as Q, K and V blocks, in the plan and the dry run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sift_cli.errors import SiftError
from sift_cli.hf import fused_qkv as qkv
from sift_cli.hf import naming
from sift_cli.spec import OptimSpec, resolve_spec
from sift_cli.training.plan import plan_routes

GLM_VOICE_CONFIG = {
    "num_attention_heads": 32,
    "hidden_size": 4096,
    "kv_channels": 128,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
}


def test_qkv_row_splits_of_glm_4_voice() -> None:
    rows = qkv.glm_qkv_rows(GLM_VOICE_CONFIG)
    assert rows == [("q", 4096), ("k", 256), ("v", 256)]
    assert sum(r for _, r in rows) == 4608
    assert qkv.block_splits(GLM_VOICE_CONFIG) == {qkv.QKV_PATTERN: rows}
    assert qkv.block_splits({"num_attention_heads": 4, "hidden_size": 64, "num_key_value_heads": 2}) == {}
    with pytest.raises(SiftError, match="interleaves q, k, v per head"):
        qkv.glm_qkv_rows({**GLM_VOICE_CONFIG, "multi_query_attention": False})
    with pytest.raises(SiftError, match="does not divide"):
        qkv.glm_qkv_rows({**GLM_VOICE_CONFIG, "multi_query_group_num": 3})


def test_training_plan_gates_glm_qkv_slices_apart() -> None:
    """`sift train` routes GLM's fused matrix as three blocks, checks K against each slice, and logs
    them under components qkv.q / qkv.k / qkv.v; optim.split_fused_qkv=false keeps one block."""
    name = "transformer.encoder.layers.3.self_attention.query_key_value.weight"
    named = [(name, nn.Parameter(torch.empty(4608, 4096, device="meta")))]
    optim = OptimSpec(k=128)
    (route,) = plan_routes(named, optim, GLM_VOICE_CONFIG)
    blocks = route.blocks()
    assert [(b.name, b.shape) for b in blocks] == [
        (f"{name}[q]", (4096, 4096)), (f"{name}[k]", (256, 4096)), (f"{name}[v]", (256, 4096))
    ]
    assert [naming.component(b.name) for b in blocks] == ["qkv.q", "qkv.k", "qkv.v"]
    assert {naming.layer_index(b.name) for b in blocks} == {3}
    with pytest.raises(SiftError, match=r"optim.k=512 is larger than block .*query_key_value.weight\[k\] \(256, 4096\)"):
        plan_routes(named, OptimSpec(k=512), GLM_VOICE_CONFIG)
    (whole,) = plan_routes(named, OptimSpec(k=512, split_fused_qkv=False), GLM_VOICE_CONFIG)
    assert [b.name for b in whole.blocks()] == [name]


def test_dry_run_plan_lists_the_qkv_blocks_and_sizes_their_caches() -> None:
    """The plan shows the Q, K and V slices; the memory estimate counts the subspace caches the engine
    allocates: one warm basis per slice and objective with a sketch narrower than the slice, none at full K."""
    from sift_cli.engine import SiftOptimizer
    from sift_cli.engine.linalg import sketch_width
    from sift_cli.memory import layout_bytes
    from sift_cli.training.plan import optimizer_config, plan

    class TinyGlm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = {**GLM_VOICE_CONFIG, "num_attention_heads": 4, "hidden_size": 32, "kv_channels": 8}
            layer = nn.Module()
            layer.self_attention = nn.Module()
            layer.self_attention.query_key_value = nn.Linear(32, 64, bias=False)
            self.transformer = nn.Module()
            self.transformer.encoder = nn.Module()
            self.transformer.encoder.layers = nn.ModuleList([layer])

    spec = resolve_spec(app="speech", assignments=["optim.k=null", r"train.trainable=query_key_value\.weight"])
    model = TinyGlm()
    (row,) = plan(spec, model)
    assert row.route == "spectral" and row.candidate
    assert row.blocks == (("q", (32, 32)), ("k", (16, 32)), ("v", (16, 32)))
    named = list(model.named_parameters())
    full_k = SiftOptimizer(named, optimizer_config(spec.optim, model.config))
    assert "subspace caches" not in layout_bytes(full_k)
    k4 = SiftOptimizer(named, optimizer_config(spec.optim.__class__(k=4), model.config))
    left = (32 + 16 + 16) * 4  # each slice's rows x K left vectors
    right = 3 * 32 * sketch_width(4)  # each slice's columns x the warm basis width
    assert layout_bytes(k4)["subspace caches"] == 2 * (left + right) * 2  # f and g, bf16
