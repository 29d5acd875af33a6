"""The weekly quality report against real DuckDB histories (several runs over days, two suites), parsed.

Every number on the page is checked against the store: trend points against ``get_aggregates``, interval
bands against the stored comparisons, failing streaks and instability against a plain recomputation from
``get_scores``. Scenario cases (see ``report/history.py``) pin the definitions down.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import lxml.html
import pytest

from report.history import NOW, Plan, build_history, default_plans
from tunebench.errors import ConfigError, StoreError
from tunebench.store import Store
from tunebench.weekly import WeeklyConfig, parse_when, weekly_report

SINCE = NOW - timedelta(days=5, hours=12)  # run 0 of the support suite is before the period, runs 1–5 inside


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "runs.duckdb"
    with Store.open(path) as store:
        plans = default_plans()
        plans.append(Plan(NOW - timedelta(hours=12), "tuned-v2", ["base", "tuned-v2"], status="running"))
        support = build_history(path, store=store, plans=plans)
        triage_plans = [Plan(p.started_at, p.candidate, p.models, ["triage-prod"] if k == 3 else [])
                        for k, p in enumerate(default_plans()[2:])]
        triage = build_history(path, store=store, suite="triage", kind="triage", n_cases=40, plans=triage_plans)
        build_history(path, store=store, suite="legacy", plans=[Plan(NOW - timedelta(days=30), "t", ["b", "t"])])
    return path, support, triage


@pytest.fixture(scope="module")
def page(history, tmp_path_factory):
    path, _, _ = history
    out = tmp_path_factory.mktemp("weekly") / "weekly.html"
    result = weekly_report(WeeklyConfig(db=path, out=out, since=SINCE, until=NOW))
    return result, lxml.html.document_fromstring(out.read_text(encoding="utf-8"))


def _suite(doc, name):
    (section,) = [s for s in doc.xpath("//section[contains(@class,'suite-section')]") if s.get("data-suite") == name]
    return section


def _finished(store, suite):
    return [r for r in reversed(store.list_runs(suite_name=suite, until=NOW)) if r["status"] in ("completed", "failed")]


def test_result_and_overview(history, page):
    _path, _support, _triage = history
    result, doc = page
    assert result.suites == ["support-bot", "triage"]  # legacy has no run in the period
    assert result.runs == 5 + 4 and result.message is None
    assert (result.since, result.until) == (SINCE, NOW)
    assert doc.xpath("//*[@id='run-count']")[0].get("data-value") == "9"
    rows = doc.xpath("//section[@id='overview']//tbody/tr")
    assert [(r.get("data-suite"), r.xpath("./td[@data-field='runs']")[0].text) for r in rows] == [
        ("support-bot", "5"), ("triage", "4")]
    assert result.newly_failing == sum(
        int(r.xpath("./td[@data-field='newly-failing']")[0].text) for r in rows)


def test_runs_table_lists_finished_and_unfinished_runs(history, page):
    path, support, _ = history
    _, doc = page
    rows = _suite(doc, "support-bot").xpath(".//table[@class='runs-table']/tbody/tr")
    assert [r.get("data-run") for r in rows] == support[1:]  # run 0 is before the period
    assert [r.get("data-status") for r in rows] == ["completed"] * 5 + ["running"]
    with Store.open(path, read_only=True) as store:
        for row in rows[:5]:
            gates = store.get_gate_results(row.get("data-run"))
            cell = row.xpath("./td[@data-total]")[0]
            assert (int(cell.get("data-passed")), int(cell.get("data-total"))) == (
                sum(g["passed"] for g in gates), len(gates))


def test_trend_charts_have_one_point_per_run_with_stored_values_and_bands(history, page):
    path, _, _ = history
    _, doc = page
    with Store.open(path, read_only=True) as store:
        for suite in ("support-bot", "triage"):
            runs = [r for r in _finished(store, suite) if r["started_at"] >= SINCE]
            cards = _suite(doc, suite).xpath(".//article[@class='trend-card']")
            metrics = [m["metric"] for m in store.get_metrics(runs[-1]["run_id"])]
            assert [c.get("data-metric") for c in cards] == metrics
            for card in cards:
                metric = card.get("data-metric")
                (svg,) = card.xpath(".//*[local-name()='svg']")
                points = {c.get("data-run"): float(c.get("data-value"))
                          for c in svg.xpath(".//*[local-name()='circle']") if "candidate" in c.get("class")}
                base = {c.get("data-run"): float(c.get("data-value"))
                        for c in svg.xpath(".//*[local-name()='circle']") if "baseline" in c.get("class")}
                expected, expected_base, bands = {}, {}, {}
                for run in runs:
                    aggs = {(m, k): a for m, k, a in store.get_aggregates(run["run_id"])}
                    expected[run["run_id"]] = aggs[(run["candidate"], metric)].value
                    expected_base[run["run_id"]] = aggs[(run["baseline"], metric)].value
                    c = store.get_comparison(run["run_id"])["metrics"][metric]
                    shift = expected[run["run_id"]] - c["delta"]
                    bands[run["run_id"]] = (shift + c["ci_low"], shift + c["ci_high"])
                assert points == pytest.approx(expected) and base == pytest.approx(expected_base)
                assert len(points) == len(runs)  # one point per run
                whiskers = {w.get("data-run"): (float(w.get("data-low")), float(w.get("data-high")))
                            for w in svg.xpath(".//*[local-name()='line']") if w.get("class") == "whisker"}
                assert whiskers.keys() == bands.keys()
                for run_id, band in bands.items():
                    assert whiskers[run_id] == pytest.approx(band)
                assert len(list(svg.xpath(".//*[local-name()='polygon']"))) == 1  # one band across the contiguous runs


def _reference_tracks(store, suite):
    """Per (case, metric): [(run index, 'P'/'F')] over finished runs, from get_scores (majority over repeats)."""
    runs = _finished(store, suite)
    tracks: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    judged = set()
    for i, run in enumerate(runs):
        by = defaultdict(list)
        for cid, _, _, metric, score in store.get_scores(run["run_id"], model=run["candidate"]):
            by[(cid, metric)].append(score)
        for key, scores in by.items():
            passes = [s.passed for s in scores if s.passed is not None]
            if passes:
                judged.add(key[1])
                tracks[key].append((i, "P" if 2 * sum(passes) >= len(passes) else "F"))
            elif any(s.error for s in scores):
                tracks[key].append((i, "F"))
    return runs, {k: v for k, v in tracks.items() if k[1] in judged}


def test_newly_failing_cases_and_first_seen_failing_match_the_store(history, page):
    path, support, _ = history
    _, doc = page
    with Store.open(path, read_only=True) as store:
        for suite in ("support-bot", "triage"):
            runs, tracks = _reference_tracks(store, suite)
            first_period = next(i for i, r in enumerate(runs) if r["started_at"] >= SINCE)
            newly, still = {}, {}
            for key, seq in tracks.items():
                if seq[-1] != (len(runs) - 1, "F"):
                    continue
                k = len(seq) - 1
                while k > 0 and seq[k - 1][1] == "F":
                    k -= 1
                start = seq[k][0]
                new = start >= first_period and (k > 0 or seq[0][0] > 0)
                (newly if new else still)[key] = runs[start]["run_id"]
            section = _suite(doc, suite)
            shown = {(r.get("data-case-id"), r.get("data-metric")): r.get("data-first-failing")
                     for r in section.xpath(".//table[@class='newly-failing']/tbody/tr")}
            assert shown == newly
            shown_still = {(r.get("data-case-id"), r.get("data-metric")): r.get("data-first-failing")
                           for r in section.xpath(".//table[@class='still-failing-table']/tbody/tr")}
            assert shown_still == still
    # The scenario: case-newfail passed in runs 0–2 and fails from run 3; case-oldfail failed from run 0 (before the
    # period); case-007's candidate errored in run 5 (an error counts as failing).
    section = _suite(doc, "support-bot")
    (row,) = section.xpath(".//table[@class='newly-failing']/tbody/tr[@data-case-id='case-newfail']")
    assert (row.get("data-first-failing"), row.get("data-streak")) == (support[3], "3")
    assert row.xpath("./td")[3].text_content() == "2025-03-06 10:00 UTC"  # last passed: run 2
    assert [s.get("class") for s in row.xpath(".//span[@class='strip']/span")] == ["pass", "pass", "fail", "fail",
                                                                                  "fail"]
    (old,) = section.xpath(".//table[@class='still-failing-table']/tbody/tr[@data-case-id='case-oldfail']")
    assert old.get("data-first-failing") == support[0]
    assert section.xpath(".//table[@class='newly-failing']/tbody/tr[@data-case-id='case-007']")[0].get(
        "data-first-failing") == support[5]
    # rougeL has no threshold: an error output there is no "failure that never passed".
    assert not section.xpath(".//table[@class='newly-failing']/tbody/tr[@data-metric='rougeL']")


def test_most_unstable_cases(history, page):
    path, _, _ = history
    _, doc = page
    with Store.open(path, read_only=True) as store:
        runs, tracks = _reference_tracks(store, "support-bot")
    first_period = next(i for i, r in enumerate(runs) if r["started_at"] >= SINCE)
    changes = {}
    for key, seq in tracks.items():
        period = [st for i, st in seq if i >= first_period]
        n = sum(1 for a, b in itertools.pairwise(period) if a != b)
        if n >= 2:
            changes[key] = n
    rows = _suite(doc, "support-bot").xpath(".//table[@class='unstable']/tbody/tr")
    assert {(r.get("data-case-id"), r.get("data-metric")): int(r.get("data-changes")) for r in rows} == changes
    assert rows[0].get("data-case-id") == "case-flaky" and rows[0].get("data-changes") == "4"
    assert [int(r.get("data-changes")) for r in rows] == sorted(changes.values(), reverse=True)


def test_new_removed_cases_and_promotions(history, page):
    _path, support, triage = history
    _, doc = page
    section = _suite(doc, "support-bot")

    def ids(cls):
        return [c.text for c in section.xpath(f".//div[@class='{cls}']//li/code")]

    assert ids("new-cases") == ["case-added"] and ids("removed-cases") == ["case-removed"]
    assert ids("changed-cases") == []
    promos = [(r.get("data-tag"), r.get("data-run"), r.xpath("./td")[-1].text)
              for r in section.xpath(".//table[@class='promotions']/tbody/tr")]
    assert promos == [("production", support[2], "no (moved since)"), ("production", support[4], "yes"),
                      ("staging", support[5], "yes")]
    flagged = {f.get("data-run") for f in section.xpath(".//*[local-name()='path'][@class='flag']")}
    assert flagged == {support[2], support[4], support[5]}
    triage_promos = _suite(doc, "triage").xpath(".//table[@class='promotions']/tbody/tr")
    assert [(r.get("data-tag"), r.get("data-run")) for r in triage_promos] == [("triage-prod", triage[3])]


def test_page_is_self_contained_without_script(page):
    _, doc = page
    assert not doc.xpath("//script") and len(doc.xpath("//style")) == 1
    (csp,) = doc.xpath("//meta[@http-equiv='Content-Security-Policy']")
    policy = dict(part.strip().split(" ", 1) for part in csp.get("content").split(";"))
    assert policy["default-src"] == "'none'" and "script-src" not in policy
    refs = [(el.tag, v) for el in doc.iter() if isinstance(el.tag, str)
            for k, v in el.attrib.items() if k in ("src", "href", "srcset", "action", "data")]
    assert refs[0] == ("link", "data:,") and all(tag == "a" and v.startswith("#") for tag, v in refs[1:])


def test_suite_filter_and_hostile_names(tmp_path):
    db = tmp_path / "runs.duckdb"
    hostile = 'bot"><script>alert(1)</script>'
    with Store.open(db) as store:
        build_history(db, store=store, suite=hostile, plans=default_plans()[3:])
        build_history(db, store=store, suite="other", plans=default_plans()[4:])
    out = tmp_path / "w.html"
    result = weekly_report(WeeklyConfig(db=db, out=out, since=SINCE, until=NOW, suite=hostile))
    assert result.suites == [hostile] and result.runs == 3
    doc = lxml.html.document_fromstring(out.read_text(encoding="utf-8"))
    assert not doc.xpath("//script")
    assert [s.get("data-suite") for s in doc.xpath("//section[contains(@class,'suite-section')]")] == [hostile]
    assert doc.xpath("//h2[starts-with(@id,'suite-')]")[0].text_content() == hostile


def test_empty_history_writes_a_page_that_says_so(tmp_path):
    db = tmp_path / "runs.duckdb"
    Store.open(db).close()
    out = tmp_path / "w.html"
    result = weekly_report(WeeklyConfig(db=db, out=out, since=SINCE, until=NOW))
    assert result.runs == 0 and result.suites == [] and result.message.startswith("No runs of any suite started")
    doc = lxml.html.document_fromstring(out.read_text(encoding="utf-8"))
    assert doc.xpath("//*[@id='message']")[0].text_content() == result.message
    assert not doc.xpath("//section[contains(@class,'suite-section')]")


def test_one_run_history_shows_it_and_says_trends_need_two(tmp_path):
    db = tmp_path / "runs.duckdb"
    (run_id,) = build_history(db, plans=default_plans()[5:])
    out = tmp_path / "w.html"
    result = weekly_report(WeeklyConfig(db=db, out=out, since=SINCE, until=NOW))
    assert result.runs == 1 and "Only one run" in result.message
    doc = lxml.html.document_fromstring(out.read_text(encoding="utf-8"))
    assert "trends need at least two runs" in doc.xpath("//*[@id='message']")[0].text_content()
    section = _suite(doc, "support-bot")
    assert "need at least two runs" in section.xpath(".//p[contains(@class,'suite-message')]")[0].text_content()
    for card in section.xpath(".//article[@class='trend-card']"):
        circles = [c for c in card.xpath(".//*[local-name()='circle']") if "candidate" in c.get("class")]
        assert [c.get("data-run") for c in circles] == [run_id]
        assert len([w for w in card.xpath(".//*[local-name()='line']") if w.get("class") == "whisker"]) == 1


def test_only_unfinished_runs(tmp_path):
    db = tmp_path / "runs.duckdb"
    build_history(db, plans=[Plan(NOW - timedelta(days=1), "t", ["b", "t"], status="running")])
    result = weekly_report(WeeklyConfig(db=db, out=tmp_path / "w.html", since=SINCE, until=NOW))
    assert result.runs == 0 and "No run of any suite finished" in result.message


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(StoreError, match="there is no store at"):
        weekly_report(WeeklyConfig(db=tmp_path / "missing.duckdb", out=tmp_path / "w.html"))
    db = tmp_path / "runs.duckdb"
    Store.open(db).close()
    with pytest.raises(ConfigError, match="the period is empty"):
        weekly_report(WeeklyConfig(db=db, out=tmp_path / "w.html", since=NOW, until=NOW - timedelta(days=1)))
    assert not (tmp_path / "w.html").exists()


def test_parse_when():
    now = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    assert parse_when("7d", now=now) == now - timedelta(days=7)
    assert parse_when("24h", now=now) == now - timedelta(hours=24)
    assert parse_when(" 2W ", now=now) == now - timedelta(weeks=2)
    assert parse_when("2025-03-01", now=now) == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_when("2025-03-01T08:00:00+02:00", now=now) == datetime(2025, 3, 1, 6, tzinfo=UTC)
    with pytest.raises(ConfigError, match="--from 'last week' is neither a span nor a date") as info:
        parse_when("last week", now=now, option="--from")
    assert "7d" in info.value.hint
