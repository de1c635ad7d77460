"""Quiet by default: no third-party progress bar, even one whose caller asks for it (lm-eval does)."""

from __future__ import annotations

import subprocess
import sys

BAR = "from tqdm import tqdm; list(tqdm(range(3), disable=False, desc='requests'))"


def test_progress_bars_are_off_unless_verbose() -> None:
    for verbose, drawn in ((False, False), (True, True)):
        code = f"from sift_cli.output import configure_output; configure_output({verbose}); {BAR}"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert ("requests" in done.stderr) is drawn, done.stderr
