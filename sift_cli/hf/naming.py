"""Where a weight block sits in a transformer: its layer index and component, read from its name."""

from __future__ import annotations

import re

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_LORA = re.compile(r"\.lora_([AB])\.[^.]+\.weight$")
"""A LoRA factor's weight, `....down_proj.lora_A.default.weight`: labelled by its module and factor, `down.A`."""

COMPONENTS = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "query_key_value": "qkv",
    "dense": "o",
    "dense_h_to_4h": "up",
    "dense_4h_to_h": "down",
}


def layer_index(name: str) -> int:
    """Layer number of a parameter name, or -1 for parameters outside the layer stack."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else -1


def component(name: str) -> str:
    """Short component label (q, k, v, o, gate, up, down, qkv...) of a parameter name.

    Falls back to the module's own name so unknown architectures still get a readable label. A row slice
    of a fused matrix, `...query_key_value.weight[q]`, is labelled by both: `qkv.q`; a LoRA factor by its
    module and factor: `down.A`.
    """
    adapter = _LORA.search(name)
    if adapter:
        return f"{component(name[: adapter.start()] + '.weight')}.{adapter.group(1)}"
    if name.endswith("]") and "[" in name:
        base, label = name[:-1].rsplit("[", 1)
        return f"{component(base)}.{label}"
    parts = name.split(".")
    module = parts[-2] if len(parts) >= 2 and parts[-1] in ("weight", "bias") else parts[-1]
    return COMPONENTS.get(module, module)
