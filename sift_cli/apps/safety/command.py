"""`sift prepare safety`: the options this app's data preparation takes.

Kept apart from `app.py` and free of heavy imports: the CLI registers every app's command at start-up,
and `sift --help` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def prepare(
    output: Path = typer.Option(Path("data/safety"), "--output", "-o", help="prepared-data directory to write"),
    pku: str = typer.Option("hub", "--pku", help="'hub' (PKU-Alignment/PKU-SafeRLHF) or a local file in its schema"),
    pku_config: str = typer.Option("default", "--pku-config", help="default, alpaca-7b, alpaca2-7b or alpaca3-8b"),
    pku_split: str = typer.Option("train", "--pku-split", help="PKU-SafeRLHF split (train or test)"),
    prefer: str = typer.Option("safer", "--prefer", help="chosen response: 'safer' (safer_response_id) or 'better'"),
    exactly_one_safe: bool = typer.Option(
        True, "--exactly-one-safe/--no-exactly-one-safe", help="keep only pairs where exactly one response is safe"
    ),
    alpaca: str = typer.Option("hub", "--alpaca", help="'hub' (tatsu-lab/alpaca) or a local file with instruction/input/output"),
    max_rows: Optional[int] = typer.Option(None, help="keep at most this many rows per table, sampled with --seed"),
    seed: int = typer.Option(0, help="seed of the --max-rows sample"),
) -> None:
    """SFT examples (Alpaca) for f and DPO preference pairs (PKU-SafeRLHF) for g."""
    from sift_cli.apps.safety import app as safety

    safety.prepare(
        output,
        pku=pku,
        pku_config=pku_config,
        pku_split=pku_split,
        prefer=prefer,
        exactly_one_safe=exactly_one_safe,
        alpaca=alpaca,
        max_rows=max_rows,
        seed=seed,
        console=Console(),
    )
