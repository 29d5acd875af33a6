"""Translation metrics: BLEU, chrF(++) and TER through sacrebleu, and bilingual terminology.

Invariants:
- values are on sacrebleu's 0–100 scale (TER may exceed 100), so they read like the numbers translators
  report. A case's value is the *sentence* score (``sacrebleu.sentence_bleu`` / ``sentence_chrf`` /
  ``sentence_ter``, same options); its ``details["stats"]`` are sacrebleu's sufficient statistics for it.
- the aggregate value is the *corpus* score computed from the summed statistics -- what ``sacrebleu REF -i HYP``
  prints -- never a mean of sentence scores (that is ``details["mean_sentence"]``). ``details["signature"]``
  is sacrebleu's reproducibility signature.
- statistics come from ``Metric._extract_corpus_statistics`` and scores from ``_compute_score_from_stats``:
  sacrebleu exposes no public per-segment statistics for chrF, and one seam for all three keeps them alike.
  tests/metrics/test_translation.py pins both against sacrebleu's public API and its command line.
- BLEU's tokenizer is the ``tokenize`` option, else chosen from the target language (option ``target_lang``,
  else the case variable, else the suite variable): ``zh`` for Chinese, ``char`` for Japanese and Korean
  (sacrebleu's ``ja-mecab``/``ko-mecab`` need MeCab dictionaries that are not installed), ``13a`` otherwise.
  Cases scored with different tokenizers are not pooled into one corpus BLEU (``value`` is None and
  ``details["by_tokenizer"]`` has one corpus score per tokenizer).
- ``glossary_translation`` checks mandated target-language terms: see :class:`GlossaryTranslation`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..factory import did_you_mean
from ..hookspecs import hookimpl
from ..records import Aggregate, Sample, Score
from ._base import Metric, MetricContext, metric

__all__ = ["Bleu", "Chrf", "GlossaryEntry", "GlossaryTranslation", "Ter", "bleu", "bleu_tokenizer", "chrf",
           "glossary_translation", "load_bilingual_glossary", "ter"]

_TOKENIZER_BY_LANG = {"zh": "zh", "ja": "char", "ko": "char"}
_SCALE = "0-100"


def bleu_tokenizer(target_lang: str | None) -> str:
    """The BLEU tokenizer for a target language (``zh-Hans`` → ``zh``); ``13a`` when unknown or unset."""
    if not target_lang:
        return "13a"
    return _TOKENIZER_BY_LANG.get(re.split(r"[-_]", target_lang.strip().lower())[0], "13a")


class _Sacre(Metric):
    """Shared mechanics: sentence score and statistics per case, corpus score from summed statistics."""

    label: ClassVar[str] = ""
    """How the metric is written in explanations (``BLEU``, ``chrF``, ``TER``)."""

    def _engine(self, group: str) -> tuple[Any, Any]:
        """(sentence-level, corpus-level) sacrebleu metric objects for a statistics group."""
        raise NotImplementedError

    def _group(self, sample: Sample) -> str:
        return ""

    def _corpus_details(self, score: Any) -> dict[str, Any]:
        return {}

    def score(self, sample: Sample) -> Score:
        if sample.output.error is not None:
            return Score(value=None, error=f"model output failed: {sample.output.error}")
        group = self._group(sample)
        sentence, _ = self._engine(group)
        # sacrebleu treats the text as one line; an embedded newline is ordinary whitespace for every tokenizer.
        stats = sentence._extract_corpus_statistics([sample.output.text], [[sample.case.expected]])[0]
        stats = [int(x) if float(x).is_integer() else float(x) for x in stats]
        value = float(sentence._compute_score_from_stats(list(stats)).score)
        details: dict[str, Any] = {"stats": stats}
        if group:
            details["tokenize"] = group
        passed = self.passes(value)
        return Score(value=value, passed=passed, explanation=f"sentence {self.label} {value:.1f}",
                     details=details)

    def aggregate(self, scores: Sequence[Score]) -> Aggregate:
        ok = [s for s in scores if s.error is None and s.value is not None]
        n_errors = len(scores) - len(ok)
        if not ok:
            return Aggregate(value=None, n=0, n_errors=n_errors)
        groups: dict[str, list[Score]] = {}
        for s in ok:
            groups.setdefault(s.details.get("tokenize", ""), []).append(s)
        by_group: dict[str, dict[str, Any]] = {}
        for group, members in groups.items():
            _, corpus = self._engine(group)
            summed = [sum(col) for col in zip(*(s.details["stats"] for s in members), strict=True)]
            result = corpus._compute_score_from_stats(list(summed))
            by_group[group] = {"score": float(result.score), "stats": summed,
                               "signature": self._signature(group), **self._corpus_details(result)}
        judged = [s.passed for s in ok if s.passed is not None]
        details: dict[str, Any] = {
            "scale": _SCALE,
            "mean_sentence": math.fsum(s.value for s in ok) / len(ok),  # type: ignore[misc]
        }
        if len(by_group) == 1:
            only = next(iter(by_group.values()))
            value: float | None = only.pop("score")
            details.update(only)
        else:
            value = None  # statistics from different tokenizers do not add up to one corpus score
            details["by_tokenizer"] = by_group
        return Aggregate(value=value, n=len(ok), n_errors=n_errors,
                         pass_rate=sum(judged) / len(judged) if judged else None, details=details)

    def _signature(self, group: str) -> str:
        _, corpus = self._engine(group)
        if not hasattr(corpus, "num_refs"):
            corpus.corpus_score(["x"], [["x"]])  # sacrebleu resolves the reference count on first use
        return str(corpus.get_signature().format())


class Bleu(_Sacre):
    kind = "bleu"
    label = "BLEU"

    def __init__(self, *, tokenize: str | None, target_lang: str | None, lowercase: bool,
                 threshold: float | None, suite_lang: str | None) -> None:
        super().__init__(threshold=threshold)
        self.tokenize, self.target_lang, self.lowercase, self.suite_lang = tokenize, target_lang, lowercase, \
            suite_lang
        self._engines: dict[str, tuple[Any, Any]] = {}

    def _group(self, sample: Sample) -> str:
        if self.tokenize is not None:
            return self.tokenize
        lang = self.target_lang or sample.case.vars.get("target_lang") or self.suite_lang
        return bleu_tokenizer(lang if isinstance(lang, str) else None)

    def _engine(self, group: str) -> tuple[Any, Any]:
        group = group or bleu_tokenizer(self.target_lang or self.suite_lang)  # scores without a recorded one
        if group not in self._engines:
            from sacrebleu.metrics import BLEU

            # Sentence BLEU uses effective order (as sacrebleu.sentence_bleu does); corpus BLEU does not.
            self._engines[group] = (BLEU(tokenize=group, lowercase=self.lowercase, effective_order=True),
                                    BLEU(tokenize=group, lowercase=self.lowercase))
        return self._engines[group]

    def _corpus_details(self, score: Any) -> dict[str, Any]:
        return {"precisions": [float(p) for p in score.precisions], "bp": float(score.bp),
                "sys_len": int(score.sys_len), "ref_len": int(score.ref_len),
                "ratio": float(score.sys_len / score.ref_len) if score.ref_len else 0.0}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tokenize": self.tokenize, "target_lang": self.target_lang,
                "lowercase": self.lowercase, "scale": _SCALE}


class Chrf(_Sacre):
    kind = "chrf"
    label = "chrF"

    def __init__(self, *, char_order: int, word_order: int, threshold: float | None) -> None:
        super().__init__(threshold=threshold)
        self.char_order, self.word_order = char_order, word_order
        self._engines: tuple[Any, Any] | None = None

    def _engine(self, group: str) -> tuple[Any, Any]:
        if self._engines is None:
            from sacrebleu.metrics import CHRF

            engine = CHRF(char_order=self.char_order, word_order=self.word_order)
            self._engines = (engine, engine)
        return self._engines

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "char_order": self.char_order, "word_order": self.word_order,
                "scale": _SCALE}


class Ter(_Sacre):
    kind = "ter"
    label = "TER"
    higher_is_better = False

    def __init__(self, *, normalized: bool, case_sensitive: bool, threshold: float | None) -> None:
        super().__init__(threshold=threshold)
        self.normalized, self.case_sensitive = normalized, case_sensitive
        self._engines: tuple[Any, Any] | None = None

    def _engine(self, group: str) -> tuple[Any, Any]:
        if self._engines is None:
            from sacrebleu.metrics import TER

            engine = TER(normalized=self.normalized, case_sensitive=self.case_sensitive)
            self._engines = (engine, engine)
        return self._engines

    def _corpus_details(self, score: Any) -> dict[str, Any]:
        return {"num_edits": float(score.num_edits), "ref_length": float(score.ref_length)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "normalized": self.normalized, "case_sensitive": self.case_sensitive,
                "scale": _SCALE}


def _suite_lang(context: MetricContext | None) -> str | None:
    lang = context.suite_vars.get("target_lang") if context is not None else None
    return lang if isinstance(lang, str) else None


@metric("bleu", description="BLEU (sacrebleu, 0-100): sentence BLEU per case, corpus BLEU from summed "
        "n-gram statistics", family="translation")
def bleu(
    *,
    tokenize: str | None = None,
    target_lang: str | None = None,
    lowercase: bool = False,
    threshold: float | None = None,
    context: MetricContext | None = None,
) -> Bleu:
    """sacrebleu BLEU. ``tokenize`` is a sacrebleu tokenizer (``13a``, ``intl``, ``zh``, ``char``, ``none``…);
    unset, it follows the target language (``zh`` → ``zh``, ``ja``/``ko`` → ``char``, else ``13a``).
    ``target_lang`` defaults to the case's, then the suite's ``target_lang`` variable."""
    usable = ("none", "zh", "13a", "intl", "char")  # the others need MeCab or a SentencePiece download
    if tokenize is not None and tokenize not in usable:
        raise ConfigError(f"metric 'bleu': tokenizer {tokenize!r} is not available offline"
                          f"{did_you_mean(tokenize, usable)}", hint="use one of " + ", ".join(usable))
    return Bleu(tokenize=tokenize, target_lang=target_lang, lowercase=lowercase, threshold=threshold,
                suite_lang=_suite_lang(context))


@metric("chrf", description="chrF (chrF++ with word_order: 2) via sacrebleu, 0-100; corpus score from summed "
        "character n-gram statistics", family="translation")
def chrf(*, char_order: int = 6, word_order: int = 0, threshold: float | None = None) -> Chrf:
    """sacrebleu chrF with β=2; ``word_order: 2`` gives chrF++."""
    if char_order < 1 or word_order < 0:
        raise ConfigError("metric 'chrf': char_order must be ≥ 1 and word_order ≥ 0",
                          hint="the usual settings are char_order: 6 with word_order: 0 (chrF) or 2 (chrF++)")
    return Chrf(char_order=char_order, word_order=word_order, threshold=threshold)


@metric("ter", description="translation edit rate via sacrebleu, 0-100+ (lower is better); corpus TER is "
        "total edits over total reference words", family="translation")
def ter(*, normalized: bool = False, case_sensitive: bool = False, threshold: float | None = None) -> Ter:
    """sacrebleu TER (Tercom). ``normalized`` applies Tercom's punctuation/tokenisation normalisation."""
    return Ter(normalized=normalized, case_sensitive=case_sensitive, threshold=threshold)


