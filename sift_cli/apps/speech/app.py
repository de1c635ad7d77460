"""Speech adaptation: teach a speech LM to answer in interleaved text and speech without losing the text.

Paper setting: GLM-4-Voice-9B on CoS-E, e-SNLI or OpenBookQA, each reply "Answer: D. outside.
Explanation: ..." spoken by a TTS voice, tokenized by the GLM-4-Voice speech tokenizer, and interleaved
13 text tokens : 26 speech tokens. f is the cross-entropy of the reply's text tokens (with the audio
wrappers and the end of turn), g that of its speech tokens (id >= `<|audio_0|>`); both come from the
same sequences. Each question is asked twice: as text, and as speech tokens (the audio-instruction
variant). Evaluation asks the held-out questions both ways and scores the text stream (X->text) and
the transcribed speech stream (X->audio) of each reply; the latter needs GLM-4-Voice's speech decoder
and a Whisper model.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from sift_cli.apps.base import Batch, CompareMetrics, EvalOptions, Fit, Metric, Objectives, ScoredRows
from sift_cli.apps.batching import IGNORE, label_log_probs, labelled_objectives, pad_id, per_example_nll
from sift_cli.apps.speech import prompts, sources
from sift_cli.apps.speech.answers import parse_answer
from sift_cli.apps.speech.options import Options
from sift_cli.apps.speech.tokens import (
    SpeechVocab,
    add_speech_tokens,
    interleave,
    label_streams,
    read_speech_vocab,
)
from sift_cli.apps.speech.tts import TtsBackend, choose_tts
from sift_cli.apps.speech.whisper_vq import (
    GLM_TOKENIZER,
    SpeechTokenizer,
    load_speech_tokenizer,
)
from sift_cli.errors import SiftError
from sift_cli.output import summary
from sift_cli.store.prepared import PreparedData, check_output, write_prepared

if TYPE_CHECKING:
    from sift_cli.spec import RunSpec
    from sift_cli.store.rundir import RunDir

APP = "speech"
EVAL_TABLES = ("test",)
# Hidden matrices of Llama-style and GLM models. A Llama-style model's embeddings (tied to its output
# layer, or with a separate lm_head) are trained too: a model that got the audio tokens appended starts
# them from random rows. GLM-4-Voice's audio embeddings are pretrained and stay frozen.
DEFAULT_TRAINABLE = (
    r"(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"
    r"|transformer\.encoder\.layers\.\d+\.(self_attention\.(query_key_value|dense)|mlp\.dense_(h_to_4h|4h_to_h))"
    r"|model\.embed_tokens|lm_head)\.weight"
)
ANSWERS_FILE = "speech_answers.jsonl"

COMPARE_GRID = {"adamw": [1e-4, 3e-4], "muon": [1e-4, 3e-4], "sift": [1e-4, 3e-4]}
"""`sift compare`'s default learning rates: the CPU preset's 1e-4 and 3x it, since comparisons run
fewer steps than the preset (`match_rms_adamw` makes one lr mean the same update size for all three)."""
COMPARE_METRICS = CompareMetrics(
    utility=Metric("text_nll", "text NLL", higher_is_better=False),
    constraint=Metric("speech_nll", "speech NLL", higher_is_better=False),
    extra=(Metric("text_answer_acc", "text->text acc", higher_is_better=True, binary=True),),
)
"""Per held-out question (both instruction variants averaged), teacher-forced: the mean NLL of the reply's
text tokens (without the audio wrappers, which a model that never spoke cannot predict) and of its speech
tokens. Learning to speak lowers the speech NLL, so the rule takes the lowest one that keeps the text
NLL within tolerance. text->text accuracy (greedy reply to the text question) is reported beside them."""


def prepare(
    output: Path,
    dataset: str,
    source: str | None = None,
    tts: str | TtsBackend = "auto",
    voice: str | None = None,
    speech_tokenizer: str | SpeechTokenizer = GLM_TOKENIZER,
    train_split: str | None = None,
    test_split: str | None = None,
    max_rows: int | None = None,
    test_rows: int | None = None,
    seed: int = 0,
    console: Console | None = None,
) -> PreparedData:
    """Speak every instruction and reply, tokenize the speech, and write train/test tables with both.

    Data loads before any model does, so a wrong --source fails in a second.
    """
    sources.check_dataset(dataset)
    local = source is not None and sources.is_local(source)
    check_output(Path(output), [source] if local else [])
    for flag, cap in (("--max-rows", max_rows), ("--test-rows", test_rows)):
        if cap is not None and cap < 1:
            raise SiftError(f"{flag} {cap} must be at least 1 (or left out for every row)")
    default_train, default_test = sources.SPLITS[dataset]
    splits = {"train": train_split or default_train, "test": test_split or default_test}
    examples: dict[str, list[sources.Example]] = {}
    dropped: dict[str, int] = {}
    for table, split in splits.items():
        loaded, dropped[table] = sources.load_examples(dataset, source, split)
        if not loaded:
            raise SiftError(
                f"no usable {dataset} rows in split {split!r} ({dropped[table]} dropped); check --source and the split name"
            )
        cap = max_rows if table == "train" else test_rows
        keep = sorted(random.Random(seed).sample(range(len(loaded)), cap)) if cap and cap < len(loaded) else range(len(loaded))
        examples[table] = [loaded[i] for i in keep]
    if isinstance(tts, str):
        choice = choose_tts(tts, voice)
        backend, tts_line = choice.backend, choice.line
    else:
        backend, tts_line = tts, f"text to speech: {tts.name} (given)"
    if console is not None:
        console.print(tts_line)
    tokenizer = load_speech_tokenizer(speech_tokenizer) if isinstance(speech_tokenizer, str) else speech_tokenizer
    tables = {}
    with Progress(console=console, transient=True, disable=console is None) as progress:
        for table, rows in examples.items():
            task = progress.add_task(f"speaking {table}", total=len(rows))
            tables[table] = speak(rows, backend, tokenizer, lambda done, task=task: progress.advance(task, done))
    hub_id, config = sources.HUB[dataset]
    prepared = write_prepared(
        output,
        APP,
        tables,
        sources={
            "dataset": dataset,
            "source": str(Path(source).expanduser().resolve()) if local else (source or hub_id),
            "config": None if local else config,
            "splits": splits,
            "tts": {**backend.describe(), "line": tts_line},
            "speech_tokenizer": tokenizer.describe(),
        },
        filters={"max_rows": max_rows, "test_rows": test_rows, "seed": seed, "dropped": dropped},
        inputs=[source] if local else [],
    )
    if console is not None:
        for table, count in dropped.items():
            if count:
                console.print(f"dropped {count} {table} rows of {dataset} (no gold answer, an empty field, or an answer not among the choices)")
        counts = ", ".join(f"{table} {len(rows)}" for table, rows in tables.items())
        summary(console, f"prepared {counts} spoken {dataset} examples ({tokenizer.tokens_per_second:g} speech tokens/s)", output)
    return prepared


def speak(
    examples: Sequence[sources.Example], tts: TtsBackend, tokenizer: SpeechTokenizer, advance: Callable[[int], None], batch: int = 8
) -> list[dict[str, Any]]:
    """Rows with the speech tokens of each instruction and reply; `advance(n)` reports progress."""
    rows = []
    for first in range(0, len(examples), batch):
        chunk = examples[first : first + batch]
        audio = [tts.synthesize(text) for example in chunk for text in (example.instruction, example.response)]
        codes = tokenizer.encode(audio)
        for index, example in enumerate(chunk):
            rows.append({**example.row(), "instruction_speech": codes[2 * index], "response_speech": codes[2 * index + 1]})
        advance(len(chunk))
    return rows


def speech_source(data: PreparedData, options: Options) -> dict[str, Any]:
    """The prepared data's speech-tokenizer record, after checking it was made from `options.dataset`."""
    made_from = data.manifest.get("sources", {}).get("dataset")
    if made_from != options.dataset:
        raise SiftError(
            f"{data.path} was prepared from {made_from!r} but objective.dataset is {options.dataset!r}; "
            f"set --set objective.dataset={made_from} or prepare {options.dataset}"
        )
    return data.manifest["sources"]["speech_tokenizer"]


