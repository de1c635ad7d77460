"""The speech app: spoken QA data in the paper's form, speech tokens, 13:26 interleaving, f/g masks,
the QKV split, backend choice, answer parsing, and the GLM-4-Voice tokenizer loader.

Text to speech in most tests is `ToneTts`, a deterministic tone per character, so the pipeline runs
where neither piper nor espeak-ng is installed; the tests of those backends skip when they are missing.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer
from torch import nn
from typer.testing import CliRunner

from sift_cli.apps.base import EvalOptions
from sift_cli.apps.speech import answers, output, prompts, sources, tts, whisper_vq
from sift_cli.apps.speech import app as speech
from sift_cli.apps.speech.audio import Audio, resample
from sift_cli.apps.speech.tokens import (
    BEGIN_AUDIO,
    END_AUDIO,
    IGNORE,
    add_speech_tokens,
    audio_token,
    interleave,
    read_speech_vocab,
)
from sift_cli.cli import app as cli_app
from sift_cli.errors import SiftError
from sift_cli.hf import fused_qkv as qkv
from sift_cli.hf import naming
from sift_cli.spec import OptimSpec, resolve_spec
from sift_cli.store.prepared import load_prepared
from sift_cli.store.rundir import RunDir
from sift_cli.plan import plan_routes

COSE = [
    {
        "id": "075e483d21c29a511267ef62bedc0461",
        "question": "The sanctions against the school were a punishing blow, and they seemed to what the efforts the school had made to change?",
        "choices": ["ignore", "enforce", "authoritarian", "yell at", "avoid"],
        "answer": "ignore",
        "abstractive_explanation": "The sanctions seemed to ignore the efforts the school had made.",
        "extractive_explanation": "they seemed to what the efforts",
    },
    {
        "id": "61fe6e879ff18686d7552425a36344c8",
        "question": "Where do people go to play when the weather is nice?",
        "choices": ["office", "library", "basement", "outside", "bed"],
        "answer": "outside",
        "abstractive_explanation": "People play outside when the weather is nice.",
        "extractive_explanation": "when the weather is nice",
    },
    {
        "id": "bad-answer",
        "question": "Which answer is missing?",
        "choices": ["a", "b", "c", "d", "e"],
        "answer": "z",
        "abstractive_explanation": "The answer is not among the choices.",
        "extractive_explanation": "",
    },
]
ESNLI = [
    {
        "premise": "This church choir sings to the masses as they sing joyous songs from the book at a church.",
        "hypothesis": "The church has cracks in the ceiling.",
        "label": 1,
        "explanation_1": "Not all churches have cracks in the ceiling.",
        "explanation_2": "",
        "explanation_3": "",
    },
    {
        "premise": "A man plays a guitar on stage.",
        "hypothesis": "A man is playing an instrument.",
        "label": 0,
        "explanation_1": "A guitar is an instrument",
        "explanation_2": "",
        "explanation_3": "",
    },
    {
        "premise": "Two dogs run.",
        "hypothesis": "No animals move.",
        "label": -1,
        "explanation_1": "No gold label.",
        "explanation_2": "",
        "explanation_3": "",
    },
]
OBQA = [
    {
        "id": "7-980",
        "question_stem": "The sun is responsible for",
        "choices": {
            "text": ["puppies learning new tricks", "children growing up and getting old", "flowers wilting in a vase", "plants sprouting, blooming and wilting"],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "D",
        "fact1": "the sun is the source of energy for physical cycles on Earth",
        "humanScore": 1.0,
        "clarity": 2.0,
        "turkIdAnonymized": "b356d338b7",
    },
    {
        "id": "7-584",
        "question_stem": "When food is reduced in the stomach",
        "choices": {
            "text": ["the mind needs time to digest", "take a second to digest what I said", "nutrients are being deconstructed", "reader's digest is a body of works"],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "C",
        "fact1": "digestion is when stomach acid breaks down food",
        "humanScore": 1.0,
        "clarity": 2.0,
        "turkIdAnonymized": "c0b5cb7abc",
    },
]
GLM_VOICE_CONFIG = {
    "num_attention_heads": 32,
    "hidden_size": 4096,
    "kv_channels": 128,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
}


class ToneTts:
    """A deterministic stand-in voice: 30 ms of a tone per character, its pitch set by the character."""

    name = "tone"

    def synthesize(self, text: str) -> Audio:
        rate, step = 22050, 0.03
        t = np.arange(int(rate * step)) / rate
        pieces = [0.3 * np.sin(2 * math.pi * (120 + 7 * (ord(c) % 64)) * t) for c in text]
        return Audio(np.concatenate(pieces).astype(np.float32), rate)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "voice": "tones"}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One directory per dataset, files named after the hub's splits."""
    root = tmp_path_factory.mktemp("speech-sources")
    dirs = {name: root / name for name in sources.DATASETS}
    write_jsonl(dirs["cose"] / "train.jsonl", COSE)
    write_jsonl(dirs["cose"] / "validation.jsonl", COSE[:2])
    write_jsonl(dirs["esnli"] / "train.jsonl", ESNLI)
    write_jsonl(dirs["esnli"] / "test.jsonl", ESNLI[:2])
    write_jsonl(dirs["openbookqa"] / "train.jsonl", OBQA)
    write_jsonl(dirs["openbookqa"] / "test.jsonl", OBQA)
    return dirs