# -- bilingual terminology ------------------------------------------------------------------------------------

# Spanish function words keep their form: only content words take the plural/singular variants below.
_FUNCTION_WORDS = frozenset({
    "a", "al", "con", "de", "del", "e", "el", "en", "la", "las", "lo", "los", "o", "para", "por", "que", "sin",
    "sobre", "su", "sus", "u", "un", "una", "unas", "unos", "y",
})
_HYPHENS = "\\-\u2010\u2011\u2012\u2013"


def _word_forms(word: str) -> list[str]:
    """A target-language word with its simple number variants (Spanish: -s, -es, -ión ↔ -iones)."""
    lower = word.casefold()
    if len(lower) < 3 or lower in _FUNCTION_WORDS or not word[-1].isalpha():
        return [word]
    forms = [word]
    if lower.endswith("ión"):
        forms.append(word[:-3] + ("IONES" if word.isupper() else "iones"))  # pensión → pensiones
    elif lower.endswith("iones"):
        forms.append(word[:-5] + "ión")
    if lower.endswith("es") and len(lower) > 4:
        forms.append(word[:-2])  # planes → plan
    if lower.endswith("s"):
        forms.append(word[:-1])  # beneficios → beneficio
    else:
        forms += [word + "s", word + "es"]
    return forms


