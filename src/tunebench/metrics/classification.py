"""Classification metrics: the model names one label out of a declared label set.

Invariants:
- the label set is declared, never inferred from predictions: the ``labels`` option, else the suite variable
  ``labels``, else the case variable ``labels`` (golden files such as BANKING77 carry it per row). Macro-F1
  depends on it: a label nobody predicted and no case has still counts, with F1 0.
- an output that names no label, or several, is an *invalid* prediction: value 0.0, ``passed`` False,
  ``details["invalid"]`` True and an explanation saying why. It counts as wrong in accuracy, as a miss (false
  negative) for its gold class, as nobody's false positive, and gets its own ``<invalid>`` column in the
  confusion matrix. It is never silently mapped to a label.
- the gold label is ``case.expected``; one outside the label set makes that case an error Score naming the case
  and the label, not a wrong prediction.
- every aggregate number equals scikit-learn's with ``labels=<the label set>`` and ``zero_division=0``
  (``accuracy_score``, ``f1_score`` macro/micro/weighted, ``precision_recall_fscore_support``,
  ``confusion_matrix`` with the rows gold and the columns predicted). Because invalid predictions fall outside
  the label set, micro-F1 differs from accuracy exactly when some prediction is invalid.
- ``case_sensitive: false`` (the default) folds case; a label set holding two labels that differ only in case
  (or, for ``normalized`` extraction, only in punctuation and spacing) is a ConfigError asking for
  ``case_sensitive: true`` or ``extract: exact``, because such labels cannot be told apart otherwise.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, Literal

from ..errors import ConfigError
from ..factory import did_you_mean
from ..hookspecs import hookimpl
from ..records import Aggregate, Sample, Score
from ._base import Metric, MetricContext, metric

__all__ = ["INVALID", "LabelMatch", "LabelSet", "classification_report", "label"]

INVALID = "<invalid>"
"""The confusion-matrix column (and the ``predicted`` of nothing) for outputs that name no single label."""

Extract = Literal["exact", "normalized", "first_line", "regex", "mention"]

_WHITESPACE = re.compile(r"\s+")
_SEPARATORS = re.compile(r"[\s_\-]+")
_EDGE_PUNCT = ".?!:;,'\"`*"
# "Label: x", "Intent - x", "**Answer**: x" -- a short lead-in a model puts before the label.
_PREFIX = re.compile(r"^\W*(?:the\s+)?(?:label|intent|class|category|sentiment|answer|prediction|output)\W*"
                     r"(?:is\W*)?[:=\-]\s*", re.IGNORECASE)


def _fold(text: str, case_sensitive: bool) -> str:
    text = unicodedata.normalize("NFC", text)
    return text if case_sensitive else text.casefold()


def _norm_key(text: str, case_sensitive: bool) -> str:
    """Comparison key of ``normalized`` extraction: punctuation (``_``, quotes, ``?``, ``**``) becomes a space,
    symbols such as backticks are dropped, whitespace collapses."""
    text = _fold(text, case_sensitive)
    chars: list[str] = []
    for ch in text:
        cat = unicodedata.category(ch)
        # Sk holds the backtick and caret of markdown-ish answers; "|" and "~" are table and strike marks.
        chars.append(" " if cat.startswith("P") or cat == "Sk" or ch in "|~" else ch)
    return _WHITESPACE.sub(" ", "".join(chars)).strip()


class LabelSet:
    """A declared label set with the lookup tables extraction needs."""

    def __init__(self, labels: Sequence[str], *, case_sensitive: bool, extract: str, where: str) -> None:
        """Raises ValueError (with the reason) when the labels collide under the comparison rules."""
        self.labels = list(labels)
        if not self.labels:
            raise ValueError(f"{where}: the label set is empty")
        self.case_sensitive = case_sensitive
        self.exact: dict[str, str] = {}
        self.normalized: dict[str, str] = {}
        for lab in self.labels:
            if not isinstance(lab, str) or not lab.strip():
                raise ValueError(f"{where}: label {lab!r} is not a non-empty string")
            if lab == INVALID:
                raise ValueError(f"{where}: {INVALID!r} is reserved for invalid predictions")
            key = _fold(lab.strip(), case_sensitive)
            if key in self.exact:
                if self.exact[key] == lab:
                    raise ValueError(f"{where}: label {lab!r} is listed twice")
                raise ValueError(f"{where}: labels {self.exact[key]!r} and {lab!r} differ only in case"
                                 " (set case_sensitive: true)")
            self.exact[key] = lab
            if extract == "exact":
                continue
            nkey = _norm_key(lab, case_sensitive)
            if not nkey:
                raise ValueError(f"{where}: label {lab!r} is only punctuation (use extract: exact)")
            if nkey in self.normalized:
                raise ValueError(f"{where}: labels {self.normalized[nkey]!r} and {lab!r} cannot be told apart"
                                 " once punctuation and spacing are ignored (use extract: exact)")
            self.normalized[nkey] = lab
        self._mention: re.Pattern[str] | None = None
        self._mention_key: dict[str, str] = {}

    def gold(self, expected: str) -> str | None:
        """The label a golden answer names (exact, or folded when case-insensitive), else None."""
        if expected in self.labels:
            return expected
        return self.exact.get(_fold(expected.strip(), self.case_sensitive))

    def match_normalized(self, text: str) -> str | None:
        """The label ``text`` names under ``normalized`` rules, else None."""
        for candidate in (text, _PREFIX.sub("", text.strip(), count=1)):
            hit = self.exact.get(_fold(candidate.strip(), self.case_sensitive))
            if hit is None:
                hit = self.normalized.get(_norm_key(candidate, self.case_sensitive))
            if hit is not None:
                return hit
        return None

    def mentions(self, text: str) -> list[str]:
        """Distinct labels mentioned in ``text``, in order of first mention, longest match first."""
        if self._mention is None:
            for lab in self.labels:
                # "reverted_card_payment?" is also mentioned as "reverted card payment".
                for form in (lab, lab.strip(_EDGE_PUNCT)):
                    words = _SEPARATORS.split(_fold(form.strip(), self.case_sensitive))
                    if any(words):
                        self._mention_key.setdefault(" ".join(words), lab)
            # Longest first: at one position "card arrival" must win over "card".
            alternation = "|".join(
                r"[\s_\-]+".join(re.escape(w) for w in key.split(" "))
                for key in sorted(self._mention_key, key=len, reverse=True))
            self._mention = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)")
        found: list[str] = []
        for m in self._mention.finditer(_fold(text, self.case_sensitive)):
            lab = self._mention_key[" ".join(_SEPARATORS.split(m.group(0)))]
            if lab not in found:
                found.append(lab)
        return found


class LabelMatch(Metric):
    """1.0 when the label extracted from the output is the gold label; accuracy and F1 over the corpus."""

    kind = "label"
    labelled = True

    def __init__(self, *, labels: list[str] | None, extract: str, pattern: str | None,
                 case_sensitive: bool, where: str = "labels") -> None:
        super().__init__(threshold=None)
        self.extract = extract
        self.case_sensitive = case_sensitive
        self.pattern = re.compile(pattern) if pattern is not None else None
        self.declared = LabelSet(labels, case_sensitive=case_sensitive, extract=extract,
                                 where=where) if labels is not None else None
        self._per_case: dict[tuple[str, ...], LabelSet] = {}

    # -- per case --------------------------------------------------------------------------------------------

    def _label_set(self, sample: Sample) -> tuple[LabelSet | None, str | None]:
        if self.declared is not None:
            return self.declared, None
        raw = sample.case.vars.get("labels")
        if raw is None:
            return None, (f"case {sample.case.id}: no label set (set the metric option 'labels', the suite "
                          "variable 'labels', or a 'labels' field on the case)")
        if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) for x in raw):
            return None, f"case {sample.case.id}: the case's 'labels' must be a list of strings"
        key = tuple(raw)
        if key not in self._per_case:
            try:
                self._per_case[key] = LabelSet(raw, case_sensitive=self.case_sensitive, extract=self.extract,
                                               where=f"case {sample.case.id}")
            except ValueError as exc:
                return None, str(exc)
        return self._per_case[key], None

    def _predict(self, text: str, labels: LabelSet) -> tuple[str | None, str]:
        """(label, "") or (None, why the output names no single label)."""
        if not text.strip():
            return None, "empty output"
        if self.extract == "exact":
            hit = labels.exact.get(_fold(text.strip(), self.case_sensitive))
            return (hit, "") if hit else (None, "output is not exactly one of the labels")
        if self.extract == "normalized":
            hit = labels.match_normalized(text)
            return (hit, "") if hit else (None, "output is not one of the labels (after normalisation)")
        if self.extract == "first_line":
            first = next(line for line in text.splitlines() if line.strip())
            hit = labels.match_normalized(first)
            return (hit, "") if hit else (None, "first line is not one of the labels")
        if self.extract == "regex":
            assert self.pattern is not None
            m = self.pattern.search(text)
            if m is None or m.group(1) is None:
                return None, "pattern did not match the output"
            hit = labels.match_normalized(m.group(1))
            return (hit, "") if hit else (None, f"pattern captured {_short(m.group(1))!r}, not a label")
        found = labels.mentions(text)
        if not found:
            return None, "output mentions no label"
        if len(found) > 1:
            return None, "output mentions several labels: " + ", ".join(found[:5])
        return found[0], ""

    def score(self, sample: Sample) -> Score:
        if sample.output.error is not None:
            return Score(value=None, error=f"model output failed: {sample.output.error}")
        labels, problem = self._label_set(sample)
        if labels is None:
            return Score(value=None, error=problem)
        gold = labels.gold(sample.case.expected)
        if gold is None:
            return Score(value=None, error=(
                f"case {sample.case.id}: gold label {_short(sample.case.expected)!r} is not in the label set"
                f"{did_you_mean(sample.case.expected, labels.labels)}"))
        predicted, why = self._predict(sample.output.text, labels)
        details: dict[str, Any] = {"predicted": predicted, "gold": gold, "invalid": predicted is None}
        if self.declared is None:
            details["labels"] = labels.labels  # aggregate() needs the label set and sees only Scores
        if predicted is None:
            return Score(value=0.0, passed=False, explanation=f"invalid prediction: {why}", details=details)
        ok = predicted == gold
        explanation = f"predicted {predicted}" if ok else f"predicted {predicted}, gold {gold}"
        return Score(value=1.0 if ok else 0.0, passed=ok, explanation=explanation, details=details)

    # -- corpus ----------------------------------------------------------------------------------------------

    def aggregate(self, scores: Sequence[Score]) -> Aggregate:
        ok = [s for s in scores if s.error is None and s.value is not None]
        n_errors = len(scores) - len(ok)
        if not ok:
            return Aggregate(value=None, n=0, n_errors=n_errors)
        if self.declared is not None:
            label_list = self.declared.labels
        else:
            label_list = []
            for s in ok:  # cases normally share one set; a union keeps every class in view if not
                for lab in s.details.get("labels", ()):
                    if lab not in label_list:
                        label_list.append(lab)
        pairs = [(s.details["gold"], s.details["predicted"]) for s in ok]
        report = classification_report(pairs, label_list)
        # passed == correct, so the pass rate is the accuracy.
        return Aggregate(value=report["accuracy"], n=len(ok), n_errors=n_errors, pass_rate=report["accuracy"],
                         details=report)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "labels": self.declared.labels if self.declared else None,
                "extract": self.extract, "pattern": self.pattern.pattern if self.pattern else None,
                "case_sensitive": self.case_sensitive}


def classification_report(pairs: Sequence[tuple[str, str | None]], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, F1 (macro/micro/weighted), per-class figures and the confusion matrix of (gold, predicted)
    pairs; ``predicted`` None is an invalid prediction. Definitions follow scikit-learn with
    ``labels=labels, zero_division=0``."""
    index = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    matrix = [[0] * (k + 1) for _ in range(k)]
    correct = 0
    for gold, predicted in pairs:
        col = index.get(predicted, k) if predicted is not None else k
        if gold in index:
            matrix[index[gold]][col] += 1
        correct += gold == predicted
    n = len(pairs)
    tp = [matrix[i][i] for i in range(k)]
    predicted_count = [sum(matrix[r][c] for r in range(k)) for c in range(k)]
    # Predictions of a label whose gold lies outside the matrix cannot happen: gold is validated per case.
    support = [sum(row) for row in matrix]
    fp = [predicted_count[i] - tp[i] for i in range(k)]
    fn = [support[i] - tp[i] for i in range(k)]

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    per_class: dict[str, dict[str, float | int]] = {}
    f1s: list[float] = []
    for i, lab in enumerate(labels):
        f1 = ratio(2 * tp[i], 2 * tp[i] + fp[i] + fn[i])
        f1s.append(f1)
        per_class[lab] = {"precision": ratio(tp[i], tp[i] + fp[i]), "recall": ratio(tp[i], tp[i] + fn[i]),
                          "f1": f1, "support": support[i]}
    s_tp, s_fp, s_fn = sum(tp), sum(fp), sum(fn)
    invalid = sum(1 for _, p in pairs if p is None)
    total_support = sum(support)
    return {
        "accuracy": correct / n if n else 0.0,
        "macro_f1": math.fsum(f1s) / k if k else 0.0,
        "micro_f1": ratio(2 * s_tp, 2 * s_tp + s_fp + s_fn),
        "weighted_f1": ratio(math.fsum(f * w for f, w in zip(f1s, support, strict=True)), total_support),
        "per_class": per_class,
        "invalid_count": invalid,
        "invalid_rate": invalid / n if n else 0.0,
        "confusion": {"labels": [*labels, INVALID], "matrix": matrix},
    }