@pytest.fixture(scope="module")
def local_tokenizer() -> whisper_vq.SpeechTokenizer:
    return whisper_vq.local_tokenizer("cpu")


def test_responses_in_the_papers_form(fixtures: dict[str, Path]) -> None:
    cose, dropped = sources.load_examples("cose", str(fixtures["cose"]), "train")
    assert dropped == 1
    assert cose[0].response == "Answer: A. ignore. Explanation: The sanctions seemed to ignore the efforts the school had made."
    assert cose[1].response == "Answer: D. outside. Explanation: People play outside when the weather is nice."
    assert cose[1].answer == "D" and cose[1].options[3] == "outside"
    assert cose[1].instruction.splitlines()[1:3] == ["A. office", "B. library"]

    esnli, dropped = sources.load_examples("esnli", str(fixtures["esnli"]), "train")
    assert dropped == 1
    assert esnli[0].response == "Answer: neutral. Explanation: Not all churches have cracks in the ceiling."
    assert esnli[1].response == "Answer: entailment. Explanation: A guitar is an instrument."
    assert esnli[0].instruction.startswith("Premise: This church choir")

    obqa, dropped = sources.load_examples("openbookqa", str(fixtures["openbookqa"]), "test")
    assert dropped == 0
    assert obqa[0].response == (
        "Answer: D. plants sprouting, blooming and wilting. Explanation: the sun is the source of energy for physical cycles on Earth."
    )
    assert obqa[1].answer == "C"


def test_parquet_rows_and_missing_split(tmp_path: Path, fixtures: dict[str, Path]) -> None:
    import pandas as pd

    directory = tmp_path / "obqa-parquet"
    directory.mkdir()
    pd.DataFrame(OBQA).to_parquet(directory / "train.parquet")
    examples, _ = sources.load_examples("openbookqa", str(directory), "train")
    assert [e.answer for e in examples] == ["D", "C"]
    with pytest.raises(SiftError, match="no test.jsonl"):
        sources.load_examples("openbookqa", str(directory), "test")
    with pytest.raises(SiftError, match="choose one of: cose, esnli, openbookqa"):
        sources.load_examples("squad", None, "train")


def speech_tokenizer_and_model(codebook: int = 40) -> tuple[Any, Any, Any]:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    vocab = add_speech_tokens(model, tokenizer, codebook)
    return tokenizer, model, vocab


