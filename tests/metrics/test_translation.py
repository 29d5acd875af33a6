"""bleu / chrf / ter against sacrebleu (its command line and its API), and glossary_translation on real data."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER

from tunebench.errors import ConfigError
from tunebench.metrics import MetricContext
from tunebench.metrics import translation as translation_module
from tunebench.metrics.translation import bleu, bleu_tokenizer, chrf, glossary_translation, ter
from tunebench.records import Case, Output, Sample

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "evals"  # verbatim copies of the shared golden data
GLOSSARY = REPO / "evals" / "glossaries" / "healthcare_en_es.yaml"

with (DATA / "translation" / "cases.jsonl").open(encoding="utf-8") as _f:
    ROWS = [json.loads(line) for line in _f if line.strip()]
# The command line reads one segment per line, so the comparison uses the single-line pairs (289 of 300).
SINGLE_LINE = [r for r in ROWS if "\n" not in r["expected"] and "\n" not in r["input"]]


def degrade(reference: str, rng: random.Random) -> str:
    """A deterministic synthetic hypothesis derived from a real Spanish reference."""
    words = reference.split()
    op = rng.random()
    if op < 0.1:
        return reference
    if op < 0.4:
        return " ".join(w for w in words if rng.random() > 0.3)
    if op < 0.6 and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if op < 0.8:
        return " ".join("xyz" if rng.random() < 0.2 else w for w in words)
    return " ".join(words[: max(1, len(words) // 2)]).upper()


def make_pairs(seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = [(r["expected"], degrade(r["expected"], rng)) for r in SINGLE_LINE]
    pairs[5] = (pairs[5][0], "")  # one empty hypothesis
    return pairs


PAIRS = make_pairs()


def samples_for(pairs, target_lang: str | None = "es") -> list[Sample]:
    out = []
    for i, (ref, hyp) in enumerate(pairs):
        case = Case(id=f"t{i}", input="src", expected=ref, vars={"target_lang": target_lang} if target_lang else {})
        out.append(Sample(case, Output(case_id=case.id, model="m", repeat=0, text=hyp)))
    return out


def build(factory, options=None, **context):
    return factory.__tunebench_metric__.build(options or {}, MetricContext(**context))


def cli(tmp_path: Path, pairs, *args: str) -> list[dict]:
    ref, hyp = tmp_path / "ref.es", tmp_path / "hyp.es"
    ref.write_text("".join(r + "\n" for r, _ in pairs), encoding="utf-8")
    hyp.write_text("".join(h + "\n" for _, h in pairs), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-w", "6", "-f", "json",
                          *args], capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def corpus(metric, pairs, target_lang="es"):
    scores = metric.score_batch(samples_for(pairs, target_lang))
    assert all(s.error is None for s in scores)
    return scores, metric.aggregate(scores)


@pytest.fixture(scope="module")
def default_runs() -> dict:
    """Default bleu/chrf/ter scored once over all pairs (TER over 289 segments takes seconds)."""
    return {f.__name__: corpus(build(f), PAIRS) for f in (bleu, chrf, ter)}


def test_corpus_scores_equal_the_sacrebleu_command_line(tmp_path, default_runs):
    bleu_result, chrf_result, ter_result = cli(tmp_path, PAIRS, "-m", "bleu", "chrf", "ter")
    for factory, ref in ((bleu, bleu_result), (chrf, chrf_result), (ter, ter_result)):
        _, agg = default_runs[factory.__name__]
        assert round(agg.value, 6) == ref["score"], ref["name"]
        assert agg.details["signature"] == ref["signature"]
        assert agg.n == len(PAIRS)
    assert bleu_result["signature"].count("tok:13a") == 1


def test_corpus_scores_equal_the_command_line_with_options(tmp_path):
    bleu_result, chrf_result, ter_result = cli(
        tmp_path, PAIRS, "-m", "bleu", "chrf", "ter", "-tok", "intl", "-lc", "--chrf-word-order", "2",
        "--ter-normalized", "--ter-case-sensitive")
    metrics = (build(bleu, {"tokenize": "intl", "lowercase": True}), build(chrf, {"word_order": 2}),
               build(ter, {"normalized": True, "case_sensitive": True}))
    for metric, ref in zip(metrics, (bleu_result, chrf_result, ter_result), strict=True):
        _, agg = corpus(metric, PAIRS)
        assert round(agg.value, 6) == ref["score"], ref["name"]
        assert agg.details["signature"] == ref["signature"]
    assert chrf_result["name"] == "chrF2++"


def test_sentence_scores_equal_sacrebleu_sentence_functions(default_runs):
    b_scores, c_scores, t_scores = (default_runs[name][0] for name in ("bleu", "chrf", "ter"))
    for i, ((ref, hyp), b, c, t) in enumerate(zip(PAIRS, b_scores, c_scores, t_scores, strict=True)):
        assert b.value == sacrebleu.sentence_bleu(hyp, [ref]).score
        assert c.value == sacrebleu.sentence_chrf(hyp, [ref]).score
        if i < 100:  # sentence TER costs ~10 ms a pair; 100 pairs pin it
            assert t.value == sacrebleu.sentence_ter(hyp, [ref]).score


def test_statistics_seam_matches_the_public_corpus_api():
    """Pins the sacrebleu internals the metrics use (_extract_corpus_statistics, _compute_score_from_stats)."""
    pairs = PAIRS[:80]
    hyps, refs = [h for _, h in pairs], [[r for r, _ in pairs]]
    for factory, public in ((bleu, BLEU()), (chrf, CHRF()), (chrf, CHRF(word_order=2)), (ter, TER())):
        options = {"word_order": 2} if getattr(public, "word_order", 0) == 2 else {}
        scores, agg = corpus(build(factory, options), pairs)
        assert agg.value == public.corpus_score(hyps, refs).score
        assert agg.details["stats"] == [sum(col) for col in zip(*(s.details["stats"] for s in scores), strict=True)]
    _, agg = corpus(build(bleu), pairs)
    reference = BLEU().corpus_score(hyps, refs)
    assert agg.details["precisions"] == reference.precisions
    assert (agg.details["sys_len"], agg.details["ref_len"], agg.details["bp"]) == (reference.sys_len,
                                                                                   reference.ref_len, reference.bp)


def test_corpus_value_is_not_the_mean_of_sentence_scores(default_runs):
    scores, agg = default_runs["bleu"]
    assert agg.details["mean_sentence"] == pytest.approx(sum(s.value for s in scores) / len(scores))
    assert abs(agg.value - agg.details["mean_sentence"]) > 1.0
    assert agg.details["scale"] == "0-100"


def test_empty_and_identical_hypotheses():
    ref = ROWS[0]["expected"]
    for factory, fn in ((bleu, sacrebleu.sentence_bleu), (chrf, sacrebleu.sentence_chrf),
                        (ter, sacrebleu.sentence_ter)):
        metric = build(factory)
        empty, same = metric.score_batch(samples_for([(ref, ""), (ref, ref)]))
        assert (empty.value, same.value) == (fn("", [ref]).score, fn(ref, [ref]).score), factory.__name__
        assert empty.error is None and same.error is None
    # The extremes, in each metric's direction.
    assert build(bleu).score_batch(samples_for([(ref, ref)]))[0].value == pytest.approx(100.0)
    assert build(ter).score_batch(samples_for([(ref, "")]))[0].value == 100.0


def test_ter_is_lower_is_better_and_thresholds_in_that_direction():
    metric = build(ter, {"threshold": 30})
    assert metric.higher_is_better is False
    good, bad = metric.score_batch(samples_for([(ROWS[0]["expected"], ROWS[0]["expected"]),
                                                (ROWS[0]["expected"], "nada que ver")]))
    assert (good.passed, bad.passed) == (True, False)
    high = build(bleu, {"threshold": 50}).score_batch(samples_for([(ROWS[0]["expected"], ROWS[0]["expected"])]))
    assert high[0].passed is True


def test_tokenizer_follows_the_target_language():
    assert [bleu_tokenizer(x) for x in ("zh", "zh-Hans", "ja", "ko_KR", "es", None, "")] == [
        "zh", "zh", "char", "char", "13a", "13a", "13a"]
    pairs = [("我们今天去公园散步。", "我们今天去公园。"), ("健康保险很重要。", "保险很重要。")]
    scores, agg = corpus(build(bleu), pairs, target_lang="zh")
    assert {s.details["tokenize"] for s in scores} == {"zh"}
    assert agg.value == BLEU(tokenize="zh").corpus_score([h for _, h in pairs], [[r for r, _ in pairs]]).score
    assert "tok:zh" in agg.details["signature"]
    # From the suite variable when the case has none; the option beats both.
    assert build(bleu, suite_vars={"target_lang": "ja"}).score_batch(samples_for(pairs, None))[0].details[
        "tokenize"] == "char"
    assert build(bleu, {"target_lang": "es"}).score_batch(samples_for(pairs, "zh"))[0].details["tokenize"] == "13a"


def test_mixed_tokenizers_are_not_pooled():
    metric = build(bleu)
    scores = metric.score_batch(samples_for([("hola mundo", "hola")], "es") + samples_for([("你好世界", "你好")], "zh"))
    agg = metric.aggregate(scores)
    assert agg.value is None and agg.n == 2
    assert set(agg.details["by_tokenizer"]) == {"13a", "zh"}


def test_unicode_and_long_output():
    ref = "El coseguro y el deducible — ¿qué son? «Términos» clave: año 2014, niños, pingüino."
    hyp = "El coseguro y el deducible: ¿qué son? Términos clave del año 2014, niños y pingüino. 🙂"
    for factory, fn in ((bleu, sacrebleu.sentence_bleu), (chrf, sacrebleu.sentence_chrf),
                        (ter, sacrebleu.sentence_ter)):
        (score,) = build(factory).score_batch(samples_for([(ref, hyp)]))
        assert score.value == fn(hyp, [ref]).score
    long_hyp = " ".join([ROWS[0]["expected"]] * 400)
    (score,) = build(chrf).score_batch(samples_for([(ROWS[0]["expected"], long_hyp)]))
    assert 0 <= score.value < 50


def test_failed_output_and_bad_options():
    failed = Sample(Case(id="x", input="i", expected="e"), Output("x", "m", 0, "", error="timeout"))
    assert build(chrf).score(failed).error == "model output failed: timeout"
    with pytest.raises(ConfigError, match="ja-mecab"):
        build(bleu, {"tokenize": "ja-mecab"})
    with pytest.raises(ConfigError):
        build(chrf, {"char_order": 0})


def test_registered_through_the_hook():
    seen = []
    translation_module.register_metrics(register=seen.append)
    kinds = {f.__tunebench_metric__.kind: f.__tunebench_metric__.family for f in seen}
    assert kinds == {"bleu": "translation", "chrf": "translation", "ter": "translation",
                     "glossary_translation": "terminology"}


# -- glossary_translation -------------------------------------------------------------------------------------


def glossary_metric(path: Path = GLOSSARY, **options):
    return build(glossary_translation, {"glossary": path.name, **options}, suite_dir=path.parent)


def real_sample(row: dict, text: str) -> Sample:
    return Sample(Case(id=row["id"], input=row["input"], expected=row["expected"]), Output(row["id"], "m", 0, text))


def test_glossary_file_is_built_from_the_real_glossary_terms():
    import yaml

    entries = yaml.safe_load(GLOSSARY.read_text(encoding="utf-8"))
    text = GLOSSARY.read_text(encoding="utf-8")
    assert "Public Domain Mark 1.0" in text and "HealthCare.gov" in text
    terms = {r["input"]: r for r in ROWS if r["meta"]["segment_kind"] == "glossary_term"}
    assert len(entries) >= 80
    # Every entry cites a line of translation.shared.jsonl that holds a glossary term.
    lines = [int(line.split()[2].rstrip(":")) for line in text.splitlines() if line.startswith("# line ")]
    assert len(lines) == len(entries)
    assert all(ROWS[n - 1]["meta"]["segment_kind"] == "glossary_term" for n in lines)
    assert all(ROWS[n - 1]["input"] in terms for n in lines)


def test_official_translations_satisfy_the_glossary():
    metric = glossary_metric()
    scores = metric.score_batch([real_sample(r, r["expected"]) for r in ROWS])
    agg = metric.aggregate(scores)
    # Each glossary term, translated officially, uses its own mandated translation.
    for row, score in zip(ROWS, scores, strict=True):
        if row["meta"]["segment_kind"] == "glossary_term":
            assert score.value == 1.0 and score.passed, (row["input"], score.details)
    # In running text the official translators vary a little (measured: 176 of 182 term uses).
    assert agg.details["n_triggered"] > 150 and agg.details["cases_with_terms"] > 100
    assert agg.value >= 0.95
    assert agg.details["n_wrong_used"] == 0


def test_a_term_translated_otherwise_is_missed():
    rows = [r for r in ROWS if "coseguro" in r["expected"].lower() and "coinsurance" in r["input"].lower()]
    assert len(rows) >= 3
    metric = glossary_metric()
    for row in rows:
        score = metric.score(real_sample(row, row["expected"].replace("coseguro", "coaseguro")
                                         .replace("Coseguro", "Coaseguro")))
        assert "coinsurance" in score.details["missed"]
        assert score.passed is False and score.value < 1.0
        assert "coinsurance → coseguro" in score.explanation


def test_a_wrong_translation_fails_the_case():
    row = next(r for r in ROWS if r["input"].startswith("A plan that features higher deductibles"))
    metric = glossary_metric()
    assert metric.score(real_sample(row, row["expected"])).passed is True
    swapped = row["expected"].replace("deducibles más elevados", "franquicias más elevadas")
    score = metric.score(real_sample(row, swapped))
    assert score.details["wrong_used"] == [{"term": "high deductible health plan", "wrong": "franquicia"}]
    assert score.passed is False
    assert score.value == 1.0  # the mandated term (HDHP) is still there; the wrong word alone fails it


def test_matching_rules(write):
    path = write("g.yaml", """
