"""The verdict at the top of every report form: the gates and one paragraph of plain language.

``build_verdict(report)`` turns the gate results, the paired comparisons and the summary into a ``Verdict``:
a status, a one-line headline and a paragraph such as "All 3 gates pass. tuned beats base on 4 of 5 metrics;
terms improved from 61% to 88% (+27 points, 95% CI +21…+33). 7 cases regressed on rougeL — regressions come
first in the case table below."

Invariants:
- Pure: reads only the ``RunReport`` it is given (never ``report.cases``, which may be a one-shot stream) and
  returns plain text; escaping is the renderer's job (model and metric names are untrusted).
- Tolerant: every comparison or gate field may be missing or ``None``; a missing number is left out of the
  sentence, never printed as "None" or "nan".
- Direction-aware: "improved"/"got worse" and "beats" follow each metric's ``higher_is_better``; a difference
  is only called better or worse when the paired verdict says so (the interval excludes zero). Without paired
  statistics the paragraph says the differences are untested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._format import finite as _finite
from ._format import fmt_num, fmt_signed
from .model import RunReport, summary_rows

__all__ = ["HIGHLIGHTS", "Verdict", "build_verdict", "classify", "describe_change"]

HIGHLIGHTS = 3
"""How many metric changes the paragraph spells out with their numbers."""


@dataclass(frozen=True)
class Verdict:
    """What the top of a report says."""

    status: str
    """``pass`` (every gate passes), ``fail`` (at least one fails) or ``none`` (no gates)."""
    headline: str
    """One line: the gate outcome, or the metric tally when there are no gates."""
    paragraph: str
    """The plain-language summary (plain text: escape it when rendering)."""
    gates_passed: int
    gates_total: int

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "headline": self.headline, "paragraph": self.paragraph,
                "gates_passed": self.gates_passed, "gates_total": self.gates_total}




def classify(comparison: dict[str, Any]) -> str:
    """``better``, ``worse`` or ``unclear`` from a comparison's verdict (older words accepted too)."""
    text = str(comparison.get("verdict") or "").lower()
    if text.startswith(("better", "improv")):
        return "better"
    if text.startswith(("worse", "regress", "degrad")):
        return "worse"
    return "unclear"


def _is_share(*values: float | None) -> bool:
    known = [v for v in values if v is not None]
    return bool(known) and all(-1.0 <= v <= 1.0 for v in known)


def describe_change(comparison: dict[str, Any], *, higher_is_better: bool) -> str | None:
    """``terms improved from 61% to 88% (+27 points, 95% CI +21…+33)``; None without a delta.

    Values in 0–1 are shown as percentages and their differences in points; other values keep their unit.
    """
    name = str(comparison.get("metric", ""))
    delta = _finite(comparison.get("delta"))
    if delta is None:
        return None
    base, cand = _finite(comparison.get("mean_baseline")), _finite(comparison.get("mean_candidate"))
    low, high = _finite(comparison.get("ci_low")), _finite(comparison.get("ci_high"))
    kind = classify(comparison)
    if kind == "better":
        verb = "improved"
    elif kind == "worse":
        verb = "got worse"
    else:
        verb = "changed" if abs(delta) > 0 else "did not change"
    share = base is not None and cand is not None and 0 <= base <= 1 and 0 <= cand <= 1 and _is_share(low, high)
    if share:
        digits = 0 if abs(delta) * 100 >= 10 else 1  # "+27 points", but "+2.4 points"

        def pct(v: float) -> str:
            return f"{v * 100:.{digits}f}%"

        def pts(v: float) -> str:
            text = f"{abs(v) * 100:.{digits}f}"
            zero = float(text) == 0
            return ("±" if zero else "+" if v > 0 else "\u2212") + text

        values = f" from {pct(base)} to {pct(cand)}"  # type: ignore[arg-type]
        size = f"{pts(delta)} points"
    else:
        values = f" from {fmt_num(base)} to {fmt_num(cand)}" if base is not None and cand is not None else ""
        pts = fmt_signed
        size = fmt_signed(delta)
    confidence = _finite(comparison.get("confidence")) or 0.95
    interval = ""
    if low is not None and high is not None:
        interval = f", {confidence * 100:.0f}% CI {pts(low)}…{pts(high)}"
    return f"{name} {verb}{values} ({size}{interval})"


