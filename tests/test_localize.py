"""`sift localize` on synthetic run directories: every count it writes is checked against the log.

The expected numbers come from the arrays the synthetic alignment log was built from (or from plain
Python over the rows), never from localize's own helpers.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console

from sift_cli.errors import SiftError
from sift_cli.localize import localize
from sift_cli.store.rundir import ALIGNMENT, ALIGNMENT_COLUMNS, RunDir

EPS = -0.1
COMPONENTS = ("q", "k", "v", "o", "gate", "up", "down")


def write_spec(path: Path, steps: int, eps: float = EPS, method: str = "sift", k: int | None = 128) -> RunDir:
    run = RunDir(path)
    path.mkdir(parents=True, exist_ok=True)
    spec = {
        "app": "unlearning",
        "data": {"path": str(path / "data")},
        "optim": {"eps": eps, "method": method, "k": k, "tau_source": "momentum"},
        "train": {"steps": steps},
    }
    run.spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return run


def block_name(layer: int, component: str) -> str:
    module = "self_attn" if component in ("q", "k", "v", "o") else "mlp"
    return f"model.layers.{layer}.{module}.{component}_proj.weight"


def synthetic_run(path: Path, layers: int, steps: int, method: str = "sift", seed: int = 0) -> dict[str, np.ndarray]:
    """A whole-layer run written straight to alignment.csv (row-by-row appends are too slow at 210k rows).

    Conflicts concentrate in a few layers and in bursts of steps, as in the paper's Figure 2.
    Returns the arrays (steps x layers x components) the log was built from.
    """
    run = write_spec(path, steps, method=method)
    rng = np.random.default_rng(seed)
    layer_bias = np.where(np.arange(layers) % 7 == 3, -0.12, 0.15)[None, :, None]
    component_bias = np.array([0.05, 0.05, 0.05, 0.0, -0.02, -0.05, -0.08])[None, None, :]
    burst = np.where((np.arange(1, steps + 1) // 50) % 4 == 1, -0.2, 0.0)[:, None, None]
    tau = rng.normal(0.0, 0.08, size=(steps, layers, len(COMPONENTS))) + layer_bias + component_bias + burst
    fired = (tau < EPS) & (method == "sift")
    names = [(layer, comp, block_name(layer, comp)) for layer in range(layers) for comp in COMPONENTS]
    layer_ids, components, blocks = (np.tile(np.array(column), steps) for column in zip(*names))
    frame = pd.DataFrame(
        {
            "step": np.repeat(np.arange(1, steps + 1), len(names)),
            "block": blocks,
            "layer": layer_ids,
            "component": components,
            "tau_grad": tau.ravel(),
            "tau_momentum": tau.ravel(),
            "tau": tau.ravel(),
            "branch": np.where(fired.ravel(), "sift", "muon" if method == "sift" else method),
            "candidate": method == "sift",
        }
    )
    # Written without the subspace columns, as runs logged before they existed.
    (run.path / ALIGNMENT).write_text(frame.to_csv(index=False), encoding="utf-8")
    return {"tau": tau, "fired": fired}


def tiny_rows(steps: int = 10) -> list[dict]:
    """3 layers x down_proj x 10 steps: layer 1 conflicts on odd steps and takes SIFT; layer 2 conflicts
    at step 4 without taking it (as a non-candidate block would), so conflicts and firings differ."""
    rows = []
    for step in range(1, steps + 1):
        for layer in range(3):
            tau = 0.2 + 0.01 * layer
            branch, error = "muon", math.nan
            if layer == 1 and step % 2:
                tau, branch, error = -0.3 - 0.01 * step, "sift", 0.001 * step
            if layer == 2 and step == 4:
                tau = -0.5
            rows.append(
                {
                    "step": step,
                    "block": block_name(layer, "down"),
                    "layer": layer,
                    "component": "down",
                    "tau_grad": tau,
                    "tau_momentum": tau,
                    "tau": tau,
                    "branch": branch,
                    "candidate": True,
                    "subspace_error": error,
                    "subspace_fallback": step == 5,
                }
            )
    return rows


def tiny_run(path: Path, method: str = "sift", spectra: bool = True) -> list[dict]:
    run = write_spec(path, steps=10, method=method)
    rows = tiny_rows()
    if method != "sift":
        rows = [dict(row, branch=method) for row in rows]
    for step in range(1, 11):
        run.append_alignment([row for row in rows if row["step"] == step])
        run.append_metrics({"step": step, "loss_f": 1.0, "loss_g": 2.0})
    if spectra:
        for step in (5, 10):
            run.append_spectra(step, block_name(1, "down"), "f", [4.0, 2.0, 1.0])
            run.append_spectra(step, block_name(1, "down"), "g", [3.0, 1.0])
            run.append_spectra(step, block_name(2, "down"), "f", [1.0, 1.0, 1.0, 1.0])
            run.append_spectra(step, block_name(2, "down"), "g", [0.0, 0.0])
    return rows


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """30 layers x 7 components x 1000 steps, localized once for all the checks below."""
    path = tmp_path_factory.mktemp("runs") / "big"
    arrays = synthetic_run(path, layers=30, steps=1000)
    console = quiet()
    result = localize([path], console=console)
    return path, arrays, result, console.file.getvalue()


def test_big_run_writes_every_file(big):
    path, _, result, _ = big
    names = sorted(Path(f).name for f in result["runs"][0]["files"])
    assert names == sorted(
        [
            "steps.csv",
            "blocks.csv",
            "layers.csv",
            "tau_layers.csv",
            "tau_layers.png",
            "tau_components.csv",
            "tau_components.png",
            "sparsity.csv",
            "sparsity.png",
        ]
    )
    assert all((path / "plots" / name).stat().st_size > 0 for name in names)
    assert result["comparison"] == []


def test_big_run_counts_per_step_and_layer(big):
    path, arrays, _, _ = big
    conflict = arrays["tau"] < EPS
    steps = pd.read_csv(path / "plots" / "steps.csv")
    assert steps["step"].tolist() == list(range(1, 1001))
    assert steps["conflict_blocks"].tolist() == conflict.sum(axis=(1, 2)).tolist()
    assert steps["sift_blocks"].tolist() == arrays["fired"].sum(axis=(1, 2)).tolist()
    layers = pd.read_csv(path / "plots" / "layers.csv")
    assert layers["layer"].tolist() == list(range(30))
    assert layers["conflict_steps"].tolist() == conflict.any(axis=2).sum(axis=0).tolist()
    blocks = pd.read_csv(path / "plots" / "blocks.csv").set_index("block")
    for layer, c in ((3, 2), (17, 6)):
        assert blocks.loc[block_name(layer, COMPONENTS[c]), "conflict_steps"] == conflict[:, layer, c].sum()


def test_big_run_heatmap_matrices(big):
    path, arrays, _, _ = big
    layers = pd.read_csv(path / "plots" / "tau_layers.csv", index_col="step")
    assert list(layers.columns) == [str(layer) for layer in range(30)]
    np.testing.assert_allclose(layers.to_numpy(), arrays["tau"].min(axis=2), rtol=1e-5, atol=1e-6)
    components = pd.read_csv(path / "plots" / "tau_components.csv", index_col="step")
    assert components.shape == (1000, 210)
    assert list(components.columns[:8]) == [f"0.{c}" for c in COMPONENTS] + ["1.q"]
    np.testing.assert_allclose(components["12.up"].to_numpy(), arrays["tau"][:, 12, 5], rtol=1e-5, atol=1e-6)


def test_big_run_sparsity(big):
    path, arrays, result, _ = big
    fired, conflict = arrays["fired"], arrays["tau"] < EPS
    row = pd.read_csv(path / "plots" / "sparsity.csv").iloc[0]
    assert row["run"] == "big" and row["steps"] == 1000 and row["blocks"] == 210
    assert row["temporal_sift"] == pytest.approx(fired.any(axis=(1, 2)).mean(), abs=1e-6)
    assert row["spatial_sift"] == pytest.approx(fired.any(axis=0).mean(), abs=1e-6)
    assert row["density_sift"] == pytest.approx(fired.mean(), abs=1e-6)
    assert row["density_conflict"] == pytest.approx(conflict.mean(), abs=1e-6)
    assert result["runs"][0]["sparsity"]["density_sift"] == pytest.approx(fired.mean())


def test_big_run_summary_names_top_block(big):
    _, arrays, _, text = big
    conflict = (arrays["tau"] < EPS).sum(axis=0)
    mean_tau = arrays["tau"].mean(axis=0)
    layer, comp = min(np.ndindex(conflict.shape), key=lambda i: (-conflict[i], mean_tau[i]))
    assert block_name(layer, COMPONENTS[comp]).removesuffix(".weight") in text
    assert "Steps with the most conflicts" in text
    assert "SIFT fired on" in text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 layers x 1 component x 10 steps with logged spectra, localized once."""
    path = tmp_path_factory.mktemp("runs") / "tiny"
    rows = tiny_run(path)
    return path, rows, localize([path], console=quiet())


