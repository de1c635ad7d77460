"""Reading the answer out of what a model wrote (or what ASR heard it say).

A reply in the trained form starts "Answer: D. outside." or "Answer: entailment."; a reply that
strays is still credited when it names a capital letter (or "(b)") after "answer", or else mentions a choice's
text (the earliest, longest mention wins), since an ASR transcript often turns "D." into a word.
"""

from __future__ import annotations

import re
from typing import Sequence

from sift_cli.apps.speech.sources import LETTERS, NLI_LABELS

_ANSWER_WORD = re.compile(r"(?i:\banswer\b)")
_NLI = re.compile(r"\b(entail|neutral|contradict)\w*", re.IGNORECASE)
_NLI_NAMES = {"entail": "entailment", "neutral": "neutral", "contradict": "contradiction"}


def _after_answer(text: str) -> str:
    match = _ANSWER_WORD.search(text)
    return text[match.end() :] if match else text


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The letter a reply picks among `options`, or None when it names none."""
    letters = LETTERS[: len(options)]
    lower = letters.lower()
    letter = re.search(rf"(?i:\banswer\b)\s*(?i:is)?\s*[:\-,]?\s*(?:\(?([{letters}])\b(?![’'])|\(([{lower}])\))", text)
    if letter:
        return (letter.group(1) or letter.group(2)).upper()
    tail = _after_answer(text).lower()
    found = []
    for index, option in enumerate(options):
        hit = re.search(rf"\b{re.escape(option.lower())}\b", tail) if option.strip() else None
        if hit:
            found.append((hit.start(), -len(option), index))
    return letters[min(found)[2]] if found else None


def parse_nli(text: str) -> str | None:
    """entailment, neutral or contradiction, from the first such word after "answer" (or anywhere)."""
    match = _NLI.search(_after_answer(text)) or _NLI.search(text)
    return _NLI_NAMES[match.group(1).lower()] if match else None


def parse_answer(text: str, options: Sequence[str]) -> str | None:
    """The answer of a reply, in the form of the gold answer: an NLI label when the options are the NLI
    labels, a letter otherwise."""
    return parse_nli(text) if tuple(options) == NLI_LABELS else parse_choice(text, options)
