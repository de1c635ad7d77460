"""The run spec: one validated pydantic model, built from a YAML preset, a user file and CLI overrides.

Validation errors become one-line `SiftError`s naming the field and the fix, so a typo in a 7B run's
config fails in a second instead of after the model has loaded.
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from sift_cli.apps.registry import APPS, OPTIONS, check_app
from sift_cli.engine.config import OptimizerConfig
from sift_cli.errors import SiftError
from sift_cli.resources import presets_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
FLOAT32_MAX = 3.4028234663852886e38
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
OptionsT = TypeVar("OptionsT", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSpec(_Strict):
    name: str = Field(DEFAULT_MODEL, min_length=1, description="HF hub id, local directory, or the offline default")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    revision: Optional[str] = None
    trust_remote_code: bool = False


class DataSpec(_Strict):
    path: Path = Field(description="prepared-data directory written by `sift prepare`")
    max_length: int = Field(256, ge=8)
    max_dropped: float = Field(
        0.1, ge=0, le=1, description="refuse a run whose max_length drops more than this share of an objective's examples"
    )


@dataclass
class OptimSpec(OptimizerConfig):
    """The engine's settings plus how the model's fused matrices map onto them.

    Every engine setting comes from `OptimizerConfig` itself; only `split_fused_qkv`, which reads the
    model's config, is the spec's own."""

    split_fused_qkv: bool = True
    """gate the Q, K and V row slices of a fused query_key_value matrix (GLM) as separate blocks"""

    def problems(self) -> list[str]:
        """The engine's checks, plus one a run needs: a gate that can fire only on a conflict (the
        engine itself accepts any eps, which its tests use to force a branch)."""
        found = super().problems()
        if math.isfinite(self.lr) and abs(self.lr) >= FLOAT32_MAX:
            found.append(f"lr={self.lr} is beyond the float32 range the update is computed in; pass a learning rate below 1e38")
        if self.method == "sift" and math.isfinite(self.eps) and not -1.0 <= self.eps < 0.0:
            found.append(f"eps={self.eps} never marks a conflict; SIFT needs -1 <= eps < 0 (paper: -0.1 to -0.8)")
        return found


class LoraSpec(_Strict):
    """Train low-rank adapters (peft's LoRA) instead of the weights themselves: each adapted matrix W
    gets factors B (out x rank) and A (rank x in), W + (alpha / rank) B A, and only the factors train.
    The spectral optimizers treat each factor as one block; SIFT's top-K is at most the rank."""

    rank: int = Field(16, ge=1, description="rank r of the factors")
    alpha: float = Field(32.0, gt=0, description="scale numerator: the update is (alpha / r) B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: Optional[str] = Field(
        None, description="regex of module names to adapt, matched whole (null: the linear modules whose weight train.trainable selects)"
    )
    merge: bool = Field(False, description="also write the merged full model to model/merged/ (plain transformers, no peft needed)")


class TrainSpec(_Strict):
    steps: int = Field(100, ge=1, le=10**9)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    seed: int = Field(0, ge=0, lt=2**64, description="torch accepts seeds in [0, 2**64)")
    trainable: Optional[str] = Field(None, description="regex of trained parameter names (null: the app's default)")
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    spectra_every: int = Field(0, ge=0, description="log momentum singular values every N steps (0: off)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    deterministic: bool = Field(
        False, description="torch deterministic algorithms (bit-reproducible GPU runs, slower; recorded in env.json)"
    )
    parallel: Literal["ddp", "fsdp2"] = Field(
        "ddp",
        description="under several processes: ddp (replicated model, gradients averaged by DDP) or fsdp2 "
        "(parameters, gradients and optimizer state sharded); batch_size stays per process",
    )
    lora: Optional[LoraSpec] = Field(None, description="train LoRA adapters instead of the weights (null: full fine-tuning)")
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="also send metrics to an experiment tracker (accelerate's trackers); none: metrics.jsonl only"
    )

    @model_validator(mode="after")
    def _checked(self) -> "TrainSpec":
        problems = []
        if self.trainable is not None:
            try:
                re.compile(self.trainable)
            except re.error as exc:
                problems.append(f"trainable={self.trainable!r} is not a valid regular expression ({exc}); fix the pattern")
        if not DEVICE.match(self.device):
            problems.append(f"device={self.device!r} is not a device; use auto, cpu, cuda or cuda:N")
        if self.lora is not None and self.parallel == "fsdp2":
            problems.append("lora with parallel=fsdp2 is not supported; use parallel=ddp (the adapters' state is small on every rank)")
        if self.lora is not None and self.lora.target_modules is not None:
            try:
                re.compile(self.lora.target_modules)
            except re.error as exc:
                problems.append(f"lora.target_modules={self.lora.target_modules!r} is not a valid regular expression ({exc}); fix the pattern")
        if problems:
            raise ValueError("\n".join(problems))
        return self


SCALAR_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}


def _kinds(annotation: Any) -> set[Any]:
    """The types a field's annotation accepts: Optional and Union unfolded, a Literal as its values' types."""
    origin = get_origin(annotation)
    if origin is Literal:
        return {type(value) for value in get_args(annotation)}
    if origin in (Union, types.UnionType):
        return set().union(*(_kinds(member) for member in get_args(annotation)))
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    return {origin or annotation}


