"""The README's Python API example runs as a user would run it, and checks what it claims."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_plain_loop_example_trains_and_resumes_exactly() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "plain_loop.py")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "weights bit-identical to the straight run" in done.stdout
