"""Experiment trackers (`train.report_to`): the run's metrics also go to TensorBoard or Weights & Biases.

`metrics.jsonl` stays the record `localize` and `evaluate` read; a tracker is a view for people who
follow runs the way TRL, axolotl and torchtune users do. Both go through accelerate's tracker API, so a
multi-process run logs from its main process only. A missing package is reported before anything is
written or loaded, in one line naming the extra to install.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from typing import Any, Iterable

from sift_cli.errors import SiftError
from sift_cli.hf import naming

PROJECT = "sift"
TENSORBOARD_DIR = "tensorboard"
"""The TensorBoard event files go to run_dir/tensorboard/ (`tensorboard --logdir run_dir`)."""
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_tracker(report_to: str) -> None:
    """Refuse a tracker whose package is missing: one line with the install command."""
    if report_to == "none":
        return
    try:
        importlib.import_module(PACKAGES[report_to])
    except ImportError:
        raise SiftError(
            f"train.report_to={report_to} needs the {report_to} package; "
            f"pip install 'sift-cli[{report_to}]' or set train.report_to=none"
        ) from None


def accelerator_kwargs(report_to: str, run_path: Any) -> dict[str, Any]:
    """The Accelerator arguments that attach the tracker; none for `report_to: none`."""
    if report_to == "none":
        return {}
    return {"log_with": report_to, "project_dir": str(run_path)}


def start(accelerator: Any, report_to: str, spec: dict[str, Any], run_name: str) -> None:
    """Open the tracker with the resolved spec as its run configuration (hyperparameters)."""
    if report_to == "none":
        return
    init_kwargs = {"tensorboard": {}} if report_to == "tensorboard" else {"wandb": {"name": run_name}}
    project = TENSORBOARD_DIR if report_to == "tensorboard" else PROJECT
    accelerator.init_trackers(project, config=flat_config(spec), init_kwargs=init_kwargs)


def flat_config(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The spec as dotted scalar keys: trackers store hyperparameters as numbers, strings and booleans."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def conflict_share(blocks: Iterable[Any]) -> dict[str, float]:
    """Per layer, the share of its gated blocks that took the SIFT branch (f and g conflicted) this step,
    keyed `conflict_share/layer_NN` (`conflict_share/other` for blocks outside the layer stack)."""
    fired: dict[str, list[bool]] = defaultdict(list)
    for block in blocks:
        layer = naming.layer_index(block.name)
        key = "other" if layer < 0 else f"layer_{layer:02d}"
        fired[key].append(block.branch == "sift")
    return {f"conflict_share/{key}": sum(flags) / len(flags) for key, flags in sorted(fired.items())}
