"""`sift prepare unlearning`: the options this app's data preparation takes.

Kept apart from `app.py` and free of heavy imports: the CLI registers every app's command at start-up,
and `sift --help` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console


def prepare(
    output: Path = typer.Option(Path("data/unlearning"), "--output", "-o", help="prepared-data directory to write"),
    forget: List[str] = typer.Option(
        ["cyber"], "--forget", help="'cyber' (cais/wmdp-corpora), or a local jsonl/parquet with a text column; repeatable"
    ),
    retain: str = typer.Option("wikitext", "--retain", help="'wikitext' (wikitext-2-raw-v1) or a local file"),
    min_chars: int = typer.Option(50, help="drop retain rows with at most this many characters"),
    max_rows: Optional[int] = typer.Option(None, help="keep at most this many rows per source"),
) -> None:
    """Forget text (WMDP corpora) and retain text (wikitext) for RMU unlearning."""
    from sift_cli.apps.unlearning import app as unlearning

    unlearning.prepare(output, forget=forget, retain=retain, min_chars=min_chars, max_rows=max_rows, console=Console())