def _strength(comparison: dict[str, Any]) -> float:
    """How clearly the interval excludes zero (distance of its near end from zero over its width)."""
    low, high = _finite(comparison.get("ci_low")), _finite(comparison.get("ci_high"))
    delta = _finite(comparison.get("delta")) or 0.0
    if low is None or high is None:
        return abs(delta)
    near = min(abs(low), abs(high)) if low * high > 0 else 0.0
    return near / ((high - low) or 1e-12)


def _size(comparison: dict[str, Any]) -> float:
    """The delta relative to the interval's half-width (how far from zero, in noise units)."""
    low, high = _finite(comparison.get("ci_low")), _finite(comparison.get("ci_high"))
    delta = abs(_finite(comparison.get("delta")) or 0.0)
    if low is None or high is None:
        return delta
    return delta / (((high - low) / 2) or 1e-12)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _gate_sentence(gates: list[dict[str, Any]]) -> tuple[str, str, str]:
    """(status, headline, sentence) for the gates."""
    total = len(gates)
    sum(1 for g in gates if g.get("passed"))
    if not total:
        return "none", "", "No gates were evaluated."
    failing = [str(g.get("name", "")) for g in gates if not g.get("passed")]
    if not failing:
        every = {1: "the gate passes", 2: "both gates pass"}.get(total, f"all {total} gates pass")
        return "pass", f"Pass — {every}", every[0].upper() + every[1:] + "."
    n_fail = len(failing)
    head = f"Fail — {n_fail} of {total} gate{'' if total == 1 else 's'} {'fails' if n_fail == 1 else 'fail'}"
    text = f"{n_fail} of {total} gate{'' if total == 1 else 's'} {'fails' if n_fail == 1 else 'fail'}: " \
           f"{_join(failing)}."
    return "fail", head, text


def _metric_sentence(report: RunReport, comparisons: list[dict[str, Any]]) -> tuple[str, str]:
    """(tally, sentence): how the candidate did against the baseline over the metrics."""
    base, cand = report.baseline or "the baseline", report.candidate or "the candidate"
    direction = {m.name: m.higher_is_better for m in report.metrics}
    tested = [c for c in comparisons if _finite(c.get("delta")) is not None]
    if tested:
        better = [c for c in tested if classify(c) == "better"]
        worse = [c for c in tested if classify(c) == "worse"]
        n = len(tested)
        if better:
            head = f"{cand} beats {base} on " + ("the one metric" if n == 1 else f"{len(better)} of {n} metrics")
        elif worse:
            head = f"{cand} does not beat {base} on " + ("the one metric" if n == 1 else f"any of the {n} metrics")
        else:
            head = f"{cand} and {base} show no clear difference on {'the' if n == 1 else f'any of the {n}'} " \
                   f"metric{'' if n == 1 else 's'}"
        if worse:
            head += f" and is worse on {_join([str(c.get('metric')) for c in worse])}" if n > 1 else " and is worse"
        unclear = n - len(better) - len(worse)
        if unclear and (better or worse):
            head += f"; no clear difference on {'the other' if unclear == 1 else f'the other {unclear}'}"
        changes = sorted(better + worse, key=lambda c: (classify(c) != "worse", -_strength(c)))
        spelled = [d for c in changes[:HIGHLIGHTS]
                   if (d := describe_change(c, higher_is_better=direction.get(str(c.get("metric")),
                                                                              bool(c.get("higher_is_better", True)))))]
        if not spelled:
            # Nothing significant: still name the largest change, saying that its interval includes zero.
            biggest = max(tested, key=_size, default=None)
            text = biggest and describe_change(biggest, higher_is_better=direction.get(
                str(biggest.get("metric")), bool(biggest.get("higher_is_better", True))))
            if text and _finite(biggest.get("ci_low")) is not None and abs(_finite(biggest.get("delta")) or 0) > 0:
                spelled = [f"the largest change, {text}, has an interval that includes zero"]
        sentence = head + ("; " + "; ".join(spelled) if spelled else "") + "."
        if better or worse:
            tally = f"better on {len(better)} of {n}" + (f", worse on {len(worse)}" if worse else "")
        else:
            tally = f"no clear difference on {'the one metric' if n == 1 else f'{n} metrics'}"
        return tally, sentence
    rows = [r for r in summary_rows(report) if r.delta is not None]
    if not rows:
        return "", ""
    ahead = [r.metric.name for r in rows if r.direction == "better"]
    behind = [r.metric.name for r in rows if r.direction == "worse"]
    parts = [f"{cand} is ahead of {base} on {len(ahead)} of {len(rows)} metric{'' if len(rows) == 1 else 's'}"]
    if behind:
        parts.append(f"behind on {_join(behind)}")
    return (f"ahead on {len(ahead)} of {len(rows)}",
            ", ".join(parts) + " (no paired statistics, so these differences are untested).")


