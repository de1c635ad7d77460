"""`sift prepare hallucination`: the options this app's data preparation takes.

Kept apart from `app.py` and free of heavy imports: the CLI registers every app's command at start-up,
and `sift --help` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console


def prepare(
    output: Path = typer.Option(Path("data/hallucination"), "--output", "-o", help="prepared-data directory to write"),
    source: Optional[str] = typer.Option(
        None, "--source", help="RAGTruth dataset/ directory or its URL (default: the ParticleMedia/RAGTruth repository)"
    ),
    task_type: List[str] = typer.Option([], "--task-type", help="QA, Summary or Data2txt; repeatable (default: all)"),
    generator: List[str] = typer.Option(
        [], "--generator", help="keep responses of this generator (RAGTruth 'model', e.g. llama-2-7b-chat); repeatable (default: all)"
    ),
    label_type: List[str] = typer.Option(
        [], "--label-type", help="span type that counts as hallucinated, e.g. 'Evident Conflict'; repeatable (default: all four)"
    ),
    keep_implicit_true: bool = typer.Option(
        False, "--keep-implicit-true", help="keep spans marked implicit_true (correct but unsupported) as hallucinated"
    ),
    quality: str = typer.Option("good", help="keep responses of this quality; 'any' keeps all"),
    max_rows: Optional[int] = typer.Option(None, help="keep at most this many responses per split"),
) -> None:
    """Responses with hallucinated spans (RAGTruth) for hallucination mitigation: train and test splits."""
    from sift_cli.apps.hallucination import app as hallucination
    from sift_cli.apps.hallucination import ragtruth

    filters = ragtruth.Filters(
        task_types=tuple(task_type) or ragtruth.TASK_TYPES,
        generators=tuple(generator),
        label_types=tuple(label_type) or ragtruth.LABEL_TYPES,
        drop_implicit_true=not keep_implicit_true,
        quality=None if quality == "any" else quality,
        max_rows=max_rows,
    )
    hallucination.prepare(output, source=source or ragtruth.DEFAULT_SOURCE, filters=filters, console=Console())
