"""Terminology hits and misses of one output, as character spans the report's case table highlights.

Terminology metrics leave their facts in ``Score.details``: the ``terminology`` kind has ``required``,
``missing``, ``forbidden_used`` and ``deprecated_used`` (deprecated term → preferred one);
``glossary_translation`` has ``triggered``, ``hit``, ``missed`` and ``wrong_used`` (``[{term, wrong}]``). Any
score whose details have either shape is read, whatever the metric is called.

Invariants:
- ``term_marks`` returns ``None`` when there is nothing to show, else a compact dict: ``h`` hit spans and ``x``
  spans of forbidden/deprecated/wrong terms, each ``[start, end]`` in UTF-16 code units of the output text
  (what JavaScript string indices count), sorted and non-overlapping (of overlapping spans the earlier one is
  kept; a bad term inside a hit is not marked, as the metric does not count it); ``m`` the missing terms;
  ``u`` labels of the bad terms used. Terms are matched with the terminology metric's own matcher (word edges,
  plurals, hyphen variants), so what is marked is what counted.
- Pure; the spans index the text exactly as stored (never normalised), so the page can slice it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..records import Score

__all__ = ["is_term_details", "term_marks"]

_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def is_term_details(details: Mapping[str, Any]) -> bool:
    """Whether a score's details come from a terminology-style metric."""
    return ("required" in details and "missing" in details) or ("triggered" in details and "missed" in details)


def _strings(value: Any) -> list[str]:
    if type(value) is list and all(type(v) is str for v in value):  # the usual shape, without ABC checks
        return value
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    if isinstance(value, Iterable):
        return [str(v) for v in value if isinstance(v, str | int | float)]
    return []


def _utf16(text: str) -> Any:
    """A function mapping a code-point offset of ``text`` to a UTF-16 offset (identity for BMP-only text)."""
    if not _ASTRAL.search(text):
        return lambda i: i
    prefix = [0]
    for ch in text:
        prefix.append(prefix[-1] + (2 if ord(ch) > 0xFFFF else 1))
    return prefix.__getitem__


def term_marks(text: str, scores: Mapping[str, Score]) -> dict[str, list] | None:
    """Spans and lists for the terminology scores among ``scores`` (metric name → Score) of one output."""
    hits: list[str] = []
    bad: list[str] = []
    missing: list[str] = []
    used: list[str] = []
    for score in scores.values():
        details = score.details if score is not None else None
        if not details or type(details) is not dict or not is_term_details(details):
            continue
        if "required" in details:
            absent = set(_strings(details.get("missing")))
            hits += [t for t in _strings(details.get("required")) if t not in absent]
            missing += [t for t in _strings(details.get("missing"))]
            forbidden = _strings(details.get("forbidden_used"))
            bad += forbidden
            used += [f"forbidden: {t}" for t in forbidden]
            deprecated = details.get("deprecated_used") or {}
            if isinstance(deprecated, Mapping):
                bad += [str(old) for old in deprecated]
                used += [f"deprecated: {old} (use {new})" for old, new in deprecated.items()]
            else:
                bad += _strings(deprecated)
                used += [f"deprecated: {t}" for t in _strings(deprecated)]
        else:
            missing += [f"translation of {t}" for t in _strings(details.get("missed"))]
            for item in details.get("wrong_used") or []:
                if isinstance(item, Mapping) and item.get("wrong"):
                    bad.append(str(item["wrong"]))
                    used.append(f"wrong: {item['wrong']} for {item.get('term', '')}".rstrip())
    if not (hits or bad or missing or used):
        return None
    out: dict[str, list] = {}
    if text:
        spans = _spans(text, dict.fromkeys(hits), dict.fromkeys(bad))
        h = [[a, b] for a, b, kind in spans if kind == "h"]
        x = [[a, b] for a, b, kind in spans if kind == "x"]
        if h:
            out["h"] = h
        if x:
            out["x"] = x
    if missing:
        out["m"] = list(dict.fromkeys(missing))
    if used:
        out["u"] = list(dict.fromkeys(used))
    return out or None


def _spans(text: str, hits: Iterable[str], bad: Iterable[str]) -> list[tuple[int, int, str]]:
    from ..metrics.terminology import find_term  # the metric's own matcher

    def spans(terms: Iterable[str]) -> list[tuple[int, int]]:
        out = []
        for term in terms:
            try:
                out += [(a, b) for a, b in find_term(term, text) if b > a]
            except re.error:  # a term the matcher cannot compile marks nothing; the lists still show it
                continue
        return out

    hit_spans = spans(hits)
    # As in the metric, a bad term inside a required or preferred term ("tax credit" inside "premium tax
    # credit") is not a use of it.
    bad_spans = [(a, b) for a, b in spans(bad) if not any(c <= a and b <= d for c, d in hit_spans)]
    found = [(a, b, "x") for a, b in bad_spans] + [(a, b, "h") for a, b in hit_spans]
    found.sort(key=lambda s: (s[0], s[2] != "x", -(s[1] - s[0])))
    kept: list[tuple[int, int, str]] = []
    for a, b, kind in found:
        if not kept or a >= kept[-1][1]:  # overlaps keep the earlier (at equal starts: bad, then longer) span
            kept.append((a, b, kind))
    to16 = _utf16(text)
    return [(to16(a), to16(b), kind) for a, b, kind in kept]
