"""Unlearning with RMU (the WMDP paper's Representation Misdirection for Unlearning).

f (keep utility): MSE between the updated and the frozen initial model's layer-L activations on retain
text. g (unlearn): MSE between the updated model's layer-L activations on forget text and a fixed random
control vector c*u/|u|, u ~ U[0,1)^d, one per forget source as in the released RMU code. Both losses
only need the embedding and decoder layers 0..L, so every forward stops after layer L, and the frozen
copy holds only those layers.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from sift_cli.apps.base import Batch, CompareMetrics, EvalOptions, Fit, Metric, Objectives, ScoredRows
from sift_cli.apps.unlearning.options import Options
from sift_cli.errors import SiftError, first_line
from sift_cli.evaluation import lmeval
from sift_cli.output import summary
from sift_cli.store.prepared import (
    PreparedData,
    check_output,
    read_table,
    write_prepared,
)

if TYPE_CHECKING:
    from sift_cli.spec import RunSpec
    from sift_cli.store.rundir import RunDir

APP = "unlearning"
EVAL_TABLES = ("forget_eval", "retain_eval")
DEFAULT_TRAINABLE = r"layers\.(5|6|7)\.mlp\.down_proj"
DEFAULT_TASKS = ["wmdp_bio", "wmdp_cyber", "mmlu"]
COMPARE_GRID = {"adamw": [1e-3, 3e-3], "muon": [1e-2, 2e-2], "sift": [2e-2, 5e-2]}
"""`sift compare`'s default learning rates for the CPU preset: around each method's rate in sift_cli/demo."""
COMPARE_METRICS = CompareMetrics(
    utility=Metric("retain_nll", "retain NLL", higher_is_better=False),
    constraint=Metric("forget_nll", "forget NLL", higher_is_better=True),
)
"""Per held-out text, mean NLL per token: forgetting raises it on forget text and should not on retain text."""

CYBER_CORPUS = ("cais/wmdp-corpora", "cyber-forget-corpus", "train")
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")
BIO_HELP = (
    "the WMDP bio forget corpus is gated: request access at https://huggingface.co/datasets/cais/wmdp-bio-forget-corpus, "
    "download its jsonl and pass the file instead (--forget path/to/bio_remove_dataset.jsonl)"
)
HELDOUT_EVERY = 10
HELDOUT_MAX = 200


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass at a decoder layer, carrying that layer's output."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (embedding + `layers`) of a Llama/Mistral/Qwen-style causal LM."""
    base = _unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    if not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        raise SiftError(
            f"{type(base).__name__} has no decoder `layers` list; RMU unlearning supports Llama-style models "
            "(Llama, Mistral, Qwen, SmolLM, zephyr)"
        )
    return decoder


def layer_output(model: nn.Module, layer: nn.Module, batch: Batch) -> torch.Tensor:
    """The output of `layer` on `batch`; the forward pass stops there (no later layers, no LM head)."""

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        raise _Stop(output[0] if isinstance(output, tuple) else output)

    handle = layer.register_forward_hook(stop)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    except _Stop as stopped:
        return stopped.hidden
    finally:
        handle.remove()
    raise SiftError(f"the forward pass of {type(model).__name__} never reached the steered layer; check objective.layer")