- source: deductible
  target: deducible
  wrong: [franquicia]
- source: out-of-pocket maximum
  target: [límite de gastos de bolsillo, desembolso máximo]
- source: pension
  target: pensión
- source: copayment
  target: copago
- source: in-network copayment
  target: copago dentro de la red
""")
    metric = glossary_metric(path)

    def run(source: str, output: str, **options):
        m = glossary_metric(path, **options) if options else metric
        return m.score(Sample(Case(id="c", input=source, expected=""), Output("c", "m", 0, output))).details

    # Source: word edges, any case, English plural; target: case-insensitive, Spanish plural.
    assert run("Your DEDUCTIBLES reset.", "Sus deducibles se reinician.")["hit"] == ["deductible"]
    assert run("The deductibility rules.", "Las reglas.")["triggered"] == []
    assert run("Out of pocket maximums", "los desembolsos máximos")["hit"] == ["out-of-pocket maximum"]
    # Accents matter: "pension" is not "pensión"; the -ión plural drops the accent.
    assert run("Pensions are income.", "Las pensiones son ingresos.")["hit"] == ["pension"]
    assert run("A pension is income.", "Una pension es un ingreso.")["missed"] == ["pension"]
    # Longest source match: the in-network term does not also trigger the plain one.
    assert run("In-network copayments are lower.", "Los copagos dentro de la red son menores.")["triggered"] == [
        "in-network copayment"]
    # Wrong translations; ignore_case off keeps case significant in the output.
    assert run("The deductible.", "La franquicia.")["wrong_used"] == [{"term": "deductible", "wrong": "franquicia"}]
    assert run("The deductible.", "El DEDUCIBLE.", ignore_case=False)["missed"] == ["deductible"]
    # No term in the source: nothing to check.
    nothing = metric.score(Sample(Case(id="c", input="Hello", expected=""), Output("c", "m", 0, "")))
    assert (nothing.value, nothing.passed, nothing.details["triggered"]) == (1.0, True, [])
    # Garbage and unicode output never crash.
    assert run("deductible", "\x00\ufffd🙂" * 1000)["missed"] == ["deductible"]


@pytest.mark.parametrize(("text", "match"), [
    ("- source: deductible\n  traget: deducible\n", r"g\.yaml:2:3: unknown key 'traget'.*did you mean 'target'"),
    ("- source: deductible\n", r"g\.yaml:1:\d+: entry 1: 'target'"),
    ("source: deductible\n", r"g\.yaml:1:1: a bilingual glossary is a non-empty YAML list"),
    ("- source: [deductible, 3]\n  target: x\n", r"g\.yaml:1:\d+: entry 1: 'source'"),
    ("- source: deductible\n  target: [deducible\n", r"malformed YAML"),
])
def test_bad_glossary_files_name_file_and_line(write, text, match):
    path = write("g.yaml", text)
    with pytest.raises(ConfigError, match=match):
        glossary_metric(path)


def test_missing_glossary_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build(glossary_translation, {"glossary": "nope.yaml"}, suite_dir=tmp_path)
