"""LoRA adapters through peft, injected into the model in place (no wrapper class), so that the apps'
objectives, hooks, DDP and the checkpoints see the same module tree as in full fine-tuning; only the
parameter names gain `.lora_A.default` / `.lora_B.default` and only those factors train.

A run's `model/` then holds the adapter as peft writes it (adapter_config.json and
adapter_model.safetensors), which `PeftModel.from_pretrained(base, run/model)` loads, and with
`train.lora.merge` the merged full model in `model/merged/`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from sift_cli.errors import SiftError

if TYPE_CHECKING:
    from sift_cli.spec import LoraSpec

ADAPTER = "default"
ADAPTER_PARAMETERS = r"\.lora_[AB]\."
"""What a LoRA run trains: the factors' weights, by name."""
ADAPTER_CONFIG = "adapter_config.json"
MERGED = "merged"
"""model/merged/: the merged full model of a LoRA run with train.lora.merge."""


def target_modules(model: nn.Module, lora: LoraSpec, trainable: str) -> list[str]:
    """The linear modules to adapt: those whose name `lora.target_modules` matches whole, or else those
    whose weight the run's trainable regex selects."""
    pattern = re.compile(lora.target_modules) if lora.target_modules else None
    wanted = re.compile(trainable)
    names = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (pattern.fullmatch(name) if pattern else wanted.search(f"{name}.weight"))
    ]  # fmt: skip
    if not names:
        what = f"train.lora.target_modules={lora.target_modules!r}" if pattern else f"train.trainable={trainable!r}"
        raise SiftError(f"{what} selects no linear module to adapt; check the regex against `sift train --dry-run`")
    return names


def add_adapters(model: nn.Module, lora: LoraSpec, trainable: str) -> nn.Module:
    """Inject LoRA factors (B starts at zero, so the model's outputs are unchanged) into the target
    modules; every other parameter is frozen by the caller's selection."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
        target_modules=target_modules(model, lora, trainable),
    )  # fmt: skip
    return inject_adapter_in_model(config, model, adapter_name=ADAPTER)


def is_adapter(directory: Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def save_adapter(model: nn.Module, directory: Path, base_model: str) -> None:
    """The factors as peft's own `save_pretrained` writes them (keys under `base_model.model.`, adapter
    name dropped), with the config naming the base model."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = model.peft_config[ADAPTER]
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(directory))
    weights = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    save_file({f"base_model.model.{key}": value.detach().cpu().contiguous() for key, value in weights.items()},
              str(Path(directory) / "adapter_model.safetensors"), metadata={"format": "pt"})  # fmt: skip


def merged(base: nn.Module, directory: Path) -> Any:
    """`base` with the adapter in `directory` merged into its weights: a plain transformers model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(directory)).merge_and_unload()