def target_regex(term: str, ignore_case: bool) -> re.Pattern[str]:
    """Pattern of one mandated or wrong target term: word edges, flexible spacing and hyphens, number variants."""
    term = unicodedata.normalize("NFC", term).strip()
    pieces = re.split(rf"([\s{_HYPHENS}]+)", term)
    words, seps = pieces[0::2], pieces[1::2]
    out = [r"(?<!\w)"]
    for i, word in enumerate(words):
        if i:
            out.append(rf"[\s{_HYPHENS}]*" if any(not c.isspace() for c in seps[i - 1]) else rf"[\s{_HYPHENS}]+")
        forms = sorted(_word_forms(word), key=len, reverse=True)
        out.append("(?:" + "|".join(re.escape(f) for f in forms) + ")")
    out.append(r"(?!\w)")
    return re.compile("".join(out), re.IGNORECASE if ignore_case else 0)


@dataclass(frozen=True)
class GlossaryEntry:
    """One bilingual glossary entry."""

    source: tuple[str, ...]
    """Source-language forms that trigger the entry."""
    target: tuple[str, ...]
    """Acceptable translations; the output must use one of them."""
    wrong: tuple[str, ...] = ()
    """Translations that must not be used for this term."""
    line: int | None = None


_ENTRY_KEYS = ("source", "target", "wrong", "note")