def masked_mse(activations: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden units of real (non-padding) tokens, in fp32.

    Without padding this equals `F.mse_loss`, the released RMU code's scale, so its c and alpha carry over.
    """
    per_token = (activations.float() - target.float()).pow(2).mean(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


def control_vectors(topics: int, hidden: int, coeff: float, seed: int) -> torch.Tensor:
    """One fixed direction c*u/|u| per forget source, u with entries uniform in [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(topics, hidden, generator=generator)
    return coeff * u / u.norm(dim=-1, keepdim=True)


class FrozenPrefix(nn.Module):
    """The initial model's embedding and decoder layers 0..L (retain targets) plus the control vectors.

    A module, so that the training loop moves it with the model.
    """

    def __init__(self, model: nn.Module, layer: int, control: torch.Tensor) -> None:
        super().__init__()
        decoder = decoder_of(model)
        layers = decoder.layers
        decoder.layers = nn.ModuleList(layers[: layer + 1])
        try:
            self.decoder = copy.deepcopy(decoder)
        finally:
            decoder.layers = layers
        self.decoder.requires_grad_(False).eval()
        self.register_buffer("control", control)

    @torch.no_grad()
    def activations(self, batch: Batch) -> torch.Tensor:
        return layer_output(self.decoder, self.decoder.layers[-1], batch)


def _check_layer(model: nn.Module, layer: int) -> None:
    count = len(decoder_of(model).layers)
    if layer >= count:
        raise SiftError(f"objective.layer={layer} but the model has {count} decoder layers; pick 0..{count - 1}")
    reached = {id(p) for p in _unwrap(model).get_input_embeddings().parameters()}
    reached |= {id(p) for block in decoder_of(model).layers[: layer + 1] for p in block.parameters()}
    for name, param in _unwrap(model).named_parameters():
        if param.requires_grad and id(param) not in reached:
            raise SiftError(
                f"train.trainable selects {name}, which RMU never reaches (it stops after layer {layer}); "
                f"train only layers <= {layer}, e.g. --set 'train.trainable={_layers_up_to(layer)}'"
            )


def _layers_up_to(layer: int) -> str:
    """The paper's choice at another depth: the down projections of the three layers ending at L."""
    indices = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
    return rf"layers\.({indices})\.mlp\.down_proj"


def build_objectives(model: nn.Module, tokenizer: Any, spec: RunSpec, data: PreparedData) -> Objectives:
    """f = retain MSE against the frozen initial model, g = forget MSE against the control vectors."""
    options = spec.options(Options)
    _check_layer(model, options.layer)
    forget = data.rows("forget", fields=("text",))
    retain = data.rows("retain", fields=("text",))
    if not forget or not retain:
        raise SiftError(f"{data.path} has no forget or no retain rows; re-run `sift prepare unlearning`")
    sources = list(dict.fromkeys(row.get("source", "forget") for row in forget))
    topic_of = {source: index for index, source in enumerate(sources)}
    forget_items = [{"text": row["text"], "topic": topic_of[row.get("source", "forget")]} for row in forget]
    hidden = _unwrap(model).get_input_embeddings().weight.shape[-1]
    control = control_vectors(len(sources), hidden, options.steering_coeff, options.control_seed)
    frozen = FrozenPrefix(model, options.layer, control)
    frozen.to(next(_unwrap(model).parameters()).device)
    max_length = spec.data.max_length

    def tokens(texts: list[str]) -> Batch:
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def collate_f(rows: list[dict[str, Any]]) -> Batch:
        return tokens([row["text"] for row in rows])

    def collate_g(rows: list[dict[str, Any]]) -> Batch:
        batch = tokens([row["text"] for row in rows])
        batch["topic"] = torch.tensor([row["topic"] for row in rows], dtype=torch.long)
        return batch

    def steered(model: nn.Module, batch: Batch) -> torch.Tensor:
        return layer_output(model, decoder_of(model).layers[options.layer], batch)

    def loss_f(model: nn.Module, batch: Batch) -> torch.Tensor:
        return masked_mse(steered(model, batch), frozen.activations(batch), batch["attention_mask"])

    def loss_g(model: nn.Module, batch: Batch) -> torch.Tensor:
        target = frozen.control[batch["topic"]].unsqueeze(1)
        return masked_mse(steered(model, batch), target, batch["attention_mask"])

    return Objectives(
        f_data=retain,
        g_data=forget_items,
        collate_f=collate_f,
        collate_g=collate_g,
        loss_f=loss_f,
        loss_g=loss_g,
        modules=[frozen],
        fits={"f": _fit(tokenizer, retain, max_length), "g": _fit(tokenizer, forget, max_length)},
    )


def _fit(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Fit:
    """Texts longer than `max_length` tokens are cut (RMU steers the activations of the tokens kept)."""
    lengths = [len(ids) for ids in tokenizer([row["text"] for row in rows])["input_ids"]]
    return Fit(total=len(rows), cut=sum(length > max_length for length in lengths))


def evaluate(model: nn.Module, tokenizer: Any, spec: RunSpec, run: RunDir | None, options: EvalOptions) -> dict[str, Any]:
    """lm-eval accuracies (WMDP, MMLU, or local MCQ files) and held-out forget/retain perplexity.

    Perplexity reads the held-out rows the run copied from its prepared data (`--limit` caps them too,
    and `perplexity_texts` says how many were scored).
    """
    from sift_cli.store.rundir import held_out_data

    data = held_out_data(spec, run)
    tasks = DEFAULT_TASKS if options.tasks is None else options.tasks
    results: dict[str, Any] = {}
    if tasks:
        results["lm_eval"] = lmeval.run_tasks(
            model, tokenizer, tasks, limit=options.limit, batch_size=options.batch_size, progress=options.progress
        )
    held_out = {name: texts[: options.limit] for name, texts in heldout_texts(data).items()}
    if held_out:
        results["perplexity"] = {
            name: perplexity(model, tokenizer, texts, spec.data.max_length, options.batch_size)
            for name, texts in held_out.items()
        }
        results["perplexity_texts"] = {name: len(texts) for name, texts in held_out.items()}
    return results


def perplexity(model: nn.Module, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> float:
    """Token-level perplexity exp(total NLL / predicted tokens) over `texts`, each cut to `max_length` tokens."""
    nll, tokens = text_nll(model, tokenizer, texts, max_length, batch_size)
    if tokens.sum() == 0:
        raise SiftError("no tokens to score for perplexity; the held-out texts are empty")
    return math.exp(float(nll.sum()) / float(tokens.sum()))


@torch.no_grad()
def text_nll(
    model: nn.Module, tokenizer: Any, texts: list[str], max_length: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per text: summed next-token NLL and the number of predicted tokens (each text cut to `max_length`).

    Kept per text so that a comparison can resample texts and pair two models text by text."""
    model.eval()
    device = next(model.parameters()).device
    sums, counts = [], []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], use_cache=False).logits
        targets = encoded["input_ids"][:, 1:]
        mask = encoded["attention_mask"][:, 1:].bool() & encoded["attention_mask"][:, :-1].bool()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
        sums.append((nll * mask).sum(dim=1).double().cpu())
        counts.append(mask.sum(dim=1).cpu())
    if not sums:
        return np.zeros(0), np.zeros(0)
    return torch.cat(sums).numpy(), torch.cat(counts).numpy()


def compare_examples(spec: RunSpec, data: PreparedData) -> dict[str, list[str]]:
    """The held-out forget and retain texts (`sift compare` splits each into validation and test)."""
    texts = heldout_texts(data)
    if set(texts) != {"forget", "retain"}:
        raise SiftError(f"the prepared data at {data.path} has no held-out forget and retain texts to compare on")
    return texts


def compare_scores(model: nn.Module, tokenizer: Any, spec: RunSpec, groups: dict[str, list[str]], batch_size: int) -> dict[str, ScoredRows]:
    """`forget_nll` and `retain_nll`: each held-out text's mean NLL per token."""
    scores = {}
    for topic, texts in groups.items():
        nll, tokens = text_nll(model, tokenizer, texts, spec.data.max_length, batch_size)
        scores[f"{topic}_nll"] = (texts, (nll / np.maximum(tokens, 1)).tolist())
    return scores


def heldout_texts(data: PreparedData) -> dict[str, list[str]]:
    """The held-out texts of each topic ("forget", "retain") that perplexity and comparisons score."""
    return {
        name: [row["text"] for row in data.rows(table, fields=("text",))]
        for name, table in (("forget", "forget_eval"), ("retain", "retain_eval"))
        if data.manifest["counts"].get(table)
    }


def prepare(
    output: Path,
    forget: list[str],
    retain: str,
    min_chars: int = 50,
    max_rows: int | None = None,
    console: Console | None = None,
) -> PreparedData:
    """Forget text (WMDP cyber corpus or local files) and retain text (wikitext or a local file).

    Rows of at most `min_chars` characters are dropped (wikitext's headings and blank lines), each source
    contributes at most `max_rows` rows, and every 10th row (at most 200 per table) is held out for
    perplexity in `sift evaluate`.
    """
    if not forget:
        raise SiftError("no forget source given; pass --forget cyber or --forget FILE.jsonl (repeatable)")
    if min_chars < 0:
        raise SiftError(f"--min-chars {min_chars} must be 0 or more")
    if max_rows is not None and max_rows < 1:
        raise SiftError(f"--max-rows {max_rows} must be at least 1")
    local_inputs = [entry for entry in (*forget, retain) if entry not in ("cyber", "bio", "wikitext")]
    check_output(Path(output), local_inputs)
    forget_rows: list[dict[str, str]] = []
    forget_sources = []
    for entry in dict.fromkeys(forget):
        texts, source = _forget_texts(entry)
        kept = _filter(texts, min_chars, max_rows, f"forget source {entry!r}")
        forget_rows += [{"text": text, "source": entry} for text in kept]
        forget_sources.append({"name": entry, **source, "rows_read": len(texts), "rows_kept": len(kept)})
    retain_texts, retain_source = _retain_texts(retain)
    retain_kept = _filter(retain_texts, min_chars, max_rows, f"retain source {retain!r}")
    retain_rows = [{"text": text, "source": retain} for text in retain_kept]
    forget_train, forget_eval = _hold_out(forget_rows)
    retain_train, retain_eval = _hold_out(retain_rows)
    prepared = write_prepared(
        Path(output),
        APP,
        tables={"forget": forget_train, "retain": retain_train, "forget_eval": forget_eval, "retain_eval": retain_eval},
        sources={
            "forget": forget_sources,
            "retain": {"name": retain, **retain_source, "rows_read": len(retain_texts), "rows_kept": len(retain_kept)},
        },
        filters={
            "min_chars": min_chars,
            "max_rows_per_source": max_rows,
            "heldout": f"every {HELDOUT_EVERY}th row, at most {HELDOUT_MAX} per table",
        },
        inputs=local_inputs,
    )
    if console is not None:
        for source in [*forget_sources, prepared.manifest["sources"]["retain"]]:
            dropped = source["rows_read"] - source["rows_kept"]
            if dropped:
                console.print(
                    f"dropped {dropped} of {source['rows_read']} rows of {source['name']!r} "
                    f"(at most {min_chars} characters, or past --max-rows)"
                )
        counts = prepared.manifest["counts"]
        summary(
            console,
            f"prepared forget {counts['forget']} (+{counts['forget_eval']} held out), "
            f"retain {counts['retain']} (+{counts['retain_eval']} held out)",
            output,
        )
    return prepared


def _forget_texts(entry: str) -> tuple[list[str], dict[str, Any]]:
    if entry == "cyber":
        return _hub_texts(*CYBER_CORPUS)
    if entry == "bio":
        raise SiftError(BIO_HELP)
    return _local_texts(entry, "--forget", "'cyber', 'bio'")


def _retain_texts(entry: str) -> tuple[list[str], dict[str, Any]]:
    if entry == "wikitext":
        return _hub_texts(*WIKITEXT)
    return _local_texts(entry, "--retain", "'wikitext'")


def _local_texts(entry: str, flag: str, names: str) -> tuple[list[str], dict[str, Any]]:
    path = Path(entry)
    if not path.is_file():
        raise SiftError(f"{flag} {entry!r} is not {names} or an existing file; pass a .jsonl/.json/.parquet file with a text column")
    rows = read_table(path, fields=["text"])
    return [str(row["text"]) for row in rows if row.get("text") is not None], {"file": str(path.resolve())}


def _hub_texts(repo: str, config: str, split: str) -> tuple[list[str], dict[str, Any]]:
    from datasets import load_dataset

    from sift_cli.hf.hub import require_hub

    require_hub(f"the dataset {repo}")
    try:
        dataset = load_dataset(repo, config, split=split)
    except Exception as exc:
        reason = first_line(exc)
        raise SiftError(f"cannot load {repo} ({config}) from the Hugging Face hub: {reason}; go online or pass a local file") from None
    return [str(text) for text in dataset["text"]], {"hub": repo, "config": config, "split": split}


def _filter(texts: list[str], min_chars: int, max_rows: int | None, what: str) -> list[str]:
    kept = [text for text in texts if len(text) > min_chars][:max_rows]
    if not kept:
        raise SiftError(f"{what} has no rows longer than {min_chars} characters; lower --min-chars or check the file")
    return kept


def _hold_out(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Every HELDOUT_EVERY-th row (up to HELDOUT_MAX) for evaluation, the rest for training."""
    picked = set(range(HELDOUT_EVERY - 1, len(rows), HELDOUT_EVERY)[:HELDOUT_MAX])
    return [r for i, r in enumerate(rows) if i not in picked], [r for i, r in enumerate(rows) if i in picked]
