"""Reports of a real stored history in headless Chromium: the run report's verdict, charts and term marks, and
the weekly page. Screenshots of the top of each are saved under test-artifacts/."""

from __future__ import annotations

from datetime import timedelta

import pytest

from report.history import NOW, build_history, default_plans, run_report
from tunebench.report import render_html
from tunebench.store import Store
from tunebench.weekly import WeeklyConfig, weekly_report

pytestmark = pytest.mark.browser



@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reports")
    db = folder / "runs.duckdb"
    with Store.open(db) as store:
        support = build_history(db, store=store)
        build_history(db, store=store, suite="triage", kind="triage", n_cases=40, plans=default_plans()[2:])
        report = run_report(store, support[-1])
        run_page = render_html(report, folder / "run.html")
    weekly = weekly_report(WeeklyConfig(db=db, out=folder / "weekly.html", since=NOW - timedelta(days=5, hours=12),
                                        until=NOW))
    return run_page, weekly, report


def test_run_report_opens_on_the_verdict_with_visible_charts(page_watch, pages):
    run_page, _, report = pages
    page_watch.open(run_page)
    page = page_watch.page
    page_watch.assert_self_contained(run_page)
    verdict = page.locator("#verdict").bounding_box()
    assert verdict["y"] < 300 and verdict["height"] > 100  # above the fold in a 900 px window
    assert page.locator("#verdict-headline").inner_text().startswith(("Pass", "Fail"))
    boxes = page.evaluate("() => [...document.querySelectorAll('svg.chart')].map(s => { const r = "
                          "s.getBoundingClientRect(); return [r.width, r.height, s.querySelectorAll("
                          "'rect, circle').length]; })")
    assert len(boxes) >= 2 * len(report.metrics)
    assert all(w > 50 and h > 15 and marks > 0 for w, h, marks in boxes)
    page_watch.screenshot("run-report-top.png")


def test_terminology_marks_and_flip_badges_render(page_watch, pages):
    run_page, _, report = pages
    page_watch.open(run_page)
    page = page_watch.page
    page.select_option("#page-size", "100")
    page.wait_for_function("() => document.querySelectorAll('#case-rows tr[data-case-id]').length > 25")
    found = page.evaluate("""() => ({
        hits: [...document.querySelectorAll('#case-rows mark.term-hit')].map(m => m.textContent.toLowerCase()),
        bad: [...document.querySelectorAll('#case-rows mark.term-bad')].map(m => m.textContent.toLowerCase()),
        missing: [...document.querySelectorAll('#case-rows .term-line .chip.term-miss')].length,
        regressed: [...document.querySelectorAll('#case-rows tr')].filter(tr =>
            tr.querySelector('.badge.regressed')).map(tr => tr.dataset.caseId),
        scoreErrors: [...document.querySelectorAll('#case-rows .score-error')].map(e => e.textContent),
    })""")
    terms = {"deductible", "copay", "policyholder", "premium", "claim number", "out-of-pocket maximum"}
    assert found["hits"] and all(any(h.startswith(t.split()[0][:5]) for t in terms) for h in found["hits"])
    assert set(found["bad"]) == {"cheap", "customer"}
    assert found["missing"] > 0
    regressions = next(c for c in report.comparisons if c["metric"] == "terms")["regressions"]
    assert set(found["regressed"]) == {r["case_id"] for r in regressions}
    assert found["scoreErrors"] and all(e.startswith("output was an error: HTTP 503") for e in found["scoreErrors"])
    # The marks stay when the diff is switched off, and the text is still exactly the output.
    page.uncheck("#show-diff")
    page.wait_for_function("() => !document.querySelector('#case-rows del')")
    assert page.locator("#case-rows mark.term-bad").count() == len(found["bad"])
    page.select_option("#filter-flag", "=regressed:terms")
    page.wait_for_function("n => document.querySelectorAll('#case-rows tr[data-case-id]').length === n",
                           arg=len(regressions))
    assert page_watch.console_errors == [] and page_watch.page_errors == []


def test_weekly_page_loads_offline_without_errors(page_watch, pages):
    _, weekly, _ = pages
    page = page_watch.page
    page.goto(weekly.path.resolve().as_uri())
    page.wait_for_load_state("load")
    page_watch.assert_self_contained(weekly.path)
    assert page_watch.dialogs == []
    counts = page.evaluate("() => [...document.querySelectorAll('article.trend-card')].map(a => [a.dataset.points, "
                           "a.querySelectorAll('svg circle.point.candidate').length, "
                           "a.querySelectorAll('svg polygon.band').length, "
                           "Math.round(a.querySelector('svg').getBoundingClientRect().width)])")
    assert len(counts) == 3  # support: terms, rougeL; triage: intent
    assert all(int(points) == circles and bands == 1 and width > 300 for points, circles, bands, width in counts)
    assert page.locator("section.suite-section").count() == 2
    page_watch.screenshot("weekly-top.png")