def load_bilingual_glossary(path: Path) -> list[GlossaryEntry]:
    """Read a bilingual glossary (a YAML list of ``source``/``target``/``wrong``); errors name file:line."""
    from ..yamlfile import load_yaml

    located = load_yaml(path)
    data = located.data
    if not isinstance(data, list) or not data:
        raise located.error((), "a bilingual glossary is a non-empty YAML list of entries",
                            "write entries as '- source: deductible' / '  target: deducible'")
    entries = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise located.error((i,), f"entry {i + 1} must be a mapping with source and target")
        for key in item:
            if key not in _ENTRY_KEYS:
                raise located.error((i, key), f"unknown key {key!r} in entry {i + 1}"
                                    f"{did_you_mean(str(key), _ENTRY_KEYS)}", "allowed keys: " + ", ".join(_ENTRY_KEYS))
        fields: dict[str, tuple[str, ...]] = {}
        for key in ("source", "target", "wrong"):
            raw = item.get(key, [] if key == "wrong" else None)
            values = [raw] if isinstance(raw, str) else raw
            valid = isinstance(values, list) and all(isinstance(v, str) and re.search(r"\w", v) for v in values)
            if not valid or (key != "wrong" and not values):
                raise located.error((i, key), f"entry {i + 1}: '{key}' must be a term or a list of terms",
                                    f"e.g. {key}: deducible" if key != "source" else "e.g. source: deductible")
            fields[key] = tuple(v.strip() for v in values)
        entries.append(GlossaryEntry(fields["source"], fields["target"], fields["wrong"],
                                     line=located.position((i,))[0]))
    return entries


def _source_spans(entries: Sequence[GlossaryEntry], text: str) -> dict[int, list[tuple[int, int]]]:
    """Entry index → source spans, keeping only the longest of overlapping matches (``Health Insurance``
    inside ``Children's Health Insurance Program`` does not trigger its own entry)."""
    from .terminology import find_term  # English matching (plurals, possessives, hyphens) shared with it

    found = [(end - start, start, end, i) for i, e in enumerate(entries) for term in e.source
             for start, end in find_term(term, text)]
    found.sort(key=lambda t: (-t[0], t[1]))
    taken: list[tuple[int, int]] = []
    spans: dict[int, list[tuple[int, int]]] = {}
    for _, start, end, i in found:
        if any(start < b and a < end for a, b in taken):
            continue
        taken.append((start, end))
        spans.setdefault(i, []).append((start, end))
    return spans