def encode(
    tokenizer: Any, vocab: SpeechVocab, fmt: str, row: dict[str, Any], variant: str, options: Options, max_length: int
) -> dict[str, list[int]] | None:
    """Prompt + interleaved reply + end of turn with f/g labels on the reply; None when the prompt alone
    fills `max_length` (the reply's end is cut otherwise)."""
    content = prompts.user_content(row, variant)
    prompt = prompts.prompt_ids(tokenizer, fmt, variant, content, options.text_chunk, options.speech_chunk)
    if len(prompt) >= max_length:
        return None
    text = list(tokenizer(row["response"], add_special_tokens=False)["input_ids"])
    if any(token >= vocab.audio_0 for token in text):
        raise SiftError("the tokenizer turns plain text into ids past <|audio_0|>, so text and speech cannot be told apart by id")
    reply = interleave(text, row["response_speech"], vocab, options.text_chunk, options.speech_chunk)
    reply = reply + [prompts.end_of_reply(tokenizer, fmt)]
    cut = len(reply) > max_length - len(prompt)
    reply = reply[: max_length - len(prompt)]
    f_labels, g_labels = label_streams(reply, vocab, len(prompt))
    return {"input_ids": prompt + reply, "f_labels": f_labels, "g_labels": g_labels, "cut": cut}


