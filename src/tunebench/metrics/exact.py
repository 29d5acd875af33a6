"""Accuracy metrics: the model text equals the golden text after normalisation.

Invariants:
- the value is 1.0 or 0.0 and ``passed`` is ``value == 1.0``; there is no threshold to tune.
- output and golden go through the same normalisation, in a fixed order: Unicode NFC, case folding,
  punctuation removal, whitespace collapsing. The order matters: removing punctuation first turns ``"a , b"``
  into ``"a  b"``, which whitespace collapsing then makes ``"a b"``.
- punctuation means every character whose Unicode category starts with ``P`` (so ``¿``, ``«``, ``—`` and
  ``。`` count, not only ASCII). Symbols (``$``, ``+``, ``%``) are categories ``S*`` and are kept.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from ..hookspecs import hookimpl
from ..records import Sample, Score
from ._base import Metric, metric

__all__ = ["ExactMatch", "exact_match", "normalize_text"]

_SHOWN = 200  # characters of each normalised text kept in details; golden answers can be pages long


def normalize_text(text: str, *, ignore_case: bool, ignore_whitespace: bool, ignore_punctuation: bool) -> str:
    """The comparison form of ``text`` under the given options (see the module docstring for the order)."""
    # NFC first so a precomposed "é" and "e" + combining accent compare equal.
    text = unicodedata.normalize("NFC", text)
    if ignore_case:
        text = text.casefold()
    if ignore_punctuation:
        if text.isascii():  # the common case, in C: ~1 µs instead of ~70 for a paragraph
            text = text.translate(_ASCII_PUNCTUATION)
        else:
            text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if ignore_whitespace:
        # str.split() splits on runs of exactly what re's \s matches in text (str.isspace()), and drops the ends
        text = " ".join(text.split())
    return text


_ASCII_PUNCTUATION = {c: None for c in range(128) if unicodedata.category(chr(c)).startswith("P")}


class ExactMatch(Metric):
    """1.0 when the normalised output equals the normalised golden text."""

    kind = "exact_match"

    def __init__(self, *, ignore_case: bool, ignore_whitespace: bool, ignore_punctuation: bool) -> None:
        super().__init__(threshold=1.0)
        self.options = {
            "ignore_case": ignore_case,
            "ignore_whitespace": ignore_whitespace,
            "ignore_punctuation": ignore_punctuation,
        }

    def score(self, sample: Sample) -> Score:
        got = normalize_text(sample.output.text, **self.options)
        want = normalize_text(sample.case.expected, **self.options)
        value = 1.0 if got == want else 0.0
        if value == 1.0:
            explanation = "exact match"
        else:
            explanation = f"differs from expected at character {_first_difference(got, want)}"
        details = {"output": got[:_SHOWN], "expected": want[:_SHOWN]}
        return Score(value=value, passed=value == 1.0, explanation=explanation, details=details)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "options": dict(self.options)}


def _first_difference(a: str, b: str) -> int:
    """0-based index of the first differing character of two normalised texts."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


@metric(
    "exact_match",
    description="1 when the output equals the golden text after case/whitespace/punctuation normalisation",
    family="accuracy",
)
def exact_match(
    *, ignore_case: bool = True, ignore_whitespace: bool = True, ignore_punctuation: bool = False
) -> ExactMatch:
    """Exact match against ``expected``.

    ``ignore_case`` compares case-folded text; ``ignore_whitespace`` collapses whitespace runs to one space
    and strips both ends; ``ignore_punctuation`` drops every Unicode punctuation character (category ``P*``).
    """
    return ExactMatch(
        ignore_case=ignore_case, ignore_whitespace=ignore_whitespace, ignore_punctuation=ignore_punctuation
    )


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    """Register the accuracy metrics."""
    register(exact_match)
