"""The run spec: presets, overrides and the one-line errors a user sees for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sift_cli.errors import SiftError
from sift_cli.spec import preset_names, resolve_spec


def test_every_preset_validates() -> None:
    names = preset_names()
    assert {"unlearning_cpu", "unlearning_paper"} <= set(names)
    for name in names:
        spec = resolve_spec(preset=name)
        assert name.startswith(spec.app)


def test_flags_and_set_override_the_preset_in_order(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"app": "unlearning", "data": {"path": "d"}, "train": {"steps": 7, "batch_size": 3}}))
    spec = resolve_spec(
        config=config,
        overrides={"optim.eps": -0.8, "train.steps": 9, "optim.lr": None},
        assignments=["train.batch_size=5", "optim.k=null", "optim.tau_source=grad"],
    )
    assert spec.train.steps == 9
    assert spec.train.batch_size == 5
    assert spec.optim.eps == -0.8
    assert spec.optim.k is None
    assert spec.optim.tau_source == "grad"


def test_app_flag_starts_from_the_cpu_preset() -> None:
    spec = resolve_spec(app="unlearning", overrides={"optim.eps": -0.3})
    cpu = resolve_spec(preset="unlearning_cpu")
    assert spec.model == cpu.model
    assert spec.optim.eps == -0.3


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.stpes=3", "unknown spec key 'train.stpes'"),
        ("optim.eps=0.2", "optim.eps=0.2 never marks a conflict"),
        ("optim.method=sgd", "spec key 'optim.method'"),
        ("train.steps=many", "spec key 'train.steps'"),
        ("objective.no_such_option=1", "unknown spec key 'objective.no_such_option'"),
    ],
)
def test_bad_values_give_one_line_errors(assignment: str, message: str) -> None:
    with pytest.raises(SiftError) as caught:
        resolve_spec(app="unlearning", assignments=[assignment])
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("app: unlearning\ntrain:\n  steps: [1, 2\n")
    with pytest.raises(SiftError, match=r"broken.yaml is not valid YAML at line \d+"):
        resolve_spec(config=config)


def test_missing_config_and_unknown_preset(tmp_path: Path) -> None:
    with pytest.raises(SiftError, match="does not exist"):
        resolve_spec(config=tmp_path / "nope.yaml")
    with pytest.raises(SiftError, match="no preset named 'nope'"):
        resolve_spec(preset="nope")
    with pytest.raises(SiftError, match="no application given"):
        resolve_spec()


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("optim.subspace=fast", "'auto' or 'randomized'"),
        ("optim.nesterov=maybe", "expected true or false"),
        ("optim.lr=.inf", "optim.lr=inf: expected a finite number"),
        ("optim.sift_regex=(", "optim.sift_regex='(' is not a valid regular expression"),
        ("optim.betas=[0.9, 1.5]", "optim.betas=[0.9, 1.5]: expected two numbers in [0, 1)"),
    ],
)
def test_engine_settings_are_checked_when_the_spec_loads(assignment: str, message: str) -> None:
    with pytest.raises(SiftError) as caught:
        resolve_spec(app="unlearning", assignments=[assignment])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_engine_setting_is_reachable_from_the_spec() -> None:
    spec = resolve_spec(
        app="unlearning", assignments=["optim.nesterov=false", "optim.betas=[0.8, 0.99]", "optim.adam_eps=1e-6"]
    )
    assert (spec.optim.nesterov, spec.optim.betas, spec.optim.adam_eps) == (False, (0.8, 0.99), 1e-6)
    from dataclasses import fields

    from sift_cli.engine import OptimizerConfig
    from sift_cli.training.plan import optimizer_config

    engine = optimizer_config(spec.optim)
    assert type(engine) is OptimizerConfig
    assert {f.name: getattr(engine, f.name) for f in fields(OptimizerConfig)} == {
        f.name: getattr(spec.optim, f.name) for f in fields(OptimizerConfig)
    }


def test_all_spec_errors_are_reported_at_once(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("app: unlearning\ntrian: {steps: 3}\noptim: {lr: -1, eps: 0.3}\n")
    with pytest.raises(SiftError) as caught:
        resolve_spec(config=config)
    lines = str(caught.value).splitlines()
    assert any("unknown spec key 'trian'" in line for line in lines)
    assert any("spec key 'data' is required" in line for line in lines)
    with pytest.raises(SiftError) as caught:
        resolve_spec(app="unlearning", assignments=["optim.lr=-1", "optim.eps=0.3"])
    assert str(caught.value).splitlines() == [
        "optim.lr=-1.0: expected a positive number",
        "optim.eps=0.3 never marks a conflict; SIFT needs -1 <= eps < 0 (paper: -0.1 to -0.8)",
    ]
