"""Format metrics: the output contains given strings (``contains``) or matches regular expressions
(``regex``).

Invariants:
- the value is 1.0 when the check passes and 0.0 when it fails; ``passed`` is ``value == 1.0``.
- ``mode: any`` asks for at least one of the values / patterns, ``mode: all`` for every one of them.
  ``negate: true`` inverts the whole check: with ``any`` it passes only when *none* is found, with ``all``
  when *not all* are found.
- the placeholder ``{expected}`` in a value or pattern stands for the case's golden text. In a pattern it is
  inserted literally (``re.escape``), so a golden answer such as ``$5 (approx.)`` cannot break the expression.
  It is the only placeholder: other braces are kept as written, so JSON snippets and ``\\d{3}`` work.
- patterns are compiled when the metric is built; a bad pattern is a :class:`ConfigError` there, never a
  failure in the middle of a run. Patterns with ``{expected}`` are checked the same way with a stand-in
  golden text.
- a case whose golden text is empty cannot fill ``{expected}``; it gets an error Score, because every text
  "contains" the empty string and the check would pass vacuously.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..records import Sample, Score
from ._base import Metric, metric

__all__ = ["Contains", "Regex", "contains", "regex"]

PLACEHOLDER = "{expected}"
_SNIPPET = 60  # characters of a regex match quoted in the explanation


def _one_or_many(kind: str, single_name: str, single: str | None, many_name: str, many: list[str] | None) -> list[str]:
    """The list given through either ``single`` or ``many`` (exactly one of them, not empty)."""
    if single is not None and many is not None:
        raise ConfigError(
            f"{kind}: set either '{single_name}' or '{many_name}', not both",
            hint=f"put every entry in '{many_name}'",
        )
    items = [single] if single is not None else list(many or [])
    if not items:
        raise ConfigError(
            f"{kind}: no {many_name} given",
            hint=f"add '{single_name}: …' or a non-empty '{many_name}: [...]' list",
        )
    for item in items:
        if item == "":
            raise ConfigError(f"{kind}: an empty string in '{many_name}' matches every output", hint="remove it")
    return items


def _verdict(found: list[str], missing: list[str], mode: str, negate: bool) -> tuple[bool, str]:
    """Pass/fail and the explanation of a contains/regex check."""
    hit = bool(found) if mode == "any" else not missing
    passed = hit != negate
    if not negate:
        if passed:
            return True, "found: " + ", ".join(found)
        return False, ("none found of: " if mode == "any" else "missing: ") + ", ".join(missing)
    if passed:
        return True, ("none found" if mode == "any" else "missing (as required): " + ", ".join(missing))
    return False, "found (not allowed): " + ", ".join(found)


class Contains(Metric):
    """Substring check against one or more values."""

    kind = "contains"

    def __init__(self, *, values: list[str], mode: str, ignore_case: bool, negate: bool) -> None:
        super().__init__(threshold=1.0)
        self.values, self.mode, self.ignore_case, self.negate = values, mode, ignore_case, negate

    def score(self, sample: Sample) -> Score:
        uses_golden = any(PLACEHOLDER in v for v in self.values)
        if uses_golden and not sample.case.expected:
            return Score(value=None, error="the case has no expected text to fill {expected}")
        haystack = _fold(sample.output.text, self.ignore_case)
        found: list[str] = []
        missing: list[str] = []
        for template in self.values:
            value = template.replace(PLACEHOLDER, sample.case.expected)
            (found if _fold(value, self.ignore_case) in haystack else missing).append(_shown(template, value))
        passed, explanation = _verdict(found, missing, self.mode, self.negate)
        return Score(
            value=1.0 if passed else 0.0,
            passed=passed,
            explanation=explanation,
            details={"found": found, "missing": missing},
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "options": {
                "values": self.values,
                "mode": self.mode,
                "ignore_case": self.ignore_case,
                "negate": self.negate,
            },
        }


class Regex(Metric):
    """``re.search`` of one or more patterns."""

    kind = "regex"

    def __init__(self, *, patterns: list[str], mode: str, ignore_case: bool, negate: bool) -> None:
        super().__init__(threshold=1.0)
        self.patterns, self.mode, self.ignore_case, self.negate = patterns, mode, ignore_case, negate
        self.flags = re.IGNORECASE if ignore_case else 0
        # Fail at build time: a pattern with {expected} is checked with a stand-in golden text.
        self.compiled: dict[str, re.Pattern[str]] = {}
        for pattern in patterns:
            try:
                compiled = _compile(pattern, "golden", self.flags)
            except re.error as exc:
                raise ConfigError(
                    f"regex: invalid pattern {pattern!r}: {exc}",
                    hint="fix the pattern; in YAML prefer single quotes so backslashes stay as written",
                ) from None
            if PLACEHOLDER not in pattern:
                self.compiled[pattern] = compiled

    def score(self, sample: Sample) -> Score:
        uses_golden = any(PLACEHOLDER in p for p in self.patterns)
        if uses_golden and not sample.case.expected:
            return Score(value=None, error="the case has no expected text to fill {expected}")
        text = sample.output.text
        found: list[str] = []
        missing: list[str] = []
        matches: dict[str, str] = {}
        for pattern in self.patterns:
            compiled = self.compiled.get(pattern) or _compile(pattern, sample.case.expected, self.flags)
            match = compiled.search(text)
            if match is None:
                missing.append(pattern)
            else:
                found.append(pattern)
                matches[pattern] = match.group(0)[:_SNIPPET]
        passed, explanation = _verdict(found, missing, self.mode, self.negate)
        return Score(
            value=1.0 if passed else 0.0,
            passed=passed,
            explanation=explanation,
            details={"found": found, "missing": missing, "matches": matches},
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "options": {
                "patterns": self.patterns,
                "mode": self.mode,
                "ignore_case": self.ignore_case,
                "negate": self.negate,
            },
        }


def _fold(text: str, ignore_case: bool) -> str:
    return text.casefold() if ignore_case else text


def _shown(template: str, value: str) -> str:
    """How a value is named in explanations: the template when it used the golden text (which may be long)."""
    return template if PLACEHOLDER in template else value


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str, expected: str, flags: int) -> re.Pattern[str]:
    """Compile a pattern with ``{expected}`` replaced by the escaped golden text (cached per golden text)."""
    return re.compile(pattern.replace(PLACEHOLDER, re.escape(expected)), flags)


@metric(
    "contains",
    description="the output contains any/all of the given strings ({expected} = golden)",
    family="format",
)
def contains(
    *,
    values: list[str] | None = None,
    value: str | None = None,
    mode: Literal["any", "all"] = "any",
    ignore_case: bool = True,
    negate: bool = False,
) -> Contains:
    """Substring check: ``value`` (one string) or ``values`` (a list); ``{expected}`` is the golden text."""
    items = _one_or_many("contains", "value", value, "values", values)
    return Contains(values=items, mode=mode, ignore_case=ignore_case, negate=negate)


@metric("regex", description="the output matches any/all of the given regular expressions", family="format")
def regex(
    *,
    pattern: str | None = None,
    patterns: list[str] | None = None,
    mode: Literal["any", "all"] = "any",
    ignore_case: bool = True,
    negate: bool = False,
) -> Regex:
    """Python ``re.search``. Give ``pattern`` or ``patterns``; ``{expected}`` is the golden text, escaped."""
    items = _one_or_many("regex", "pattern", pattern, "patterns", patterns)
    return Regex(patterns=items, mode=mode, ignore_case=ignore_case, negate=negate)


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    """Register the format metrics."""
    register(contains)
    register(regex)
