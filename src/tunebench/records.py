"""Plain records that flow between the stages: golden cases, model outputs, scores.

Invariants: records are immutable; every text field is untrusted (it may hold markup) and is escaped by whoever
renders it; no record ever holds a secret (API keys are read from the environment inside runners only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Aggregate", "Case", "Output", "Sample", "Score"]


@dataclass(frozen=True, slots=True)
class Case:
    """One golden case."""

    id: str
    """Stable id, unique within the suite."""
    input: str
    """What the model is given (the main template variable ``input``)."""
    expected: str
    """The golden (reference) output."""
    tags: tuple[str, ...] = ()
    """Free tags for filtering and per-tag breakdowns (``critical``, ``label:refund``, …)."""
    vars: dict[str, Any] = field(default_factory=dict)
    """Extra template variables (and per-case metric data such as a glossary)."""
    messages: tuple[dict[str, str], ...] | None = None
    """For chat-format golden files: the conversation up to (not including) the golden assistant reply."""
    source: str | None = None
    """Where the case came from: ``file:line`` or ``suite:inline[i]``."""


@dataclass(frozen=True, slots=True)
class Output:
    """One model answer to one case (one repeat)."""

    case_id: str
    model: str
    repeat: int
    text: str
    """The model's text; empty when ``error`` is set."""
    error: str | None = None
    """Why the case failed after all retries; never cached."""
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    attempts: int = 1
    cached: bool = False
    """Served from the response cache (no request sent)."""
    request: dict[str, Any] | None = None
    """The rendered request (messages or prompt) exactly as sent."""


@dataclass(frozen=True, slots=True)
class Sample:
    """What a metric sees for one case: the golden case and one model's successful output."""

    case: Case
    output: Output

    @property
    def text(self) -> str:
        return self.output.text


@dataclass(frozen=True, slots=True)
class Score:
    """The one result shape of every metric for one case."""

    value: float | None
    """The metric value; ``None`` only when ``error`` is set (never NaN)."""
    passed: bool | None = None
    """Pass/fail against the metric's threshold; ``None`` when the metric has no threshold."""
    explanation: str = ""
    """A short human-readable reason (``missing: deductible``)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Metric-specific facts (JSON-serialisable): matched terms, predicted label, sufficient statistics."""
    error: str | None = None
    """Why the metric could not score this case (e.g. the model output was an error)."""


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A metric's result over all cases of one model."""

    value: float | None
    """The headline number (mean, corpus BLEU, accuracy, …); ``None`` when no case could be scored."""
    n: int
    """Cases that were scored."""
    n_errors: int = 0
    """Cases that could not be scored."""
    pass_rate: float | None = None
    """Share of scored cases that passed, when the metric has pass/fail."""
    details: dict[str, Any] = field(default_factory=dict)
    """Metric-specific aggregate facts (per-class F1, confusion matrix, corpus statistics)."""