def test_tiny_run_counts(tiny):
    path, rows, _ = tiny
    plots = path / "plots"
    steps = pd.read_csv(plots / "steps.csv").set_index("step")
    for step in range(1, 11):
        mine = [row for row in rows if row["step"] == step]
        assert steps.loc[step, "conflict_blocks"] == sum(row["tau"] < EPS for row in mine)
        assert steps.loc[step, "sift_blocks"] == sum(row["branch"] == "sift" for row in mine)
    layers = pd.read_csv(plots / "layers.csv").set_index("layer")
    assert layers["conflict_steps"].to_dict() == {0: 0, 1: 5, 2: 1}
    assert layers["sift_steps"].to_dict() == {0: 0, 1: 5, 2: 0}
    sparsity = pd.read_csv(plots / "sparsity.csv").iloc[0]
    assert sparsity["temporal_sift"] == pytest.approx(0.5)
    assert sparsity["spatial_sift"] == pytest.approx(1 / 3)
    assert sparsity["density_sift"] == pytest.approx(5 / 30)
    assert sparsity["temporal_conflict"] == pytest.approx(0.6)
    assert not (plots / "tau_components.png").exists()


def test_tiny_run_subspace_error_summary(tiny):
    path, rows, _ = tiny
    subspace = pd.read_csv(path / "plots" / "subspace.csv").set_index("component")
    errors = [row["subspace_error"] for row in rows if row["branch"] == "sift"]
    assert subspace.loc["down", "sift_records"] == len(errors) == 5
    assert subspace.loc["down", "median_error"] == pytest.approx(np.median(errors))
    assert subspace.loc["down", "max_error"] == pytest.approx(0.009)
    assert subspace.loc["down", "fallbacks"] == 1


