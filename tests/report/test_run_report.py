"""The run report of stored runs (real store, metrics, paired statistics and gates), asserted on parsed HTML.

The reports are built by ``render.build_report`` from DuckDB stores written through the Store API (see
``history.py``); every number on the page is checked against the store or a reference implementation.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import lxml.html
import pytest

from report.history import LABELS, build_history, default_plans, run_report
from tunebench.metrics.terminology import find_term
from tunebench.report import reconstruct, render_html, render_markdown, report_json
from tunebench.report._format import fmt_duration, fmt_stamp
from tunebench.report.verdict import build_verdict
from tunebench.store import Store


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "runs.duckdb"
    with Store.open(path) as store:
        support = build_history(path, store=store)
        triage = build_history(path, store=store, suite="triage", kind="triage", n_cases=40,
                               plans=default_plans()[2:])
    store = Store.open(path, read_only=True)
    yield store, support[-1], triage[-1]
    store.close()


def _render(report, tmp_path, name="report.html"):
    path = render_html(report, tmp_path / name)
    return lxml.html.document_fromstring(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def support_page(stored, tmp_path_factory):
    store, run_id, _ = stored
    report = run_report(store, run_id)
    return report, _render(report, tmp_path_factory.mktemp("support"))


@pytest.fixture(scope="module")
def triage_page(stored, tmp_path_factory):
    store, _, run_id = stored
    report = run_report(store, run_id, "triage")
    return report, _render(report, tmp_path_factory.mktemp("triage"))


def _case_records(doc) -> list[dict]:
    return json.loads(doc.xpath("//script[@id='cases']")[0].text)


def test_verdict_comes_first_with_every_gate_and_its_numbers(stored, support_page):
    store, run_id, _ = stored
    report, doc = support_page
    main = doc.xpath("//main")[0]
    assert main[0].get("id") == "verdict"  # the first thing in the page body after the run header
    verdict = build_verdict(report)
    assert doc.xpath("//*[@id='verdict-headline']")[0].text_content() == verdict.headline
    assert doc.xpath("//*[@id='verdict-paragraph']")[0].text_content() == verdict.paragraph
    assert main[0].get("data-status") == verdict.status
    stored_gates = store.get_gate_results(run_id)  # what `tunebench run` stored for this run
    rows = doc.xpath("//section[@id='gates']//tbody/tr")
    assert [(r.xpath("./th")[0].text.strip(), r.get("data-passed") == "true") for r in rows] == [
        (g["name"], g["passed"]) for g in stored_gates]
    assert [r.get("data-kind") for r in rows] == [g["kind"] for g in stored_gates]
    for row, gate in zip(rows, stored_gates, strict=True):
        assert row.xpath(".//td[@class='gate-message']")[0].text_content() == gate["message"]
        keys = [div.get("data-key") for div in row.xpath(".//dl[@class='numbers']/div")]
        assert keys == [k.replace("_", " ") for k, v in gate["numbers"].items() if v is not None]
        flips = [li.xpath("./code")[0].text for li in row.xpath(".//ul[@class='flips']/li")]
        assert flips == [f["case_id"] for f in gate["flips"]]
    failing = [g["name"] for g in stored_gates if not g["passed"]]
    assert verdict.status == ("fail" if failing else "pass")
    for name in failing:
        assert name in verdict.paragraph


def test_metric_cards_show_the_stored_paired_comparison(stored, support_page):
    store, run_id, _ = stored
    _, doc = support_page
    comparison = store.get_comparison(run_id)["metrics"]
    cards = doc.xpath("//section[@id='metrics']/article")
    assert [c.get("data-metric") for c in cards] == list(comparison)
    for card in cards:
        c = comparison[card.get("data-metric")]

        def field(name, card=card):
            return card.xpath(f".//*[@data-field='{name}']")[0]

        assert float(field("delta").get("data-value")) == pytest.approx(c["delta"], abs=1e-12)
        ci = field("ci")
        assert (float(ci.get("data-low")), float(ci.get("data-high"))) == pytest.approx((c["ci_low"], c["ci_high"]))
        assert field("n").text_content() == str(c["n"])
        assert field("wtl").text_content() == f"{c['wins']} / {c['ties']} / {c['losses']}"
        assert field("verdict").text_content() == c["verdict"]
        bar = card.xpath(".//figure[contains(@class,'interval-figure')]//*[local-name()='circle']")[0]
        assert float(bar.get("data-value")) == pytest.approx(c["delta"])


def test_delta_histogram_counts_every_paired_case(stored, support_page):
    store, run_id, _ = stored
    report, doc = support_page
    for card in doc.xpath("//section[@id='metrics']/article"):
        metric = card.get("data-metric")
        values = {}
        for model in (report.baseline, report.candidate):
            values[model] = {cid: s.value for cid, _, rep, _, s in store.get_scores(run_id, model, metric)
                             if rep == 0 and s.value is not None}
        deltas = [values[report.candidate][c] - values[report.baseline][c]
                  for c in values[report.baseline] if c in values[report.candidate]]
        bars = card.xpath(".//figure[contains(@class,'histogram-figure')]//*[local-name()='rect']")
        assert sum(int(b.get("data-count")) for b in bars) == len(deltas)
        worse = sum(1 for d in deltas if d < -1e-12)
        better = sum(1 for d in deltas if d > 1e-12)
        caption = {k: card.xpath(f".//*[@data-field='n-{k}']")[0].text_content().split(" ")[0]
                   for k in ("worse", "same", "better")}
        assert caption == {"worse": str(worse), "same": str(len(deltas) - worse - better), "better": str(better)}


def test_confusion_matrices_match_scikit_learn(stored, triage_page):
    from sklearn.metrics import confusion_matrix

    store, _, run_id = stored
    report, doc = triage_page
    (card,) = doc.xpath("//article[@data-metric='intent']")
    maps = card.xpath(".//figure[contains(@class,'heatmap-figure')]")
    assert [f.xpath("./figcaption")[0].text_content() for f in maps] == [
        report.baseline, report.candidate, f"{report.candidate} − {report.baseline}"]
    labels = [*LABELS, "<invalid>"]
    matrices = []
    for model, figure in zip((report.baseline, report.candidate), maps, strict=False):
        pairs = [(s.details["gold"], s.details["predicted"] or "<invalid>")
                 for _, _, _, _, s in store.get_scores(run_id, model, "intent") if s.error is None]
        expected = confusion_matrix([g for g, _ in pairs], [p for _, p in pairs], labels=labels)[: len(LABELS)]
        cells = figure.xpath(".//*[local-name()='rect']")
        got = [[0.0] * len(labels) for _ in LABELS]
        for cell in cells:
            got[int(cell.get("data-row"))][int(cell.get("data-col"))] = float(cell.get("data-value"))
        assert got == expected.tolist()
        matrices.append(expected)
    diff = {(int(c.get("data-row")), int(c.get("data-col"))): float(c.get("data-value"))
            for c in maps[2].xpath(".//*[local-name()='rect']")}
    assert diff == {(i, j): float(matrices[1][i][j] - matrices[0][i][j])
                    for i in range(len(LABELS)) for j in range(len(labels))}
    gain = int(sum(matrices[1][i][i] - matrices[0][i][i] for i in range(len(LABELS))))
    assert card.xpath(".//*[@data-field='diagonal-gain']")[0].text_content() == f"({gain:+d} correct)"


def _holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment, written out from its definition (the reference for the page)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def test_tag_table_lists_every_tag_with_holm_adjusted_p(stored, triage_page):
    store, _, run_id = stored
    _report, doc = triage_page
    by_tag = store.get_comparison(run_id)["metrics"]["intent"]["by_tag"]
    rows = doc.xpath("//article[@data-metric='intent']//table[@class='tag-table']/tbody/tr")
    assert sorted(r.get("data-tag") for r in rows) == sorted(t["tag"] for t in by_tag)
    holm = dict(zip([t["tag"] for t in by_tag], _holm([t["p_value"] for t in by_tag]), strict=True))
    for row in rows:
        tag = next(t for t in by_tag if t["tag"] == row.get("data-tag"))
        assert float(row.xpath("./td[@data-field='p_holm']")[0].get("data-value")) == pytest.approx(holm[tag["tag"]])
        assert float(row.xpath("./td[@data-field='delta']")[0].get("data-value")) == pytest.approx(tag["delta"])
        assert row.xpath("./td[@data-field='n']")[0].text_content() == str(tag["n"])
        assert row.xpath("./td[@data-field='significant']")[0].text_content() == ("yes" if holm[tag["tag"]] < 0.05
                                                                                   else "no")
    deltas = [float(r.xpath("./td[@data-field='delta']")[0].get("data-value")) for r in rows]
    assert deltas == sorted(deltas)  # worst first (higher is better)


def test_terminology_hits_and_misses_are_marked_as_the_metric_counted_them(stored, support_page):
    store, run_id, _ = stored
    report, doc = support_page
    records = {r["id"]: r for r in _case_records(doc)}
    scores = {(cid, model): s for cid, model, rep, metric, s in store.get_scores(run_id, metric="terms") if rep == 0}
    marked = bad_marked = 0
    for (cid, model), score in scores.items():
        entry = records[cid]["o"][report.models.index(model)]
        if score.error:
            assert "k" not in entry and entry["e"].startswith("HTTP 503")
            continue
        text = reconstruct(entry["d"])[1]
        k = entry.get("k", {})
        assert k.get("m", []) == score.details["missing"]
        hits = [t for t in score.details["required"] if t not in score.details["missing"]]
        for start, end in k.get("h", []):
            assert any((start, end) in find_term(t, text) for t in hits)
            marked += 1
        for term in hits:  # every occurrence of a term that counted is marked
            assert all([a, b] in k["h"] for a, b in find_term(term, text))
        bad = [*score.details["forbidden_used"], *score.details["deprecated_used"]]
        for start, end in k.get("x", []):
            assert any((start, end) in find_term(t, text) for t in bad)
            bad_marked += 1
        assert ("forbidden: cheap" in k.get("u", [])) == ("cheap" in score.details["forbidden_used"])
    assert marked > 20 and bad_marked >= 2


def test_flags_and_errors_reach_the_case_records(stored, support_page):
    store, run_id, _ = stored
    report, doc = support_page
    records = {r["id"]: r for r in _case_records(doc)}
    comparison = store.get_comparison(run_id)["metrics"]["terms"]
    regressed = {r["id"] for r in records.values() if "regressed:terms" in r.get("f", [])}
    assert regressed == {f["case_id"] for f in comparison["regressions"]}
    fixed = {r["id"] for r in records.values() if "fixed:terms" in r.get("f", [])}
    assert fixed == {f["case_id"] for f in comparison["fixes"]}
    cand = report.models.index(report.candidate)
    errored = {cid for cid, r in records.items() if r["o"][cand].get("e")}
    assert errored == {o.case_id for o in store.iter_outputs(run_id, model=report.candidate) if o.error}
    for cid in errored:
        scores = records[cid]["o"][cand]["s"]
        assert all(s[0] is None and s[2].startswith("output was an error: HTTP 503") for s in scores)


def test_markdown_and_json_of_a_stored_run_agree_with_the_page(support_page):
    report, doc = support_page
    verdict = build_verdict(report)
    data = report_json(report)
    assert data["verdict"]["paragraph"] == verdict.paragraph == doc.xpath("//*[@id='verdict-paragraph']")[0].text
    assert [g["name"] for g in data["gates"]] == [g["name"] for g in report.gates]
    json.dumps(data, allow_nan=False)
    text = render_markdown(report)
    assert f"**{verdict.headline}**" in text
    for gate in report.gates:
        assert ("✅" if gate["passed"] else "❌") + f" **{gate['name']}**" in text
    table = [line for line in text.splitlines() if line.startswith("| terms")]
    c = next(c for c in report.comparisons if c["metric"] == "terms")
    assert f"({'+' if c['ci_low'] > 0 else '−'}{abs(c['ci_low']):.3f}…" in table[0]
    assert not any(math.isnan(v) for v in (c["delta"], c["ci_low"], c["ci_high"]))


def test_header_shows_the_stored_times_in_utc_and_how_long_the_run_took(stored, support_page):
    store, run_id, _ = stored
    report, doc = support_page
    run = store.get_run(run_id)
    started, finished = run["started_at"], run["finished_at"]
    shown = doc.xpath("//*[@id='started-at']/time")[0]
    assert datetime.fromisoformat(shown.get("datetime")) == started
    assert shown.text == started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    done = doc.xpath("//*[@id='finished-at']/time")[0]
    assert datetime.fromisoformat(done.get("datetime")) == finished
    took = doc.xpath("//*[@id='took']")[0].text
    seconds = (finished - started).total_seconds()
    assert seconds > 0 and took == fmt_duration(started.isoformat(), finished.isoformat())
    assert f"took {took}" in render_markdown(report)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.04, "0.0 s"), (1.74, "1.7 s"), (9.94, "9.9 s"), (12.4, "12 s"), (59.6, "1 min 00 s"), (185, "3 min 05 s"),
    (7630, "2 h 07 min"),
])
def test_durations_read_like_a_person_would_say_them(seconds, text):
    start = datetime(2026, 1, 31, 23, 59, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert fmt_duration(start.isoformat(), (start + timedelta(seconds=seconds)).isoformat()) == text
    assert fmt_stamp(start.isoformat()) == "2026-02-01 04:59:30 UTC"


def test_a_report_without_times_says_so_instead_of_failing():
    assert fmt_stamp("") == fmt_duration("2026-01-01T00:00:00", None) == fmt_duration("soon", "later") == "—"
    assert fmt_stamp("not a time") == "not a time"


def test_a_run_that_never_finished_can_still_be_reported(tmp_path):
    from tunebench.api import ReportConfig, report_run
    from tunebench.records import Case

    db = tmp_path / "s.duckdb"
    with Store.open(db) as store:
        store.start_run({"run_id": "r1", "suite_name": "s", "suite_hash": "h", "status": "running",
                         "baseline": "base", "candidate": "tuned"})
        store.add_models("r1", [{"model": m, "runner": "recorded", "identity": {}, "identity_hash": m}
                                for m in ("base", "tuned")])
        store.add_cases("r1", [Case(id="c1", input="<b>hi</b>", expected="hello")])
    path = report_run(ReportConfig("latest", db=db, report=tmp_path / "out" / "r.html"))
    doc = lxml.html.document_fromstring(path.read_text(encoding="utf-8"))
    assert doc.xpath("//*[@id='finished-at']")[0].text == "not finished" and not doc.xpath("//*[@id='took']")
    assert [r["id"] for r in _case_records(doc)] == ["c1"] and not doc.xpath("//b")
    assert "not finished" in path.with_suffix(".md").read_text() and json.loads(path.with_suffix(".json").read_text())