def test_speech_tokens_are_added_and_read_from_the_tokenizer() -> None:
    tokenizer, model, vocab = speech_tokenizer_and_model()
    assert vocab.audio_0 == tokenizer.convert_tokens_to_ids(audio_token(0))
    assert vocab.begin == tokenizer.convert_tokens_to_ids(BEGIN_AUDIO) < vocab.audio_0
    assert vocab.end == tokenizer.convert_tokens_to_ids(END_AUDIO) < vocab.audio_0
    assert tokenizer.convert_tokens_to_ids(audio_token(39)) == vocab.audio_0 + 39
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    again = add_speech_tokens(model, tokenizer, 40)
    assert again == vocab and model.get_input_embeddings().num_embeddings == len(tokenizer)
    with pytest.raises(SiftError, match="lacks <\\|audio_63\\|>"):
        read_speech_vocab(tokenizer, 64)


def test_interleaving_is_13_text_then_26_wrapped_speech_then_the_rest_of_the_speech() -> None:
    """GLM-4-Voice's reply format (paper, Fig. A3): 28 text and 102 speech tokens give blocks 13, 26, 13,
    26, 2, 50; after the last text chunk all remaining speech is one block."""
    tokenizer, _, vocab = speech_tokenizer_and_model()
    text = list(range(100, 128))
    codes = [i % 40 for i in range(102)]
    out = interleave(text, codes, vocab)
    block = lambda part: [vocab.begin, *[vocab.audio_0 + c for c in part], vocab.end]  # noqa: E731
    assert out == text[:13] + block(codes[:26]) + text[13:26] + block(codes[26:52]) + text[26:] + block(codes[52:])
    only_speech_left = interleave(text[:5], codes, vocab)
    assert only_speech_left == text[:5] + block(codes)
    assert interleave([], codes[:30], vocab) == block(codes[:30])
    speech_runs_out = interleave(text, codes[:10], vocab)
    assert speech_runs_out == text[:13] + block(codes[:10]) + text[13:]
    assert interleave(text, [], vocab) == text


def test_masks_split_text_and_speech_by_the_audio_0_id(fixtures: dict[str, Path]) -> None:
    tokenizer, _, vocab = speech_tokenizer_and_model()
    example = sources.load_examples("cose", str(fixtures["cose"]), "train")[0][1]
    row = {**example.row(), "instruction_speech": [3, 1, 4, 1, 5], "response_speech": [i % 40 for i in range(30)]}
    options = speech.Options()
    fmt = prompts.resolve_format(tokenizer, "auto")
    assert fmt == "chat"
    for variant in ("text", "audio"):
        item = speech.encode(tokenizer, vocab, fmt, row, variant, options, max_length=512)
        assert item is not None
        ids = torch.tensor(item["input_ids"])
        f_labels, g_labels = torch.tensor(item["f_labels"]), torch.tensor(item["g_labels"])
        labelled = (f_labels != IGNORE) | (g_labels != IGNORE)
        prompt_length = int((~labelled).nonzero().max()) + 1 if (~labelled).any() else 0
        assert not labelled[:prompt_length].any()
        assert torch.equal(g_labels != IGNORE, labelled & (ids >= vocab.audio_0))
        assert torch.equal(f_labels != IGNORE, labelled & (ids < vocab.audio_0))
        assert int((g_labels != IGNORE).sum()) == 30
        assert item["input_ids"][-1] == tokenizer.eos_token_id
    audio_prompt = prompts.prompt_ids(tokenizer, fmt, "audio", prompts.user_content(row, "audio"))
    wrapped = [vocab.begin, *[vocab.audio_0 + c for c in (3, 1, 4, 1, 5)], vocab.end]
    assert any(audio_prompt[i : i + len(wrapped)] == wrapped for i in range(len(audio_prompt)))
    assert speech.encode(tokenizer, vocab, fmt, row, "audio", options, max_length=8) is None