def test_old_alignment_log_reads_without_subspace_columns(big, tmp_path):
    path = big[0]
    assert not (path / "plots" / "subspace.csv").exists()
    frame = RunDir(path).read_alignment()
    assert frame["subspace_error"].isna().all() and not frame["subspace_fallback"].any()
    old = write_spec(tmp_path / "old", steps=2)
    (old.path / ALIGNMENT).write_text(",".join(ALIGNMENT_COLUMNS[:-2]) + "\n", encoding="utf-8")
    old.append_alignment([dict(tiny_rows()[4], subspace_error=0.5)])
    appended = old.read_alignment()
    assert len(appended) == 1 and math.isnan(appended.loc[0, "subspace_error"])


def test_tiny_run_effective_rank(tiny):
    path, _, result = tiny
    assert str(path / "plots" / "effective_rank.png") in result["runs"][0]["files"]
    ranks = pd.read_csv(path / "plots" / "effective_rank.csv")
    assert len(ranks) == 8
    by_key = ranks.set_index(["block", "momentum"]).sort_index()

    def levels(layer: int, momentum: str) -> list[list[float]]:
        return by_key.loc[(block_name(layer, "down"), momentum), ["k90", "k95", "k99"]].values.tolist()

    # sigma^2 = 16, 4, 1: cumulative shares .762, .952, 1.
    assert levels(1, "f") == [[2, 2, 3], [2, 2, 3]]
    # sigma^2 = 9, 1: 90% is reached exactly by K=1.
    assert levels(1, "g") == [[1, 2, 2], [1, 2, 2]]
    assert levels(2, "f") == [[4, 4, 4], [4, 4, 4]]
    assert all(math.isnan(k) for row in levels(2, "g") for k in row)


def test_missing_tau_and_torn_last_line(tmp_path):
    """A block whose tau was not finite counts as no conflict; a half-written last record is ignored."""
    run = write_spec(tmp_path / "live", steps=100)
    rows = tiny_rows(steps=3)
    rows[0]["tau"] = None
    run.append_alignment(rows[:-1])
    with open(run.path / ALIGNMENT, "a", encoding="utf-8") as fh:
        fh.write("4,model.layers.0.mlp.down_proj.weight,0,down,-0.9")
    console = quiet()
    localize([run.path], console=console)
    steps = pd.read_csv(run.path / "plots" / "steps.csv")
    assert steps["step"].tolist() == [1, 2, 3]
    assert steps["conflict_blocks"].tolist() == [1, 0, 1]
    matrix = pd.read_csv(run.path / "plots" / "tau_layers.csv", index_col="step")
    assert math.isnan(matrix.loc[1, "0"]) and math.isnan(matrix.loc[3, "2"])
    assert "3 of 100 steps" in console.file.getvalue()


