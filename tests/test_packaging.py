"""What a user installing the wheel gets: the presets from the top-level configs/, found at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_the_presets_and_finds_them(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    target = tmp_path / "site"
    wheel = next(wheels.glob("sift_cli-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import sift_cli.resources as r, sift_cli.spec as s; "
        "print(r.presets_dir()); print(' '.join(s.preset_names())); print(s.resolve_spec(preset='unlearning_paper').app)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)}, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert Path(out[0]).is_relative_to(target)
    assert out[1].split() == sorted(p.stem for p in (ROOT / "configs" / "presets").glob("*.yaml"))
    assert out[2] == "unlearning"


def test_every_package_of_the_source_tree_is_listed_for_the_wheel() -> None:
    """pyproject lists the packages (discovery cannot see the mapped configs/); a new one must be added."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sift_cli").rglob("__init__.py")}
    assert found | {"sift_cli.configs"} == listed