def test_glm_prompt_format_matches_glm_4_voice() -> None:
    tokenizer, _, _ = speech_tokenizer_and_model()
    assert prompts.resolve_format(tokenizer, "auto") == "chat"
    tokenizer.add_tokens(list(prompts.GLM_ROLES), special_tokens=True)
    assert prompts.resolve_format(tokenizer, "auto") == "glm4voice"
    ids = prompts.prompt_ids(tokenizer, "glm4voice", "audio", prompts.user_content({"instruction_speech": [7, 8]}, "audio"))
    system = prompts.system_prompt("audio")
    assert system.endswith("with 13 text token followed by 26 audio tokens. ")
    expected = f"<|system|>\n{system}<|user|>\n<|begin_of_audio|><|audio_7|><|audio_8|><|end_of_audio|><|assistant|>streaming_transcription\n"
    assert tokenizer.decode(ids) == expected
    assert prompts.end_of_reply(tokenizer, "glm4voice") == tokenizer.convert_tokens_to_ids("<|user|>")
    assert prompts.system_prompt("text").startswith("User will provide you with a text instruction.")


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
    from sift_cli.engine.linalg import warm_sketch_width
    from sift_cli.memory import layout_bytes
    from sift_cli.plan import optimizer_config, plan

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
    assert layout_bytes(k4)["subspace caches"] == 3 * 2 * 32 * warm_sketch_width(4) * 4


@pytest.mark.parametrize(
    ("name", "trained"),
    [
        ("transformer.encoder.layers.3.self_attention.query_key_value.weight", True),
        ("transformer.encoder.layers.3.self_attention.dense.weight", True),
        ("transformer.encoder.layers.39.mlp.dense_4h_to_h.weight", True),
        ("transformer.encoder.layers.3.self_attention.query_key_value.bias", False),
        ("transformer.embedding.word_embeddings.weight", False),
        ("transformer.output_layer.weight", False),
        ("model.layers.7.self_attn.q_proj.weight", True),
        ("model.layers.7.mlp.down_proj.weight", True),
        ("model.embed_tokens.weight", True),
        ("model.layers.7.input_layernorm.weight", False),
    ],
)
def test_default_trainable_covers_glm_and_llama_blocks(name: str, trained: bool) -> None:
    assert bool(re.search(speech.DEFAULT_TRAINABLE, name)) is trained


def test_auto_tts_says_which_backend_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    monkeypatch.setattr(tts, "_build", lambda name, voice: built.append(name) or _Named(name))
    monkeypatch.setattr(tts, "coqui_problem", lambda: "Coqui TTS does not import here (libtorchaudio.so missing)")
    monkeypatch.setattr(tts, "piper_problem", lambda voice=None: None)
    monkeypatch.setattr(tts, "espeak_problem", lambda: None)
    line = tts.choose_tts("auto").line
    assert line == "text to speech: piper voice x (auto: Coqui TTS does not import here (libtorchaudio.so missing), so not the paper's voice)"
    monkeypatch.setattr(tts, "piper_problem", lambda voice=None: "piper-tts is not installed")
    line = tts.choose_tts("auto").line
    assert line.startswith("text to speech: espeak-ng voice x (auto: Coqui TTS does not import here")
    assert "piper-tts is not installed" in line
    monkeypatch.setattr(tts, "coqui_problem", lambda: None)
    assert tts.choose_tts("auto").line == "text to speech: coqui VCTK VITS speaker x (auto: the paper's voice)"
    assert built == ["piper", "espeak", "coqui"]


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "voice": "x"}


def test_missing_tts_backends_give_one_line_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tts, "coqui_problem", lambda: "Coqui TTS is not installed")
    monkeypatch.setattr(tts, "piper_problem", lambda voice=None: "piper-tts is not installed")
    monkeypatch.setattr(tts, "espeak_problem", lambda: "espeak-ng is not on PATH")
    with pytest.raises(SiftError) as error:
        tts.choose_tts("coqui")
    assert "pip install coqui-tts" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SiftError, match="apt-get install -y espeak-ng"):
        tts.choose_tts("auto")
    with pytest.raises(SiftError, match="choose one of: auto, coqui, piper, espeak"):
        tts.choose_tts("festival")


def test_coqui_is_import_guarded() -> None:
    problem = tts.coqui_problem()
    if problem is None:
        pytest.skip("Coqui TTS imports on this machine")
    with pytest.raises(SiftError, match="install it with `pip install coqui-tts"):
        tts.choose_tts("coqui")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_espeak_ng_speaks() -> None:
    audio = tts.choose_tts("espeak").backend.synthesize("-v Answer: D. outside.")
    assert audio.sample_rate == 22050 and 0.5 < audio.seconds < 5 and np.abs(audio.samples).max() > 0.05


