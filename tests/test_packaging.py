"""What a user installing the wheel gets: the presets from the top-level configs/, found at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_packaged_list_is_the_package_tree() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "sift_cli").rglob("__init__.py")}
    assert listed == found | {"sift_cli.configs"}


def test_wheel_carries_the_presets_and_finds_them(tmp_path: Path) -> None:
    """Built from a clean copy of the tracked files, so no earlier build output can hide a missing file."""
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
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