class GlossaryTranslation(Metric):
    """Share of the glossary terms found in the source that the output translates as mandated.

    A term triggers when one of its ``source`` forms occurs in ``case.input`` (word edges, any case, English
    plural and possessive, longest match wins). It is *hit* when one of its ``target`` forms occurs in the
    output (word edges, ``ignore_case``, accents significant, Spanish number variants), and *wrong* when one of
    its ``wrong`` forms occurs outside every mandated form. ``passed`` is False when any wrong translation is
    used, else ``value >= threshold``. No triggered term: value 1.0. The aggregate value is pooled: hits over
    triggered terms across all cases (``details["mean_case"]`` is the mean of the case values).
    """

    kind = "glossary_translation"

    def __init__(self, *, entries: list[GlossaryEntry], ignore_case: bool, threshold: float,
                 glossary: str) -> None:
        super().__init__(threshold=threshold)
        self.entries, self.ignore_case, self.glossary = entries, ignore_case, glossary
        self._targets = [[target_regex(t, ignore_case) for t in e.target] for e in entries]
        self._wrong = [[target_regex(t, ignore_case) for t in e.wrong] for e in entries]

    def score(self, sample: Sample) -> Score:
        if sample.output.error is not None:
            return Score(value=None, error=f"model output failed: {sample.output.error}")
        source = unicodedata.normalize("NFC", sample.case.input)
        output = unicodedata.normalize("NFC", sample.output.text)
        triggered: list[str] = []
        hit: list[str] = []
        missed: list[str] = []
        wanted: list[str] = []  # the first mandated translation of each missed term, for the explanation
        wrong_used: list[dict[str, str]] = []
        for i in sorted(_source_spans(self.entries, source)):
            entry = self.entries[i]
            term = entry.source[0]
            triggered.append(term)
            shields = [m.span() for rx in self._targets[i] for m in rx.finditer(output)]
            if shields:
                hit.append(term)
            else:
                missed.append(term)
                wanted.append(entry.target[0])
            for rx, wrong in zip(self._wrong[i], entry.wrong, strict=True):
                if any(not any(a <= m.start() and m.end() <= b for a, b in shields) for m in rx.finditer(output)):
                    wrong_used.append({"term": term, "wrong": wrong})
        value = len(hit) / len(triggered) if triggered else 1.0
        passed = not wrong_used and bool(self.passes(value))
        if not triggered:
            explanation = "no glossary term in the source"
        else:
            parts = [f"{len(hit)}/{len(triggered)} terms translated as mandated"]
            if missed:
                parts.append("missing: " + "; ".join(f"{t} → {w}" for t, w in zip(missed[:5], wanted, strict=False)))
            if wrong_used:
                parts.append("wrong: " + "; ".join(f"{w['wrong']} for {w['term']}" for w in wrong_used[:5]))
            explanation = ", ".join(parts)
        details = {"triggered": triggered, "hit": hit, "missed": missed, "wrong_used": wrong_used}
        return Score(value=value, passed=passed, explanation=explanation, details=details)

    def aggregate(self, scores: Sequence[Score]) -> Aggregate:
        base = super().aggregate(scores)
        ok = [s for s in scores if s.error is None and s.value is not None]
        if not ok:
            return base
        n_triggered = sum(len(s.details["triggered"]) for s in ok)
        n_hit = sum(len(s.details["hit"]) for s in ok)
        missed: dict[str, int] = {}
        for s in ok:
            for t in s.details["missed"]:
                missed[t] = missed.get(t, 0) + 1
        details = {"mean_case": base.value, "n_triggered": n_triggered, "n_hit": n_hit,
                   "n_wrong_used": sum(len(s.details["wrong_used"]) for s in ok),
                   "cases_with_terms": sum(1 for s in ok if s.details["triggered"]),
                   "most_missed": dict(sorted(missed.items(), key=lambda kv: (-kv[1], kv[0]))[:10])}
        value = n_hit / n_triggered if n_triggered else 1.0
        return Aggregate(value=value, n=base.n, n_errors=base.n_errors, pass_rate=base.pass_rate, details=details)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "glossary": self.glossary, "ignore_case": self.ignore_case,
                "n_entries": len(self.entries)}


@metric("glossary_translation", description="bilingual terminology: glossary terms in the source must be "
        "translated as mandated, never with listed wrong translations", family="terminology")
def glossary_translation(
    *,
    glossary: str,
    ignore_case: bool = True,
    threshold: float = 1.0,
    context: MetricContext | None = None,
) -> GlossaryTranslation:
    """``glossary`` is a YAML file (relative to the suite file) of ``source``/``target``/``wrong`` entries;
    ``target`` and ``wrong`` may be lists. ``ignore_case`` applies to the output (the source always ignores
    case); accents always matter."""
    base = context.suite_dir if context is not None else Path.cwd()
    path = Path(glossary)
    if not path.is_absolute():
        path = base / path
    return GlossaryTranslation(entries=load_bilingual_glossary(path), ignore_case=ignore_case,
                               threshold=threshold, glossary=glossary)


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    """Register the translation metrics."""
    for factory in (bleu, chrf, ter, glossary_translation):
        register(factory)
