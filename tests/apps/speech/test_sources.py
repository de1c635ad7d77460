"""CoS-E, e-SNLI and OpenBookQA rows in the paper's response form."""

from __future__ import annotations

from pathlib import Path

import pytest
from speech_data import OBQA

from sift_cli.apps.speech import sources
from sift_cli.errors import SiftError


def test_responses_in_the_papers_form(fixtures: dict[str, Path]) -> None:
    cose, dropped = sources.load_examples("cose", str(fixtures["cose"]), "train")
    assert dropped == 1
    assert cose[0].response == "Answer: A. ignore. Explanation: The sanctions seemed to ignore the efforts the school had made."
    assert cose[1].response == "Answer: D. outside. Explanation: People play outside when the weather is nice."
    assert cose[1].answer == "D" and cose[1].options[3] == "outside"
    assert cose[1].instruction.splitlines()[1:3] == ["A. office", "B. library"]

    esnli, dropped = sources.load_examples("esnli", str(fixtures["esnli"]), "train")
    assert dropped == 1
    assert esnli[0].response == "Answer: neutral. Explanation: Not all churches have cracks in the ceiling."
    assert esnli[1].response == "Answer: entailment. Explanation: A guitar is an instrument."
    assert esnli[0].instruction.startswith("Premise: This church choir")

    obqa, dropped = sources.load_examples("openbookqa", str(fixtures["openbookqa"]), "test")
    assert dropped == 0
    assert obqa[0].response == (
        "Answer: D. plants sprouting, blooming and wilting. Explanation: the sun is the source of energy for physical cycles on Earth."
    )
    assert obqa[1].answer == "C"


def test_parquet_rows_and_missing_split(tmp_path: Path, fixtures: dict[str, Path]) -> None:
    import pandas as pd

    directory = tmp_path / "obqa-parquet"
    directory.mkdir()
    pd.DataFrame(OBQA).to_parquet(directory / "train.parquet")
    examples, _ = sources.load_examples("openbookqa", str(directory), "train")
    assert [e.answer for e in examples] == ["D", "C"]
    with pytest.raises(SiftError, match="no test.jsonl"):
        sources.load_examples("openbookqa", str(directory), "test")
    with pytest.raises(SiftError, match="choose one of: cose, esnli, openbookqa"):
        sources.load_examples("squad", None, "train")


@pytest.mark.parametrize("label", [True, float("nan"), 1.5, -1, "maybe", None])
def test_an_esnli_label_that_is_not_a_label_is_dropped_not_converted(label) -> None:
    assert sources.nli_label(label) is None
    assert [sources.nli_label(value) for value in (0, 1.0, " Contradiction")] == ["entailment", "neutral", "contradiction"]
