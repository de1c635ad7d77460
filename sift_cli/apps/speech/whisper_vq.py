"""Speech to discrete tokens: GLM-4-Voice's WhisperVQ tokenizer, rebuilt on transformers' Whisper layers.

`THUDM/glm-4-voice-tokenizer` is the first 16 layers of a Whisper-large-v3 encoder with causal
convolutions, a block-causal attention mask (blocks of 200 frames = 4 s), 4x average pooling after the
16th layer (50 -> 12.5 frames a second) and a 16,384-entry codebook looked up by nearest L2 distance.
Its model class is not part of transformers, so this module builds the same computation from
`WhisperEncoderLayer`, reads the hub's `config.json` for every switch, and loads the weights itself
(safetensors, or .bin with `weights_only`). It follows the released `speech_tokenizer/` code of
THUDM/GLM-4-Voice: 30-second segments, padding to a multiple of one token's samples, and tokens kept
only where the padded attention mask is set.

`local_tokenizer()` is the same network at a toy size, initialised from a fixed seed: deterministic and
offline, so the whole path runs on a CPU and in tests, but its tokens carry no trained meaning.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from sift_cli.apps.speech.audio import Audio, resample
from sift_cli.errors import SiftError, first_line

GLM_TOKENIZER = "THUDM/glm-4-voice-tokenizer"
LOCAL = "local"
SAMPLE_RATE = 16000
SEGMENT_SECONDS = 30
LOCAL_SEED = 0
WEIGHT_PARTS = ("conv1", "conv2", "embed_positions", "codebook")


@dataclass(frozen=True)
class VQConfig:
    """The WhisperVQ switches that change the tokens (defaults as in GLM-4-Voice's configuration_whisper)."""

    num_mel_bins: int
    d_model: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    max_source_positions: int
    quantize_vocab_size: int
    activation_function: str = "gelu"
    pooling_kernel_size: int | None = None
    pooling_type: str = "max"
    pooling_position: int = 0
    quantize_position: int = 16
    quantize_causal_block_size: int | None = None
    quantize_causal_encoder: bool = False
    encoder_causal_attention: bool = False
    encoder_causal_convolution: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> "VQConfig":
        names = {f.name for f in fields(cls)}
        values = {key: raw[key] for key in names if raw.get(key) is not None}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.name not in values]
        if required:
            raise SiftError(f"{where} lacks {', '.join(sorted(required))}; it is not a WhisperVQ tokenizer config")
        config = cls(**values)
        if config.pooling_type not in ("avg", "max"):
            raise SiftError(f"{where}: pooling_type {config.pooling_type!r} is neither 'avg' nor 'max'")
        if config.pooling_kernel_size and not 0 < config.pooling_position <= config.quantize_position:
            raise SiftError(f"{where}: pooling_position must be between 1 and quantize_position ({config.quantize_position})")
        return config

    def whisper_config(self) -> Any:
        from transformers import WhisperConfig

        config = WhisperConfig(
            num_mel_bins=self.num_mel_bins,
            d_model=self.d_model,
            encoder_attention_heads=self.encoder_attention_heads,
            encoder_ffn_dim=self.encoder_ffn_dim,
            activation_function=self.activation_function,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        )
        config._attn_implementation = "sdpa"
        return config


class CausalConv1d(nn.Conv1d):
    """A 1-D convolution that pads only on the left, so a frame never sees the future."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.left_padding = kernel_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (self.left_padding, 0)))


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def attention_bias(mask: torch.Tensor, block_size: int | None, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, T, T) additive bias: padding keys hidden; block-causal or fully causal when configured.

    Fully causal layers ignore padding, as the released code does (it hands SDPA `is_causal` and no mask).
    """
    length = mask.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    if causal:
        return _additive(lower[None, None].expand(mask.shape[0], 1, length, length), dtype)
    allowed = mask.bool()[:, None, None, :].expand(-1, 1, length, length)
    if block_size:
        blocks = torch.arange(length, device=mask.device) // block_size
        allowed = allowed & (lower | (blocks[:, None] == blocks[None, :]))[None, None]
    return _additive(allowed, dtype)


