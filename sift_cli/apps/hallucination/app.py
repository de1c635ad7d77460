"""Hallucination mitigation on RAGTruth: f keeps the faithful response tokens likely, g pushes the hallucinated ones down.

f is the cross-entropy of the response tokens outside every hallucinated span (prompt masked). g is
either the paper's negative cross-entropy of the hallucinated tokens, which is unbounded below (a
model can drive it to -inf by making those tokens impossible, at any cost to everything else), or
unlikelihood, -log(1 - p), which tends to zero, and stops pulling, once a hallucinated token is unlikely.
Evaluation scores the held-out labelled responses teacher-forced, generates answers to the held-out
prompts and asks an LLM judge for their hallucinated spans, and runs lm-eval utility tasks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from rich.console import Console
from torch import nn

from sift_cli.apps.base import Batch, CompareMetrics, EvalOptions, Fit, Metric, Objectives, ScoredRows
from sift_cli.apps.batching import (
    IGNORE,
    label_collator,
    label_log_probs,
    labelled_objectives,
    pad_id,
    per_example_nll,
)
from sift_cli.apps.hallucination import ragtruth
from sift_cli.apps.hallucination.options import Options
from sift_cli.errors import SiftError
from sift_cli.evaluation.judge import endpoint_judge
from sift_cli.output import summary
from sift_cli.store.prepared import PreparedData, check_output, write_prepared

if TYPE_CHECKING:
    from sift_cli.spec import RunSpec
    from sift_cli.store.rundir import RunDir

APP = "hallucination"
EVAL_TABLES = ("test",)
DEFAULT_TRAINABLE = r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight"
ANSWERS_FILE = "hallucination_answers.jsonl"
COMPARE_GRID = {"adamw": [1e-4, 3e-4], "muon": [1e-4, 3e-4], "sift": [1e-4, 3e-4]}
"""`sift compare`'s default learning rates: the CPU preset's 1e-4 and 3x it, since comparisons run
fewer steps than the preset (`match_rms_adamw` makes one lr mean the same update size for all three)."""
COMPARE_METRICS = CompareMetrics(
    utility=Metric("faithful_nll", "faithful-token NLL", higher_is_better=False),
    constraint=Metric("hallucinated_nll", "hallucinated-token NLL", higher_is_better=True),
)
"""Per held-out labelled response, teacher-forced: the mean NLL of its faithful tokens (f's tokens), and,
for responses with a hallucinated span, the mean NLL of its hallucinated tokens (g's tokens): mitigation
makes those unlikely, so higher is better."""


def prepare(
    output: Path,
    source: str = ragtruth.DEFAULT_SOURCE,
    filters: ragtruth.Filters = ragtruth.Filters(),
    console: Console | None = None,
) -> PreparedData:
    """Filter RAGTruth into train/test tables of responses with character spans, and a manifest that says how."""
    from sift_cli.hf.loading import cache_dir

    local = not source.startswith(("http://", "https://"))
    check_output(Path(output), [source] if local else [])
    cache = cache_dir() / "ragtruth" / hashlib.sha256(source.encode()).hexdigest()[:16]
    directory = ragtruth.fetch_sources(source, cache)
    splits, dropped, relocated = ragtruth.load_examples(directory, filters)
    for split, examples in splits.items():
        if not examples:
            raise SiftError(
                f"no {split} responses are left after the filters (dropped: {_dropped_text(dropped)}); loosen --task-type/--generator/--quality"
            )
    stats = {
        f"{split}_{name}": value
        for split, examples in splits.items()
        for name, value in (
            ("with_spans", sum(1 for e in examples if e.spans)),
            ("spans", sum(len(e.spans) for e in examples)),
            ("ignored_spans", sum(len(e.ignored) for e in examples)),
        )
    }
    if stats["train_with_spans"] == 0:
        raise SiftError("no train response has a counted hallucination span, so g has no data; widen --label-type")
    prepared = write_prepared(
        output,
        APP,
        {split: [example.row() for example in examples] for split, examples in splits.items()},
        sources={
            "ragtruth": source,
            "files": [ragtruth.RESPONSE_FILE, ragtruth.SOURCE_FILE],
            "spans": "end-exclusive character offsets into `response`; token labels are computed at train time with the run's tokenizer",
        },
        filters={**filters.manifest(), "dropped": dropped, "spans": stats, "relocated_spans": relocated},
        inputs=[source] if local else [],
    )
    if console is not None:
        if any(dropped.values()):
            console.print(f"dropped responses: {_dropped_text(dropped)}")
        if relocated:
            console.print(f"re-located {relocated} label spans whose offsets were off their text by a few characters")
        counts = ", ".join(f"{split} {len(examples)} ({stats[f'{split}_with_spans']} with spans)" for split, examples in splits.items())
        summary(console, f"prepared {counts}", output)
    return prepared


def _dropped_text(dropped: dict[str, int]) -> str:
    return ", ".join(f"{count} by {name}" for name, count in dropped.items() if count) or "none"


def encode(tokenizer: Any, example: ragtruth.Example, max_length: int) -> dict[str, list[int]]:
    """Chat-formatted prompt + response + end of turn, with f and g targets at the response tokens.

    The response is tokenized on its own so that its offset mapping lines up with RAGTruth's
    character spans; its labels are then shifted by the prompt's length. Over `max_length`, the
    prompt loses its beginning first (keeping at least half the budget), then the response its end.
    """
    from sift_cli.evaluation.generate import prompt_ids

    prompt = prompt_ids(tokenizer, example.prompt)
    encoded = tokenizer(example.response, add_special_tokens=False, return_offsets_mapping=True)
    response = list(encoded["input_ids"])
    offsets = [tuple(pair) for pair in encoded["offset_mapping"]]
    hallucinated = ragtruth.overlaps(offsets, example.spans)
    ignored = ragtruth.overlaps(offsets, example.ignored)
    response.append(tokenizer.eos_token_id)
    hallucinated.append(False)
    ignored.append(False)
    prompt_budget = min(len(prompt), max(max_length - len(response), max_length // 2))
    prompt = prompt[len(prompt) - prompt_budget :]
    keep = max_length - len(prompt)
    cut = len(response) > keep
    response, hallucinated, ignored = response[:keep], hallucinated[:keep], ignored[:keep]
    f_labels = [IGNORE] * len(prompt) + [t if not (h or i) else IGNORE for t, h, i in zip(response, hallucinated, ignored)]
    g_labels = [IGNORE] * len(prompt) + [t if h else IGNORE for t, h in zip(response, hallucinated)]
    return {"input_ids": prompt + response, "f_labels": f_labels, "g_labels": g_labels, "cut": cut}


def loss_f(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the faithful response tokens."""
    return -label_log_probs(model, batch)[0].mean()


def neg_ce(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The paper's g: minus the mean cross-entropy of hallucinated tokens, i.e. their mean log-probability."""
    return label_log_probs(model, batch)[0].mean()


def unlikelihood(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean -log(1 - p) of hallucinated tokens: bounded below by 0, flat once they are unlikely."""
    log_p = label_log_probs(model, batch)[0]
    return -torch.log(torch.clamp(-torch.expm1(log_p), min=1e-6)).mean()


G_LOSSES = {"neg_ce": neg_ce, "unlikelihood": unlikelihood}


def encode_split(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int) -> list[dict[str, list[int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise SiftError("the hallucination app maps character spans to tokens and needs a fast tokenizer; use a model with tokenizer.json")
    return [encode(tokenizer, ragtruth.Example.from_row(row), max_length) for row in rows]


def build_objectives(model: nn.Module, tokenizer: Any, spec: RunSpec, data: PreparedData) -> Objectives:
    options = spec.options(Options)
    rows = data.rows("train")
    encoded = encode_split(tokenizer, rows, spec.data.max_length)
    f_data = [item for item in encoded if any(label != IGNORE for label in item["f_labels"])]
    g_data = [item for item in encoded if any(label != IGNORE for label in item["g_labels"])]
    with_spans = sum(1 for row in rows if row["spans"])
    if not g_data:
        raise SiftError(
            f"no hallucinated token survives data.max_length={spec.data.max_length} in {data.path}; raise data.max_length"
        )
    if not f_data:
        raise SiftError(f"no faithful response token survives data.max_length={spec.data.max_length}; raise data.max_length")
    objectives = labelled_objectives(tokenizer, f_data, g_data, loss_f, G_LOSSES[options.g_loss])
    objectives.fits = {
        "f": Fit(total=len(encoded), dropped=len(encoded) - len(f_data), cut=sum(item["cut"] for item in f_data)),
        "g": Fit(total=with_spans, dropped=with_spans - len(g_data), cut=sum(item["cut"] for item in g_data)),
    }
    return objectives


JUDGE_SYSTEM = "You check generated text against its source for hallucinations and answer only with JSON."
JUDGE_TEMPLATE = (
    "Below is the source material:\n{reference}\n\n"
    "Below is a response written from that source:\n{answer}\n\n"
    "Does the response contain either of these kinds of hallucination?\n"
    "1. conflict: a statement that contradicts the source;\n"
    "2. baseless info: information that is not supported by and cannot be inferred from the source.\n"
    'Reply with a JSON object {{"hallucination list": [span1, span2, ...]}} that lists each hallucinated span '
    'copied from the response, or {{"hallucination list": []}} if there is none.'
)


def judge_messages(reference: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_TEMPLATE.format(reference=reference, answer=answer)},
    ]


def parse_verdict(reply: str) -> list[str]:
    """The hallucinated spans a judge listed; ValueError when the reply holds no such list."""
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the judge's reply")
    try:
        verdict = json.loads(reply[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"judge's JSON is malformed ({exc.msg})") from None
    spans = verdict.get("hallucination list") if isinstance(verdict, dict) else None
    if not isinstance(spans, list) or not all(isinstance(span, str) for span in spans):
        raise ValueError('judge\'s JSON lacks a "hallucination list" of strings')
    return spans


def judge_answers(judge: Any, examples: Sequence[ragtruth.Example], answers: Sequence[str]) -> tuple[list[dict[str, Any]], str | None]:
    """One record per answer: the listed spans, or the error that kept it from being judged (a fixed
    summary such as the HTTP status, never the endpoint's words); and the line saying how many calls
    failed and why the first did. Every call failing is an error."""
    from sift_cli.evaluation.judge import JudgeError, require_some_judged

    records = []
    failures: list[JudgeError] = []
    for example, answer in zip(examples, answers):
        record: dict[str, Any] = {"id": example.id, "task_type": example.task_type, "answer": answer}
        try:
            reply = judge.complete(judge_messages(example.reference, answer))
        except JudgeError as exc:
            failures.append(exc)
            records.append({**record, "hallucinated": None, "error": str(exc)})
            continue
        try:
            spans = parse_verdict(reply)
        except ValueError as exc:
            records.append({**record, "hallucinated": None, "error": f"{exc}: {reply[:200]!r}"})
            continue
        records.append({**record, "hallucinated": bool(spans), "spans": spans})
    return records, require_some_judged(failures, len(records), "the hallucination answers")


def hallucination_rate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share of judged answers with at least one span; errors are reported, not counted as clean."""
    judged = [r for r in records if r["hallucinated"] is not None]
    flagged = sum(1 for r in judged if r["hallucinated"])
    return {
        "answers": len(records),
        "judged": len(judged),
        "errors": len(records) - len(judged),
        "hallucinated": flagged,
        "rate": flagged / len(judged) if judged else None,
    }


@torch.no_grad()
def held_out_scores(
    model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int, batch_size: int
) -> dict[str, Any]:
    """Teacher-forced test scores against the held-out labels: f's cross-entropy, and p of hallucinated tokens."""
    encoded = encode_split(tokenizer, rows, max_length)
    pad = pad_id(tokenizer)
    was_training = model.training
    model.eval()
    faithful = _labelled_log_probs(model, encoded, "f_labels", pad, batch_size)
    hallucinated = _labelled_log_probs(model, encoded, "g_labels", pad, batch_size)
    model.train(was_training)
    return {
        "faithful_token_ce": -faithful.mean().item() if faithful.numel() else None,
        "hallucinated_token_logp": hallucinated.mean().item() if hallucinated.numel() else None,
        "hallucinated_token_p": hallucinated.exp().mean().item() if hallucinated.numel() else None,
        "faithful_tokens": faithful.numel(),
        "hallucinated_tokens": hallucinated.numel(),
    }


def compare_examples(spec: RunSpec, data: PreparedData) -> dict[str, list[Any]]:
    """The held-out (`test`) responses, in two groups, with and without a hallucinated span, so that
    both the validation and the test half get their share of the responses g's metric is scored on."""
    rows = data.rows("test")
    groups = {"with_spans": [row for row in rows if row["spans"]], "without_spans": [row for row in rows if not row["spans"]]}
    if not groups["with_spans"]:
        raise SiftError(f"no held-out (test) response in {data.path} has a hallucinated span to compare on")
    return {name: found for name, found in groups.items() if found}


def compare_scores(model: nn.Module, tokenizer: Any, spec: RunSpec, groups: dict[str, list[Any]], batch_size: int) -> dict[str, ScoredRows]:
    """`faithful_nll` per response with a faithful token, `hallucinated_nll` per response with a
    hallucinated token left after `data.max_length`."""
    rows = [row for found in groups.values() for row in found]
    encoded = encode_split(tokenizer, rows, spec.data.max_length)
    pad = pad_id(tokenizer)
    scores = {}
    for metric, key in (("faithful_nll", "f_labels"), ("hallucinated_nll", "g_labels")):
        kept = [i for i, item in enumerate(encoded) if any(label != IGNORE for label in item[key])]
        scores[metric] = ([rows[i] for i in kept], per_example_nll(model, [encoded[i] for i in kept], key, pad, batch_size))
    return scores


def compare_cluster(row: dict[str, Any]) -> str:
    """The responses to one source passage are one cluster: they share the passage and its facts."""
    return str(row["source_id"])


def _labelled_log_probs(
    model: nn.Module, encoded: Sequence[dict[str, list[int]]], key: str, pad_id: int, batch_size: int
) -> torch.Tensor:
    items = [item for item in encoded if any(label != IGNORE for label in item[key])]
    collate = label_collator(key, pad_id)
    device = next(model.parameters()).device
    chunks = [
        label_log_probs(model, {k: v.to(device) for k, v in collate(items[i : i + batch_size]).items()})[0].cpu()
        for i in range(0, len(items), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0)


def evaluate(model: nn.Module, tokenizer: Any, spec: RunSpec, run: RunDir | None, options: EvalOptions) -> dict:
    """Held-out label scores, the judged hallucination rate of generated answers, and lm-eval utility."""
    from sift_cli.store.atomic import write_jsonl
    from sift_cli.store.rundir import held_out_data

    opts = options.objective(Options, spec)
    data = held_out_data(spec, run)
    rows = data.rows("test")[: options.limit]
    results: dict[str, Any] = {
        "held_out": held_out_scores(model, tokenizer, rows, spec.data.max_length, options.batch_size)
    }
    if opts.judge != "none":
        from sift_cli.evaluation.generate import generate
        from sift_cli.evaluation.judge import describe

        judge = endpoint_judge(opts.judge, opts)
        examples = [ragtruth.Example.from_row(row) for row in rows]
        answers = generate(
            model,
            tokenizer,
            [example.prompt for example in examples],
            max_new_tokens=opts.max_new_tokens,
            batch_size=options.batch_size,
            max_prompt_tokens=spec.data.max_length,
        )
        records, failed = judge_answers(judge, examples, answers)
        if run is not None:
            write_jsonl(run.eval_dir / ANSWERS_FILE, records)
        results["hallucination"] = {**hallucination_rate(records), "judge": describe(judge)}
        if failed:
            results["hallucination"]["failed_calls"] = failed
    tasks = options.tasks if options.tasks is not None else opts.utility_tasks
    if tasks:
        from sift_cli.evaluation.lmeval import run_tasks

        results["utility"] = run_tasks(
            model, tokenizer, tasks, limit=options.limit, batch_size=options.batch_size, progress=options.progress
        )
    return results