@pytest.mark.skipif(tts.piper_problem() is not None, reason="piper-tts or its voice is not installed (pip extra 'speech')")
def test_piper_speaks() -> None:
    audio = tts.choose_tts("piper").backend.synthesize("Answer: D. outside.")
    assert audio.sample_rate == 22050 and 0.5 < audio.seconds < 5 and np.abs(audio.samples).max() > 0.05


@pytest.mark.parametrize(
    ("reply", "options", "expected"),
    [
        ("Answer: D. outside. Explanation: people play outside.", COSE[1]["choices"], "D"),
        ("answer is (b) because", COSE[1]["choices"], "B"),
        ("Answer, outside. Explanation: people play there.", COSE[1]["choices"], "D"),
        ("I think the basement. Or the library.", COSE[1]["choices"], "C"),
        ("No idea.", COSE[1]["choices"], None),
        ("Answer: E. bed.", ["a", "b", "c", "d"], None),
        ("Answer: neutral. Explanation: not all churches have cracks.", sources.NLI_LABELS, "neutral"),
        ("The answer: it entails the hypothesis.", sources.NLI_LABELS, "entailment"),
        ("Answer: Contradiction.", sources.NLI_LABELS, "contradiction"),
        ("Explanation first: a guitar is an instrument.", sources.NLI_LABELS, None),
    ],
)
def test_answer_parsing(reply: str, options: Any, expected: str | None) -> None:
    assert answers.parse_answer(reply, options) == expected


def test_missing_speech_decoder_is_one_line_with_the_fix() -> None:
    with pytest.raises(SiftError) as error:
        output.load_decoder("glm4voice", "THUDM/glm-4-voice-decoder", "cpu")
    message = str(error.value)
    assert "git clone https://github.com/THUDM/GLM-4-Voice" in message and "\n" not in message
    with pytest.raises(SiftError, match="neither 'glm4voice' nor"):
        output.load_decoder("nonsense", "x", "cpu")
    with pytest.raises(SiftError, match="cannot import speech decoder"):
        output.load_decoder("no_such_package.decoders:make", "x", "cpu")


def test_resampling_keeps_pitch_and_duration() -> None:
    rate = 22050
    t = np.arange(rate) / rate
    audio = resample(Audio(np.sin(2 * math.pi * 440 * t).astype(np.float32), rate), 16000)
    assert len(audio.samples) == 16000 and audio.sample_rate == 16000
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert abs(int(spectrum.argmax()) - 440) <= 1


def test_local_speech_tokenizer_is_deterministic_at_12_5_tokens_a_second(local_tokenizer: whisper_vq.SpeechTokenizer) -> None:
    voice = ToneTts()
    long, short = voice.synthesize("Answer: D. outside."), voice.synthesize("Hi.")
    batched = local_tokenizer.encode([long, short])
    assert local_tokenizer.tokens_per_second == 12.5
    assert len(batched[0]) == math.ceil(long.seconds * 12.5)
    assert batched[1] == local_tokenizer.encode([short])[0]
    assert batched[0] == whisper_vq.local_tokenizer("cpu").encode([long])[0]
    assert len(set(batched[0])) > 1 and max(batched[0]) < local_tokenizer.codebook_size


def save_glm_layout(directory: Path, prefix: str, binary: bool) -> whisper_vq.WhisperVQEncoder:
    """A random-init WhisperVQ tokenizer saved as the hub repo lays it out, plus tensors the loader must skip."""
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    config = {
        "architectures": ["WhisperVQEncoder"],
        "model_type": "whisper",
        "num_mel_bins": 128,
        "d_model": 32,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "encoder_layers": 4,
        "max_source_positions": 1500,
        "pooling_kernel_size": 4,
        "pooling_type": "avg",
        "pooling_position": 2,
        "quantize_position": 2,
        "quantize_vocab_size": 64,
        "quantize_causal_block_size": 200,
        "quantize_causal_encoder": False,
        "encoder_causal_attention": False,
        "encoder_causal_convolution": True,
        "quantize_encoder_only": True,
    }
    encoder = whisper_vq.local_encoder(whisper_vq.VQConfig.from_dict(config, "test"), seed=7)
    state = {prefix + key: value.clone().contiguous() for key, value in encoder.state_dict().items()}
    state[prefix + "layers.2.fc1.weight"] = torch.zeros(64, 32)
    state[prefix + "layer_norm.weight"] = torch.ones(32)
    state[prefix + "embed_positions2.weight"] = torch.zeros(375, 32)
    state[prefix + "ema_count"] = torch.ones(64)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(directory))
    if binary:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file(state, str(directory / "model.safetensors"))
    return encoder