def _field_types(model: Any) -> dict[str, Any]:
    """{field: annotation} of a pydantic model or a plain dataclass (the engine's config is one)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {name: info.annotation for name, info in model.model_fields.items()}
    return get_type_hints(model) if is_dataclass(model) else {}


def strict_scalars(tree: Any, model: Any, prefix: str = "") -> list[str]:
    """What pydantic's lax mode would coerce silently: true or false where a number belongs (`steps: true`
    is not 1), a float where an integer belongs (`steps: 1.0e30`), a number where true or false belongs.
    One line each."""
    if not isinstance(tree, dict):
        return []
    fields = _field_types(model)
    problems = []
    for key, value in tree.items():
        if key not in fields:
            continue
        kinds = _kinds(fields[key])
        nested = [kind for kind in kinds if isinstance(kind, type) and (issubclass(kind, BaseModel) or is_dataclass(kind))]
        where = f"{prefix}{key}"
        if nested and isinstance(value, dict):
            problems += strict_scalars(value, nested[0], f"{where}.")
        elif isinstance(value, bool) and bool not in kinds:
            wanted = " or ".join(SCALAR_NAMES[kind] for kind in (int, float, str, Path) if kind in kinds) or "no boolean"
            problems.append(f"spec key {where!r}: expected {wanted} (got {str(value).lower()})")
        elif isinstance(value, float) and int in kinds and float not in kinds:
            problems.append(f"spec key {where!r}: expected an integer (got {value!r})")
        elif isinstance(value, int) and not isinstance(value, bool) and kinds <= {bool, type(None)}:
            problems.append(f"spec key {where!r}: expected true or false (got {value})")
    return problems


class RunSpec(_Strict):
    app: Literal[APPS]  # type: ignore[valid-type]
    model: ModelSpec = ModelSpec()
    data: DataSpec
    train: TrainSpec = TrainSpec()
    optim: OptimSpec = OptimSpec()
    objective: dict[str, Any] = Field(default_factory=dict, description="the app's own options")
    output: Path = Path("runs/run")

    _options: BaseModel = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _no_coerced_scalars(cls, tree: Any) -> Any:
        problems = strict_scalars(tree, cls)
        if isinstance(tree, dict) and isinstance(tree.get("objective"), dict) and tree.get("app") in OPTIONS:
            problems += strict_scalars(tree["objective"], OPTIONS[tree["app"]], "objective.")
        if problems:
            raise ValueError("\n".join(problems))
        return tree

    @model_validator(mode="after")
    def _objective_fits_app(self) -> "RunSpec":
        try:
            options = OPTIONS[self.app].model_validate(self.objective)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc, prefix="objective.")) from None
        self.objective = options.model_dump(mode="json")
        self._options = options
        return self

    def options(self, kind: type[OptionsT]) -> OptionsT:
        """The app's `objective:` options, typed, as validated once when the spec was loaded."""
        if not isinstance(self._options, kind):
            raise TypeError(f"the {self.app} spec holds {type(self._options).__name__}, not {kind.__name__}")
        return self._options

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class _UniqueKeys(yaml.SafeLoader):
    """YAML whose mappings may not repeat a key: PyYAML otherwise keeps the later value silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """YAML text as data, refusing repeated keys (a yaml.YAMLError names the key and its line)."""
    return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader subclass)


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, with one-line errors for a missing file or malformed YAML."""
    if not path.is_file():
        raise SiftError(f"config file {path} does not exist; check the path")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SiftError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
    except OSError as exc:
        raise SiftError(f"config file {path} cannot be read ({exc.strerror}); check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SiftError(f"{path} is not valid YAML{where}: {problem}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SiftError(f"{path} must hold a YAML mapping (key: value lines), not a {type(data).__name__}")
    return data


def load_preset(name: str) -> dict[str, Any]:
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise SiftError(f"no preset named {name!r}; choose one of: {', '.join(preset_names())}")
    return load_yaml(path)


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating the intermediate mappings."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", c) with c parsed as YAML (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise SiftError(f"--set {text!r} is not of the form key.path=value (e.g. --set train.steps=20)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise SiftError(f"--set {text!r} has an empty key; write it as key.path=value")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve_spec(
    app: str | None = None,
    preset: str | None = None,
    config: Path | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> RunSpec:
    """Merge preset <- user config <- typed flags <- `--set` assignments, then validate.

    The preset defaults to `<app>_cpu` so that `sift train --app X` runs on a laptop; the paper's
    settings are the `<app>_paper` presets.
    """
    tree: dict[str, Any] = {}
    user = load_yaml(config) if config else {}
    app_name = app or user.get("app")
    if app_name and not preset:
        check_app(str(app_name))
    if preset or (app_name and not config):
        tree = load_preset(preset or f"{app_name}_cpu")
    _merge(tree, user)
    if app:
        tree["app"] = app
    for key, value in (overrides or {}).items():
        if value is not None:
            set_path(tree, key, value)
    for assignment in assignments or []:
        set_path(tree, *parse_assignment(assignment))
    if "app" not in tree:
        raise SiftError(f"no application given; pass --app ({', '.join(APPS)}) or --config FILE")
    return validate_spec(tree)


def validate_spec(tree: dict[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(tree)
    except ValidationError as exc:
        raise SiftError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Every problem of a pydantic error, one line each: field path, what is wrong, how to fix it.

    Messages of our own validators name their settings relative to the section that raised them, so
    they get the section's path in front (`eps=0.2 ...` raised by `optim` reads `optim.eps=0.2 ...`)."""
    return "\n".join(line for err in exc.errors() for line in _describe(err, prefix))


def _describe(err: Any, prefix: str) -> list[str]:
    where = prefix + ".".join(str(part) for part in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return [f"unknown spec key {where!r}; remove it or check the spelling (see `sift train --dry-run`)"]
    if kind == "missing":
        return [f"spec key {where!r} is required; set it in the config or with --set {where}=..."]
    message = err["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error"):
        section = f"{where}." if where else ""
        return [section + line for line in message.splitlines()]
    if kind == "bool_parsing":
        message = "expected true or false"
    return [f"spec key {where!r}: {message} (got {err.get('input')!r})"]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
