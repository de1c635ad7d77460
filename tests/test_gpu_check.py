"""scripts/gpu_check.sh is ready to run on a GPU machine: valid bash, executable, every file it names
exists, and its training driver runs (here on CPU, on a tiny config)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from transformers import LlamaConfig

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def write_tiny_config(root: Path) -> Path:
    path = root / "tiny"
    LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False).save_pretrained(path)  # fmt: skip
    return path


def test_script_is_executable_valid_bash_and_names_existing_files():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text and "-m gpu" in text and "bench engine --device cuda" in text
    for path in re.findall(r"(?:scripts|configs)/[\w./-]+", text):
        assert (ROOT / path).exists(), path


def test_training_driver_runs_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_steps.py"), "--model", str(write_tiny_config(tmp_path)),
         "--steps", "2", "--length", "32", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:] if line.strip()}
    assert set(lines) == {"adamw", "muon", "sift"}
    assert float(lines["muon"][2]) == 1.0 and int(lines["sift"][3]) > 0