class WhisperVQEncoder(nn.Module):
    """Whisper encoder up to the quantizer: conv stem, positions, layers, pooling, codebook lookup."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

        self.config = config
        if config.encoder_causal_convolution:
            self.conv1: nn.Conv1d = CausalConv1d(config.num_mel_bins, config.d_model, 3)
            self.conv2: nn.Conv1d = CausalConv1d(config.d_model, config.d_model, 3, stride=2)
        else:
            self.conv1 = nn.Conv1d(config.num_mel_bins, config.d_model, 3, padding=1)
            self.conv2 = nn.Conv1d(config.d_model, config.d_model, 3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, config.d_model)
        layer_config = config.whisper_config()
        self.layers = nn.ModuleList(WhisperEncoderLayer(layer_config) for _ in range(config.quantize_position))
        self.codebook = nn.Embedding(config.quantize_vocab_size, config.d_model)

    @property
    def frame_stride(self) -> int:
        """Mel frames per encoder frame (the conv stem's total stride)."""
        return self.conv1.stride[0] * self.conv2.stride[0]

    @property
    def pooling(self) -> int:
        return self.config.pooling_kernel_size or 1

    def _pool(self, hidden: torch.Tensor) -> torch.Tensor:
        kernel = self.pooling
        hidden = hidden.transpose(1, 2)
        if hidden.shape[-1] % kernel:
            hidden = nn.functional.pad(hidden, (0, kernel - hidden.shape[-1] % kernel))
        pool = nn.functional.avg_pool1d if self.config.pooling_type == "avg" else nn.functional.max_pool1d
        return pool(hidden, kernel).transpose(1, 2)

    @torch.no_grad()
    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (batch, T/8) and the mask of which of them cover real audio."""
        config = self.config
        mask = attention_mask[:, :: self.frame_stride]
        hidden = nn.functional.gelu(self.conv1(input_features))
        hidden = nn.functional.gelu(self.conv2(hidden)).transpose(1, 2)
        length = hidden.shape[1]
        if length > config.max_source_positions:
            raise SiftError(f"a speech segment has {length} frames, more than the tokenizer's {config.max_source_positions}")
        hidden = hidden + self.embed_positions.weight[:length]
        causal = config.encoder_causal_attention or config.quantize_causal_encoder
        block = config.quantize_causal_block_size
        bias = attention_bias(mask, block, causal, hidden.dtype)
        for index, layer in enumerate(self.layers, start=1):
            hidden = layer(hidden, bias)
            if isinstance(hidden, tuple):  # early transformers 5 releases return (hidden_states,)
                hidden = hidden[0]
            if index == config.pooling_position and config.pooling_kernel_size:
                hidden = self._pool(hidden)
                mask = mask[:, :: self.pooling]
                bias = attention_bias(mask, block // self.pooling if block else None, causal, hidden.dtype)
        return nearest_code(hidden, self.codebook.weight), mask


def nearest_code(hidden: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the closest codebook row (L2) for every frame; |h|^2 is the same for all rows and dropped."""
    flat = hidden.reshape(-1, hidden.shape[-1]).float()
    table = codebook.float()
    distances = table.square().sum(dim=1)[None, :] - 2.0 * flat @ table.t()
    return distances.argmin(dim=1).reshape(hidden.shape[:-1])


class SpeechTokenizer:
    """Waveforms in, speech token ids out (12.5 a second for GLM-4-Voice)."""

    def __init__(self, encoder: WhisperVQEncoder, feature_extractor: Any, name: str, device: torch.device) -> None:
        self.encoder = encoder.eval().to(device)
        self.feature_extractor = feature_extractor
        self.name = name
        self.device = device

    @property
    def codebook_size(self) -> int:
        return self.encoder.config.quantize_vocab_size

    @property
    def samples_per_token(self) -> int:
        return self.encoder.frame_stride * self.encoder.pooling * self.feature_extractor.hop_length

    @property
    def tokens_per_second(self) -> float:
        return SAMPLE_RATE / self.samples_per_token

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "codebook_size": self.codebook_size,
            "tokens_per_second": self.tokens_per_second,
            "config": asdict(self.encoder.config),
        }

    def encode(self, audios: Sequence[Audio], batch_size: int = 8) -> list[list[int]]:
        """Token ids of each waveform: 30-second segments, batched, tokens of padding dropped."""
        segments: list[tuple[int, Any]] = []
        for index, audio in enumerate(audios):
            samples = resample(audio, SAMPLE_RATE).samples
            step = SEGMENT_SECONDS * SAMPLE_RATE
            segments.extend((index, samples[start : start + step]) for start in range(0, len(samples), step))
        tokens: list[list[int]] = [[] for _ in audios]
        for first in range(0, len(segments), batch_size):
            batch = segments[first : first + batch_size]
            features = self.feature_extractor(
                [samples for _, samples in batch],
                sampling_rate=SAMPLE_RATE,
                return_attention_mask=True,
                return_tensors="pt",
                padding="longest",
                pad_to_multiple_of=self.samples_per_token,
            )
            ids, mask = self.encoder(
                features["input_features"].to(self.device, torch.float32), features["attention_mask"].to(self.device)
            )
            for row, (index, _) in enumerate(batch):
                tokens[index].extend(ids[row][mask[row].bool()].tolist())
        return tokens