@pytest.mark.parametrize(("prefix", "binary"), [("model.encoder.", False), ("", True)])
def test_glm_tokenizer_loader_on_a_random_init_checkpoint(tmp_path: Path, prefix: str, binary: bool) -> None:
    directory = tmp_path / "glm-4-voice-tokenizer"
    encoder = save_glm_layout(directory, prefix, binary)
    loaded = whisper_vq.load_speech_tokenizer(str(directory), "cpu")
    assert loaded.codebook_size == 64 and loaded.tokens_per_second == 12.5
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[name], tensor), name
    audio = ToneTts().synthesize("Where do people go to play?")
    expected = whisper_vq.SpeechTokenizer(encoder, loaded.feature_extractor, "same", torch.device("cpu")).encode([audio])
    assert loaded.encode([audio]) == expected
    assert len(expected[0]) == math.ceil(audio.seconds * 12.5)


def test_glm_tokenizer_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(SiftError, match="not an existing directory"):
        whisper_vq.load_speech_tokenizer(str(tmp_path / "absent"), "cpu")
    with pytest.raises(SiftError, match="HF_HUB_OFFLINE=1 is set"):
        whisper_vq.load_speech_tokenizer("THUDM/glm-4-voice-tokenizer", "cpu")
    directory = tmp_path / "broken"
    save_glm_layout(directory, "", binary=False)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "d_model": 16}))
    with pytest.raises(SiftError, match="do not fit its config"):
        whisper_vq.load_speech_tokenizer(str(directory), "cpu")


def test_block_causal_mask_hides_padding_and_future_blocks() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    allowed = whisper_vq.attention_bias(mask, 2, False, torch.float32)[0, 0] == 0
    assert allowed[0].tolist() == [True, True, False, False, False, False]
    assert allowed[3].tolist() == [True, True, True, True, False, False]
    assert allowed[4].tolist() == [True, True, True, True, True, False]


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, fixtures: dict[str, Path], local_tokenizer: whisper_vq.SpeechTokenizer
) -> Path:
    """Spoken CoS-E fixtures, prepared once for the module (treat as read-only)."""
    target = tmp_path_factory.mktemp("speech-prepared") / "data"
    speech.prepare(target, "cose", source=str(fixtures["cose"]), tts=ToneTts(), speech_tokenizer=local_tokenizer)
    return target


def test_prepare_writes_spoken_examples(prepared: Path) -> None:
    data = load_prepared(prepared, "speech")
    manifest = data.manifest
    assert manifest["counts"] == {"train": 2, "test": 2}
    assert manifest["sources"]["dataset"] == "cose" and manifest["sources"]["splits"] == {"train": "train", "test": "validation"}
    assert manifest["sources"]["speech_tokenizer"]["codebook_size"] == 1024
    assert manifest["filters"]["dropped"] == {"train": 1, "test": 0}
    row = data.rows("train")[1]
    assert row["response"].startswith("Answer: D. outside.")
    assert row["instruction_speech"] and row["response_speech"]


