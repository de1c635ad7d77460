"""Parsing a spoken answer into a choice."""

from __future__ import annotations

from typing import Any

import pytest
from speech_data import COSE

from sift_cli.apps.speech import answers, sources


@pytest.mark.parametrize(
    ("reply", "options", "expected"),
    [
        ("Answer: D. outside. Explanation: people play outside.", COSE[1]["choices"], "D"),
        ("answer is (b) because", COSE[1]["choices"], "B"),
        ("Answer, outside. Explanation: people play there.", COSE[1]["choices"], "D"),
        ("I think the basement. Or the library.", COSE[1]["choices"], "C"),
        ("No idea.", COSE[1]["choices"], None),
        ("Answer: E. bed.", ["a", "b", "c", "d"], None),
        ("Answer: neutral. Explanation: not all churches have cracks.", sources.NLI_LABELS, "neutral"),
        ("The answer: it entails the hypothesis.", sources.NLI_LABELS, "entailment"),
        ("Answer: Contradiction.", sources.NLI_LABELS, "contradiction"),
        ("Explanation first: a guitar is an instrument.", sources.NLI_LABELS, None),
    ],
)
def test_answer_parsing(reply: str, options: Any, expected: str | None) -> None:
    assert answers.parse_answer(reply, options) == expected