def _source_dir(source: str) -> Path:
    """A local tokenizer directory, or the hub snapshot of `source` (safetensors preferred over .bin)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")):
        raise SiftError(f"speech tokenizer {source} is not an existing directory; pass one with config.json and weights, or a hub id")
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors"]))
        if not any(local.glob("*.safetensors")):
            local = Path(snapshot_download(source, allow_patterns=["*.json", "*.bin"]))
    except Exception as exc:
        offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        reason = first_line(exc, 160)
        raise SiftError(
            f"cannot fetch speech tokenizer {source}{offline}: {reason}; go online, pass a local copy, or use --speech-tokenizer local"
        ) from None
    return local


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    shards = sorted(directory.glob("model*.safetensors"))
    for shard in shards:
        state.update(load_file(str(shard)))
    if not shards:
        for shard in sorted(directory.glob("pytorch_model*.bin")):
            state.update(torch.load(shard, map_location="cpu", weights_only=True))
    if not state:
        raise SiftError(f"{directory} holds no model*.safetensors or pytorch_model*.bin weights")
    return state


def encoder_weights(state: dict[str, torch.Tensor], config: VQConfig) -> dict[str, torch.Tensor]:
    """The encoder's tensors out of a checkpoint: a bare encoder or a full WhisperVQ model (`model.encoder.`),
    without the final layer norm, the layers past the quantizer, or training-only buffers."""
    prefix = next((p for p in ("model.encoder.", "encoder.") if f"{p}conv1.weight" in state), "")
    kept = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        part = name.split(".")[0]
        if part in WEIGHT_PARTS or (part == "layers" and int(name.split(".")[1]) < config.quantize_position):
            kept[name] = tensor
    return kept


def load_glm_tokenizer(source: str = GLM_TOKENIZER, device: str | torch.device | None = None) -> SpeechTokenizer:
    """The GLM-4-Voice tokenizer from the hub or a local directory in the hub's layout."""
    from transformers import WhisperFeatureExtractor

    directory = _source_dir(source)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise SiftError(f"{directory} has no config.json; it is not a WhisperVQ tokenizer directory")
    config = VQConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")), str(config_path))
    if not config.quantize_vocab_size:
        raise SiftError(f"{config_path} sets no quantize_vocab_size, so the model makes no tokens")
    encoder = WhisperVQEncoder(config)
    weights = encoder_weights(_read_weights(directory), config)
    try:
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
        problem = f"missing {missing[:3]}, unexpected {unexpected[:3]}" if missing or unexpected else None
    except RuntimeError as exc:
        problem = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
    if problem:
        raise SiftError(f"weights in {directory} do not fit its config ({problem[:200]}); re-download the tokenizer")
    if not (directory / "preprocessor_config.json").is_file():
        raise SiftError(f"{directory} has no preprocessor_config.json (the Whisper feature extractor settings)")
    extractor = WhisperFeatureExtractor.from_pretrained(str(directory))
    return SpeechTokenizer(encoder, extractor, source, _device(device))


LOCAL_CONFIG = VQConfig(
    num_mel_bins=128,
    d_model=64,
    encoder_attention_heads=4,
    encoder_ffn_dim=128,
    max_source_positions=1500,
    quantize_vocab_size=1024,
    pooling_kernel_size=4,
    pooling_type="avg",
    pooling_position=2,
    quantize_position=2,
    quantize_causal_block_size=200,
    encoder_causal_convolution=True,
)


def local_encoder(config: VQConfig = LOCAL_CONFIG, seed: int = LOCAL_SEED) -> WhisperVQEncoder:
    """A randomly initialised encoder that is the same on every run (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WhisperVQEncoder(config)


def local_tokenizer(device: str | torch.device | None = None) -> SpeechTokenizer:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=LOCAL_CONFIG.num_mel_bins)
    return SpeechTokenizer(local_encoder(), extractor, LOCAL, _device(device))


def load_speech_tokenizer(source: str, device: str | torch.device | None = None) -> SpeechTokenizer:
    """`local`, a hub id, or a local directory of a WhisperVQ tokenizer."""
    return local_tokenizer(device) if source == LOCAL else load_glm_tokenizer(source, device)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