def _short(text: str, limit: int = 60) -> str:
    text = _WHITESPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@metric("label", description="classification: the output names the gold label; accuracy, macro/micro F1, "
        "confusion matrix", family="accuracy")
def label(
    *,
    labels: list[str] | None = None,
    extract: Extract = "normalized",
    pattern: str | None = None,
    case_sensitive: bool = False,
    context: MetricContext | None = None,
) -> LabelMatch:
    """Classification accuracy against ``expected``.

    ``labels`` is the label set (default: the suite variable ``labels``, else each case's ``labels``).
    ``extract`` says how the label is read from the output: ``exact`` (the whole output, trimmed),
    ``normalized`` (case, quotes, punctuation, ``_`` vs space, a trailing period and a ``Label:`` lead-in
    ignored), ``first_line`` (``normalized`` on the first non-empty line), ``regex`` (``pattern``'s one group,
    then ``normalized``), ``mention`` (exactly one label named anywhere, matched at word edges, longest first,
    ``_`` also matching a space). ``case_sensitive`` keeps labels that differ only in case apart.
    """
    where = "metric 'label' option 'labels'"
    if labels is None and context is not None and context.suite_vars.get("labels") is not None:
        labels = context.suite_vars["labels"]
        where = "suite variable 'labels'"
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError("the suite variable 'labels' must be a list of strings",
                              hint="write vars: {labels: [negative, positive]}")
    if extract == "regex":
        if pattern is None:
            raise ConfigError("extract: regex needs a 'pattern' with one capturing group",
                              hint=r"e.g. pattern: 'Label:\s*(\w+)'")
        try:
            groups = re.compile(pattern).groups
        except re.error as exc:
            raise ConfigError(f"metric 'label': bad regex pattern {pattern!r}: {exc}") from None
        if groups != 1:
            raise ConfigError(f"metric 'label': pattern {pattern!r} has {groups} capturing groups, needs 1",
                              hint="use (?:...) for groups that should not capture")
    elif pattern is not None:
        raise ConfigError("metric 'label': 'pattern' is only used with extract: regex",
                          hint="set extract: regex or remove pattern")
    try:
        return LabelMatch(labels=labels, extract=extract, pattern=pattern, case_sensitive=case_sensitive,
                          where=where)
    except ValueError as exc:
        raise ConfigError(str(exc), hint="fix the label set or the metric options") from None


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    """Register the classification metrics."""
    register(label)