def test_fused_qkv_slices_and_blocks_outside_the_layers(tmp_path):
    """Rows follow the forward pass (fused q, k, v slices, then o) and non-layer blocks come last."""
    run = write_spec(tmp_path / "fused", steps=2)
    labels = [(layer, comp) for layer in (0, 1) for comp in ("o", "qkv.v", "qkv.q", "qkv.k")] + [(-1, "proj")]
    for step in (1, 2):
        run.append_alignment(
            {
                "step": step,
                "block": f"model.layers.{layer}.attn.qkv_proj.weight[{comp}]" if layer >= 0 else "proj.weight",
                "layer": layer,
                "component": comp,
                "tau_grad": -0.5,
                "tau_momentum": -0.5,
                "tau": -0.5 if comp == "qkv.k" else 0.3,
                "branch": "sift" if comp == "qkv.k" else "muon",
                "candidate": True,
            }
            for layer, comp in labels
        )
    console = quiet()
    localize([run.path], console=console)
    matrix = pd.read_csv(run.path / "plots" / "tau_components.csv", index_col="step")
    expected = [f"{layer}.{comp}" for layer in (0, 1) for comp in ("qkv.q", "qkv.k", "qkv.v", "o")] + ["-1.proj"]
    assert list(matrix.columns) == expected
    assert list(pd.read_csv(run.path / "plots" / "tau_layers.csv", index_col="step").columns) == ["0", "1", "-1"]
    assert "model.layers.0.attn.qkv_proj.weight[qkv.k]" in console.file.getvalue()


def test_several_runs_with_output(tmp_path):
    tiny_run(tmp_path / "a" / "run", spectra=False)
    tiny_run(tmp_path / "b" / "run", method="muon", spectra=False)
    result = localize([tmp_path / "a" / "run", tmp_path / "b" / "run"], tmp_path / "out", console=quiet())
    assert [run["name"] for run in result["runs"]] == ["a-run", "b-run"]
    assert (tmp_path / "out" / "a-run" / "tau_layers.png").exists()
    assert not (tmp_path / "a" / "run" / "plots").exists()
    table = pd.read_csv(tmp_path / "out" / "sparsity_comparison.csv").set_index("run")
    assert table.loc["a-run", "density_sift"] == pytest.approx(5 / 30)
    assert table.loc["b-run", "density_sift"] == 0
    assert table.loc["b-run", "density_conflict"] == pytest.approx(6 / 30)
    assert table["method"].tolist() == ["sift", "muon"]


def test_several_runs_without_output_compare_in_each_run(tmp_path):
    tiny_run(tmp_path / "a", spectra=False)
    tiny_run(tmp_path / "b", method="muon", spectra=False)
    result = localize([tmp_path / "a", tmp_path / "b"], console=quiet())
    assert len(result["comparison"]) == 4
    for name in ("a", "b"):
        table = pd.read_csv(tmp_path / name / "plots" / "sparsity_comparison.csv")
        assert table["run"].tolist() == ["a", "b"]


def test_not_a_run_dir(tmp_path):
    with pytest.raises(SiftError, match="not a run directory"):
        localize([tmp_path], console=quiet())


def test_empty_alignment_log(tmp_path):
    run = write_spec(tmp_path / "fresh", steps=10)
    (run.path / ALIGNMENT).write_text(",".join(ALIGNMENT_COLUMNS) + "\n", encoding="utf-8")
    with pytest.raises(SiftError, match="no alignment records"):
        localize([run.path], console=quiet())


def test_invalid_run_spec_is_refused_in_one_line(tmp_path):
    """localize reads a run's settings through the run-spec model, so it refuses what train would."""
    tiny_run(tmp_path / "run", spectra=False)
    spec = tmp_path / "run" / "spec.yaml"
    spec.write_text("app: unlearning\noptim: {eps: 0.3}\n", encoding="utf-8")
    with pytest.raises(SiftError, match="spec key 'data' is required") as caught:
        localize([tmp_path / "run"], console=quiet())
    assert "optim.eps=0.3 never marks a conflict" in str(caught.value)
    spec.write_text("app: [unclosed\n", encoding="utf-8")
    with pytest.raises(SiftError, match="spec.yaml cannot be read"):
        localize([tmp_path / "run"], console=quiet())


def test_no_runs():
    with pytest.raises(SiftError, match="no run directory"):
        localize([], console=quiet())
