"""What a `sift` command prints: its own tables and one summary line, not the libraries' noise.

By default every third-party progress bar, advisory warning and info log is switched off (model
loading, GGUF conversion, dataset maps, lm-eval's request building); `sift --verbose ...` lets them
through for debugging. The switches are environment variables the libraries read when they are
imported, which the CLI does lazily after this runs, plus direct calls for any already imported.

Every verb ends the same way: Rich tables for the numbers, then one summary line that says what was
done and where the files went (`summary`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

QUIET_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
}
QUIET_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "lm_eval", "lm-eval", "torch")


def configure_output(verbose: bool) -> None:
    """Silence third-party progress bars, warnings and logs unless `verbose` (which lets the bars
    through again in a process that was quiet before, e.g. a notebook)."""
    _silence_tqdm(not verbose)
    if verbose:
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


_BARS = {"quiet": False}


def _silence_tqdm(quiet: bool) -> None:
    """While quiet, every tqdm bar is off, including those whose caller passes `disable=False` itself
    (lm-eval's request loops do), which TQDM_DISABLE cannot reach."""
    from tqdm import tqdm

    _BARS["quiet"] = quiet
    if getattr(tqdm.__init__, "_sift_quiet", False):
        return
    drawn = tqdm.__init__

    def gated(self: Any, *args: Any, **kwargs: Any) -> None:
        if _BARS["quiet"]:
            kwargs["disable"] = True
        drawn(self, *args, **kwargs)

    gated._sift_quiet = True  # type: ignore[attr-defined]
    tqdm.__init__ = gated  # type: ignore[method-assign]


def summary(console: Console, text: str, where: Path | str | None = None) -> None:
    """The one closing line of a verb: `✓ what was done → where the files are`."""
    target = f" → {escape(str(where))}" if where is not None else ""
    console.print(f"[bold green]✓[/] {escape(text)}{target}", highlight=False)
