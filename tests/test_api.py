"""The Python API: the functions write the run directories the commands write and return typed results."""

from __future__ import annotations

import pytest
from rich.console import Console
from test_train import TRAINABLE, data_dir  # noqa: F401

from sift_cli import api


def test_train_resume_and_evaluate_as_functions(tiny_model_dir, data_dir, tmp_path) -> None:  # noqa: F811
    quiet = Console(quiet=True)
    spec = api.run_spec(app="unlearning", settings={
        "model.name": str(tiny_model_dir), "data.path": str(data_dir), "output": str(tmp_path / "run"), "train.steps": 2,
        "train.trainable": TRAINABLE, "train.batch_size": 2, "data.max_length": 32, "objective.layer": 1, "optim.k": 4,
    })  # fmt: skip
    first = api.train(spec, console=quiet)
    assert first.run_dir == (tmp_path / "run").resolve() and first.steps == 2 and list(first.metrics["step"]) == [1, 2]
    longer = api.resume(tmp_path / "run", steps=3, console=quiet)
    assert longer.steps == 3 and longer.spec.train.steps == 3
    scores = api.evaluate(tmp_path / "run", tasks=[], console=quiet)
    assert set(scores.results["perplexity"]) == {"forget", "retain"} and "made" not in scores.results
    with pytest.raises(api.SiftError, match="already holds a run"):
        api.train(spec, console=quiet)
    assert api.SiftTrainer.__name__ == "SiftTrainer"