def _flip_sentence(comparisons: list[dict[str, Any]]) -> str:
    regressed, fixed = [], 0
    for c in comparisons:
        n = c.get("regressions_n")
        n = len(c.get("regressions") or []) if n is None else int(n)
        if n:
            regressed.append((n, str(c.get("metric"))))
        f = c.get("fixes_n")
        fixed += len(c.get("fixes") or []) if f is None else int(f)
    if not regressed and not fixed:
        return ""
    if not regressed:
        return f"No case went from pass to fail; {_plural(fixed, 'case')} went from fail to pass."
    regressed.sort(key=lambda item: -item[0])
    first_n, first_metric = regressed[0]
    parts = [f"{_plural(first_n, 'case')} regressed on {first_metric}"]
    parts += [f"{n:,} on {metric}" for n, metric in regressed[1:]]
    text = _join(parts) + " (pass → fail)"
    if fixed:
        text += f", {fixed:,} {'was' if fixed == 1 else 'were'} fixed"
    return text + " — regressions come first in the case table below."


def build_verdict(report: RunReport) -> Verdict:
    """The verdict of one report (see the module docstring)."""
    gates = [g for g in report.gates if isinstance(g, dict)]
    comparisons = [c for c in report.comparisons if isinstance(c, dict)]
    status, headline, gate_text = _gate_sentence(gates)
    tally, metric_text = _metric_sentence(report, comparisons)
    sentences = [gate_text] if gates else []
    if metric_text:
        sentences.append(metric_text)  # starts with a model name: kept as written, never capitalised
    if flips := _flip_sentence(comparisons):
        sentences.append(flips)
    unstable = sorted({str(cid) for c in comparisons for cid in (c.get("unstable") or [])})
    if unstable:
        sentences.append(f"{_plural(len(unstable), 'case')} gave different pass/fail results across repeats "
                         "(marked unstable).")
    if report.candidate and (errors := report.errors.get(report.candidate, 0)):
        base_errors = report.errors.get(report.baseline, 0) if report.baseline else 0
        tail = f" ({report.baseline}: {base_errors:,})" if report.baseline else ""
        sentences.append(f"{report.candidate} returned errors on {_plural(errors, 'case')}{tail}.")
    if not gates:
        sentences.append(gate_text)
        headline = f"No gates — {tally}" if tally else "No gates"
    paragraph = " ".join(s for s in sentences if s)
    return Verdict(status, headline, paragraph, sum(1 for g in gates if g.get("passed")), len(gates))
