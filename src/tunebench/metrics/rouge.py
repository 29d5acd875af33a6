"""Similarity metrics: ROUGE between the model text and the golden text, computed by ``rouge-score``.

Invariants:
- the numbers are exactly ``rouge_scorer.RougeScorer([variant], use_stemmer=…).score(expected, output)``:
  golden first (rouge-score calls it the target), model text second. Nothing is re-implemented here.
- one ``RougeScorer`` per metric instance, built when it scores its first case: importing rouge-score imports
  all of NLTK (~0.2 s; ~1.1 s when SciPy is installed, which NLTK then imports too), and built then that lands
  on the writer thread while the first requests are in flight, not before them, nor in ``tunebench validate``.
  Its tokenizer is rouge-score's default one with a memo in front of the Porter stemmer (same tokens, ~2x
  faster on real answers).
- the value is the chosen ``measure`` (F-measure by default); all three measures are kept in ``details``.
- ``rougeLsum`` treats each newline-separated line as one sentence, as rouge-score does with
  ``split_summaries=False``. No sentence splitter runs: put one sentence per line in golden files when you use
  ``rougeLsum`` (rouge-score's own splitter needs NLTK's punkt data, which would be a download at run time).
- rouge-score's tokenizer lowercases and keeps only ASCII letters and digits (``café`` → ``caf``); text in
  non-Latin scripts has no tokens and scores 0.0. Such cases say so in the explanation: use chrF for them.
- an empty output scores 0.0 (not an error): saying nothing is a real, bad answer.
- aggregation is the mean over cases (the base class).
"""

from __future__ import annotations

from typing import Any, Literal

from ..hookspecs import hookimpl
from ..records import Sample, Score
from ._base import Metric, metric

__all__ = ["Rouge", "rouge"]

Variant = Literal["rouge1", "rouge2", "rougeL", "rougeLsum"]
Measure = Literal["fmeasure", "precision", "recall"]


class Rouge(Metric):
    """ROUGE-N / ROUGE-L / ROUGE-Lsum of one case."""

    kind = "rouge"

    def __init__(self, *, variant: str, use_stemmer: bool, measure: str, threshold: float | None) -> None:
        super().__init__(threshold=threshold)
        self.variant, self.use_stemmer, self.measure = variant, use_stemmer, measure
        self._built: tuple[Any, Any] | None = None

    def _parts(self) -> tuple[Any, Any]:
        """(tokenizer, scorer), built on first use (two threads racing build equal ones; either is kept)."""
        if self._built is None:
            tokenizer = _tokenizer(self.use_stemmer)
            self._built = (tokenizer, _scorer(self.variant, tokenizer))
        return self._built

    def score(self, sample: Sample) -> Score:
        output, expected = sample.output.text, sample.case.expected
        tokenizer, scorer = self._parts()
        result = scorer.score(expected, output)[self.variant]
        # rouge-score returns int 0 for empty inputs; the store wants floats.
        measures = {
            "precision": float(result.precision),
            "recall": float(result.recall),
            "fmeasure": float(result.fmeasure),
        }
        value = measures[self.measure]
        explanation = f"{self.variant} {self.measure} {value:.3f}"
        if not output.strip():
            explanation = f"{self.variant} {self.measure} 0.000: empty output"
        elif not tokenizer.tokenize(output, stem=False):
            explanation += ": the output has no ASCII letters or digits, which rouge-score ignores (use chrF)"
        return Score(value=value, passed=self.passes(value), explanation=explanation, details=measures)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "options": {"variant": self.variant, "use_stemmer": self.use_stemmer, "measure": self.measure},
        }


def _tokenizer(use_stemmer: bool) -> Any:
    """rouge-score's default tokenizer with a memo in front of the Porter stemmer.

    Tokens go through ``rouge_score.tokenize.tokenize`` -- rouge-score's own code -- with the same NLTK
    ``PorterStemmer`` that ``DefaultTokenizer`` uses, so every token, and every score, is identical. Only the
    repeated stemming of the same word is skipped: it was ~60% of the time on 1,000 pairs.
    """
    # Imported here: rouge-score pulls in nltk (and absl), which `import tunebench` must not pay for.
    from nltk.stem import porter
    from rouge_score import tokenize, tokenizers

    class MemoStemmer:
        def __init__(self) -> None:
            self._stem = porter.PorterStemmer().stem
            self._memo: dict[str, str] = {}

        def stem(self, word: str) -> str:
            stemmed = self._memo.get(word)
            if stemmed is None:
                if len(self._memo) > 200_000:  # bound memory on an unbounded vocabulary
                    self._memo.clear()
                stemmed = self._memo[word] = self._stem(word)
            return stemmed

    class Tokenizer(tokenizers.Tokenizer):
        def __init__(self) -> None:
            self._stemmer = MemoStemmer() if use_stemmer else None

        def tokenize(self, text: str, stem: bool = True) -> list[str]:
            return tokenize.tokenize(text, self._stemmer if stem else None)

    return Tokenizer()


def _scorer(variant: str, tokenizer: Any) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([variant], tokenizer=tokenizer)


@metric("rouge", description="ROUGE-1/2/L/Lsum between output and golden text (rouge-score)", family="similarity")
def rouge(
    *,
    variant: Variant = "rougeL",
    use_stemmer: bool = True,
    measure: Measure = "fmeasure",
    threshold: float | None = None,
) -> Rouge:
    """ROUGE via ``rouge-score``; ``rougeLsum`` splits sentences on newlines only (one sentence per line)."""
    return Rouge(variant=variant, use_stemmer=use_stemmer, measure=measure, threshold=threshold)


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    """Register the similarity metrics."""
    register(rouge)
