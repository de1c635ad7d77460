"""What makes a run exactly repeatable: seeded data order, the learning-rate schedule, every RNG's
state, deterministic kernels, and the environment a run records beside its results."""

from __future__ import annotations

import math
import os
import platform
import random
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

import sift_cli


@dataclass
class IndexStream:
    """Endless, seeded, epoch-wise shuffled indices; `position` alone restores where it was."""

    size: int
    seed: int
    position: int = 0

    def take(self, count: int) -> list[int]:
        indices = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.size)
            indices.append(int(self._permutation(epoch)[offset]))
            self.position += 1
        return indices

    def _permutation(self, epoch: int) -> torch.Tensor:
        if getattr(self, "_cached_epoch", None) != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cached = torch.randperm(self.size, generator=generator)
            self._cached_epoch = epoch
        return self._cached


def lr_multiplier(train: Any) -> Callable[[int], float]:
    """Warm-up then constant, linear or cosine decay, as a LambdaLR factor of the step index."""

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / (train.warmup_steps + 1)
        progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
        if train.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if train.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG's state in types that `torch.load(weights_only=True)` accepts (no numpy arrays)."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                   "has_gauss": has_gauss, "cached_gaussian": cached_gaussian}  # fmt: skip
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
         numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    )  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_deterministic(on: bool) -> None:
    """torch's deterministic algorithms, or its defaults. cuBLAS needs a fixed workspace for
    deterministic matrix products, set before its first use; ops without a deterministic version raise."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on


def environment(device: torch.device, world_size: int, seed: int, parallel: str) -> dict[str, Any]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sift": sift_cli.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "world_size": world_size,
        "parallel": parallel if world_size > 1 else "none",
        "seed": seed,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