def token_ce(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions (text ones for f, speech ones for g)."""
    return -label_log_probs(model, batch)[0].mean()


def build_objectives(model: nn.Module, tokenizer: Any, spec: RunSpec, data: PreparedData) -> Objectives:
    """Adds the speech tokens the model lacks (so the training loop must call this before it picks the
    trained parameters and saves the tokenizer with the model), then encodes both instruction variants."""
    options = spec.options(Options)
    vocab = add_speech_tokens(model, tokenizer, int(speech_source(data, options)["codebook_size"]))
    fmt = prompts.resolve_format(tokenizer, options.prompt_format)
    if prompts.end_of_reply(tokenizer, fmt) >= vocab.audio_0:
        raise SiftError("the end-of-reply token has an id past <|audio_0|>, so it would count as speech; check the tokenizer")
    asked = [(row, variant) for row in data.rows("train") for variant in options.instructions]
    encoded = [
        item
        for row, variant in asked
        if (item := encode(tokenizer, vocab, fmt, row, variant, options, spec.data.max_length)) is not None
    ]
    f_data = [item for item in encoded if any(label != IGNORE for label in item["f_labels"])]
    g_data = [item for item in encoded if any(label != IGNORE for label in item["g_labels"])]
    if not g_data:
        raise SiftError(
            f"no speech token survives data.max_length={spec.data.max_length} in {data.path}; raise data.max_length "
            "(a spoken instruction alone is about 12.5 tokens a second)"
        )
    if not f_data:
        raise SiftError(f"no text token survives data.max_length={spec.data.max_length}; raise data.max_length")
    objectives = labelled_objectives(tokenizer, f_data, g_data, token_ce, token_ce)
    objectives.fits = {
        name: Fit(total=len(asked), dropped=len(asked) - len(items), cut=sum(item["cut"] for item in items))
        for name, items in (("f", f_data), ("g", g_data))
    }
    return objectives


def score(records: Sequence[dict[str, Any]], setting: str) -> dict[str, Any]:
    """Accuracy of one setting; a reply whose answer cannot be read counts as wrong and is reported."""
    source, target = setting.split("->")
    key = "text_answer" if target == "text" else "audio_answer"
    rows = [r for r in records if r["input"] == source and key in r]
    correct = sum(1 for r in rows if r[key] == r["gold"])
    return {
        "accuracy": correct / len(rows) if rows else None,
        "n": len(rows),
        "correct": correct,
        "unparsed": sum(1 for r in rows if r[key] is None),
    }


def ask(
    model: nn.Module, tokenizer: Any, vocab: SpeechVocab, fmt: str, rows: Sequence[dict[str, Any]], variant: str, opts: Options, batch_size: int
) -> list[tuple[list[int], list[int]]]:
    """Each row's question asked as `variant` (text or speech tokens); the greedy reply's text ids and
    speech codes."""
    from sift_cli.evaluation.generate import generate_ids

    asked = [prompts.prompt_ids(tokenizer, fmt, variant, prompts.user_content(row, variant), opts.text_chunk, opts.speech_chunk) for row in rows]
    replies = generate_ids(model, asked, pad_id(tokenizer), prompts.stop_ids(model, tokenizer, fmt), opts.max_new_tokens, batch_size)
    return [vocab.split(reply) for reply in replies]


def evaluate(model: nn.Module, tokenizer: Any, spec: RunSpec, run: RunDir | None, options: EvalOptions) -> dict:
    """Answer accuracy in each of `objective.eval_settings` on the prepared test split.

    One greedy reply per question and input modality serves both outputs: its text tokens are read for
    X->text, its speech tokens decoded and transcribed for X->audio.
    """
    from sift_cli.store.atomic import write_jsonl
    from sift_cli.store.rundir import held_out_data

    opts = options.objective(Options, spec)
    data = held_out_data(spec, run)
    vocab = read_speech_vocab(tokenizer, int(speech_source(data, opts)["codebook_size"]))
    fmt = prompts.resolve_format(tokenizer, opts.prompt_format)
    rows = data.rows("test")[: options.limit]
    settings = list(dict.fromkeys(opts.eval_settings))
    speech_to_text = None
    if any(setting.endswith("->audio") for setting in settings):
        from sift_cli.apps.speech.output import load_speech_to_text

        device = str(next(model.parameters()).device)
        speech_to_text = load_speech_to_text(opts.speech_decoder, opts.speech_decoder_path, opts.asr_model, device)
    records: list[dict[str, Any]] = []
    for variant in dict.fromkeys(setting.split("->")[0] for setting in settings):
        for row, (text_ids, codes) in zip(rows, ask(model, tokenizer, vocab, fmt, rows, variant, opts, options.batch_size)):
            record: dict[str, Any] = {
                "id": row["id"],
                "input": variant,
                "gold": row["answer"],
                "text": tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                "speech_tokens": len(codes),
            }
            if f"{variant}->text" in settings:
                record["text_answer"] = parse_answer(record["text"], row["options"])
            if f"{variant}->audio" in settings and speech_to_text is not None:
                record["transcript"] = speech_to_text(codes)
                record["audio_answer"] = parse_answer(record["transcript"], row["options"])
            records.append(record)
    if run is not None:
        write_jsonl(run.eval_dir / ANSWERS_FILE, records)
    return {"dataset": opts.dataset, "examples": len(rows), "settings": {setting: score(records, setting) for setting in settings}}


def compare_examples(spec: RunSpec, data: PreparedData) -> dict[str, list[Any]]:
    """The held-out (`test`) questions, whole: both instruction variants of a question fall in one half."""
    speech_source(data, spec.options(Options))
    return {"questions": data.rows("test")}


def compare_scores(model: nn.Module, tokenizer: Any, spec: RunSpec, groups: dict[str, list[Any]], batch_size: int) -> dict[str, ScoredRows]:
    """`text_nll` and `speech_nll` per question (mean over `objective.instructions` of each reply's mean
    NLL per token), and `text_answer_acc` (1.0 when the greedy reply to the text question names the gold
    answer). A model without speech tokens (the base model) gets them added, seeded by `train.seed`, as
    training adds them."""
    from sift_cli.store.prepared import load_prepared

    opts = spec.options(Options)
    rows = groups["questions"]
    size = int(speech_source(load_prepared(Path(spec.data.path), APP), opts)["codebook_size"])
    with torch.random.fork_rng():
        torch.manual_seed(spec.train.seed)
        vocab = add_speech_tokens(model, tokenizer, size)
    fmt = prompts.resolve_format(tokenizer, opts.prompt_format)
    owners, items = [], []
    for index, row in enumerate(rows):
        for variant in opts.instructions:
            item = encode(tokenizer, vocab, fmt, row, variant, opts, spec.data.max_length)
            if item is not None:
                wrappers = (vocab.begin, vocab.end)
                item["f_labels"] = [IGNORE if label in wrappers else label for label in item["f_labels"]]
                owners.append(index)
                items.append(item)
    scores: dict[str, ScoredRows] = {}
    for metric, key in (("text_nll", "f_labels"), ("speech_nll", "g_labels")):
        kept = [i for i, item in enumerate(items) if any(label != IGNORE for label in item[key])]
        values = per_example_nll(model, [items[i] for i in kept], key, pad_id(tokenizer), batch_size)
        by_row: dict[int, list[float]] = {}
        for i, value in zip(kept, values):
            by_row.setdefault(owners[i], []).append(value)
        scored = sorted(by_row.items())
        scores[metric] = ([rows[index] for index, _ in scored], [sum(found) / len(found) for _, found in scored])
    answers = ask(model, tokenizer, vocab, fmt, rows, "text", opts, batch_size)
    scores["text_answer_acc"] = (rows, [
        float(parse_answer(tokenizer.decode(text_ids, skip_special_tokens=True), row["options"]) == row["answer"])
        for row, (text_ids, _) in zip(rows, answers)
    ])
    return scores
