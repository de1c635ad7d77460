"""`sift prepare speech`: the options this app's data preparation takes.

Kept apart from `app.py` and free of heavy imports: the CLI registers every app's command at start-up,
and `sift --help` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def prepare(
    dataset: str = typer.Option(..., "--dataset", help="cose, esnli or openbookqa"),
    output: Path = typer.Option(Path("data/speech"), "--output", "-o", help="prepared-data directory to write"),
    source: Optional[str] = typer.Option(
        None, "--source", help="hub id (default Salesforce/cos_e, esnli, allenai/openbookqa) or a local directory of <split>.jsonl files in its schema"
    ),
    tts: str = typer.Option("auto", "--tts", help="auto, coqui (the paper's VCTK p347 voice), piper or espeak"),
    voice: Optional[str] = typer.Option(None, "--voice", help="coqui speaker id, piper .onnx voice file, or espeak-ng voice"),
    speech_tokenizer: str = typer.Option(
        "THUDM/glm-4-voice-tokenizer", "--speech-tokenizer", help="hub id or local directory of the GLM-4-Voice tokenizer, or 'local' (small, offline, untrained)"
    ),
    train_split: Optional[str] = typer.Option(None, "--train-split", help="default: train"),
    test_split: Optional[str] = typer.Option(None, "--test-split", help="default: validation for cose, test otherwise"),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", help="keep at most this many train rows, sampled with --seed"),
    test_rows: Optional[int] = typer.Option(None, "--test-rows", help="keep at most this many test rows, sampled with --seed"),
    seed: int = typer.Option(0, help="seed of the row samples"),
) -> None:
    """Spoken question-answering data (CoS-E, e-SNLI, OpenBookQA) for speech adaptation: TTS + speech tokens."""
    from sift_cli.apps.speech import app as speech

    speech.prepare(
        output,
        dataset,
        source=source,
        tts=tts,
        voice=voice,
        speech_tokenizer=speech_tokenizer,
        train_split=train_split,
        test_split=test_split,
        max_rows=max_rows,
        test_rows=test_rows,
        seed=seed,
        console=Console(),
    )