def test_objectives_and_text_evaluation(prepared: Path, tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    spec = resolve_spec(app="speech", overrides={"data.path": str(prepared), "output": str(tmp_path / "run")})
    objectives = speech.build_objectives(model, tokenizer, spec, load_prepared(prepared, "speech"))
    assert len(objectives.f_data) == len(objectives.g_data) == 4
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    for collate, loss in ((objectives.collate_f, objectives.loss_f), (objectives.collate_g, objectives.loss_g)):
        value = loss(model, collate(objectives.f_data[:2]))
        assert torch.isfinite(value) and value.item() > 0
        value.backward()
    run = RunDir(tmp_path / "run")
    results = speech.evaluate(model, tokenizer, spec, run, EvalOptions(batch_size=2, extra={"max_new_tokens": 6}))
    assert set(results["settings"]) == {"text->text", "audio->text"}
    assert results["settings"]["text->text"]["n"] == 2
    records = [json.loads(line) for line in (run.eval_dir / speech.ANSWERS_FILE).read_text().splitlines()]
    assert {r["input"] for r in records} == {"text", "audio"} and {r["gold"] for r in records} == {"A", "D"}


def tone_decoder(source: str, device: str) -> Any:
    """A speech-decoder plugin for the test: speech codes to tones."""
    return lambda codes: ToneTts().synthesize("x" * len(codes))


def test_audio_outputs_go_through_decoder_and_asr(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[float] = []

    class FixedAsr:
        def __init__(self, model_id: str, device: str) -> None:
            assert model_id == "openai/whisper-large-v3"

        def __call__(self, audio: Audio) -> str:
            heard.append(audio.seconds)
            return "Answer: D. outside."

    monkeypatch.setattr(output, "WhisperAsr", FixedAsr)
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    spec = resolve_spec(
        app="speech",
        overrides={"data.path": str(prepared), "output": str(tmp_path / "run")},
        assignments=["objective.eval_settings=[text->audio]", f"objective.speech_decoder={__name__}:tone_decoder"],
    )
    add_speech_tokens(model, tokenizer, 1024)
    generated = [[tokenizer.convert_tokens_to_ids(audio_token(5))] * 3]
    monkeypatch.setattr("sift_cli.evaluation.generate.generate_ids", lambda *args, **kwargs: generated * 2)
    results = speech.evaluate(model, tokenizer, spec, RunDir(tmp_path / "run"), EvalOptions(batch_size=2))
    assert results["settings"] == {"text->audio": {"accuracy": 0.5, "n": 2, "correct": 1, "unparsed": 0}}
    assert len(heard) == 2


def test_objective_must_match_the_prepared_dataset(prepared: Path, tmp_path: Path) -> None:
    spec = resolve_spec(app="speech", overrides={"data.path": str(prepared)}, assignments=["objective.dataset=esnli"])
    tokenizer = tiny_tokenizer()
    with pytest.raises(SiftError, match="was prepared from 'cose' but objective.dataset is 'esnli'"):
        speech.build_objectives(tiny_llama(len(tokenizer)), tokenizer, spec, load_prepared(prepared, "speech"))
    with pytest.raises(SiftError, match="objective.eval_settings"):
        resolve_spec(app="speech", assignments=["objective.eval_settings=[text->video]"])


def test_cli_rejects_an_unknown_dataset_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["prepare", "speech", "--dataset", "squad", "--output", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "choose one of: cose, esnli, openbookqa" in result.output


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_cli_prepares_esnli_with_espeak_and_the_local_tokenizer(tmp_path: Path, fixtures: dict[str, Path]) -> None:
    args = ["prepare", "speech", "--dataset", "esnli", "--source", str(fixtures["esnli"]), "--tts", "espeak"]
    result = CliRunner().invoke(cli_app, [*args, "--speech-tokenizer", "local", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "text to speech: espeak-ng voice en-us (as requested)" in result.output
    rows = load_prepared(tmp_path / "out", "speech").rows("test")
    assert [row["answer"] for row in rows] == ["neutral", "entailment"]
    assert all(10 < len(row["response_speech"]) < 100 for row in rows)


@pytest.mark.parametrize("label", [True, float("nan"), 1.5, -1, "maybe", None])
def test_an_esnli_label_that_is_not_a_label_is_dropped_not_converted(label) -> None:
    assert sources.nli_label(label) is None
    assert [sources.nli_label(value) for value in (0, 1.0, " Contradiction")] == ["entailment", "neutral", "contradiction"]
