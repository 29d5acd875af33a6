"""The HTML report in a real headless Chromium: offline, interactive, inert against hostile text."""

from __future__ import annotations

import pytest

from tunebench.report import render_html

pytestmark = pytest.mark.browser

PAGE = 50


@pytest.fixture(scope="module")
def small(tmp_path_factory, report_factory):
    """120 cases over three models (one with a hostile name), hostile text in the first cases."""
    report, rows = report_factory(120)
    path = render_html(report, tmp_path_factory.mktemp("report") / "report.html")
    return path, report, rows


@pytest.fixture(scope="module")
def large(tmp_path_factory, report_factory):
    report, rows = report_factory(10_000, models=["base", "tuned"], hostile=False, stream=True)
    path = render_html(report, tmp_path_factory.mktemp("report") / "large.html")
    return path, report, rows


def _ids(page) -> list[str]:
    return page.eval_on_selector_all("#case-rows tr[data-case-id]", "rows => rows.map(r => r.dataset.caseId)")


def _wait_ids(page, expected: list[str]) -> None:
    page.wait_for_function(
        "ids => JSON.stringify([...document.querySelectorAll('#case-rows tr[data-case-id]')]"
        ".map(r => r.dataset.caseId)) === JSON.stringify(ids)", arg=expected, timeout=5000)


def _value(row, model: str, metric: str):
    score = row.scores[model][metric]
    return None if score.value is None else round(score.value, 4)


def _delta(row, metric: str):
    a, b = _value(row, "base", metric), _value(row, "tuned", metric)
    return None if a is None or b is None else b - a


def _default_order(rows) -> list[str]:
    regressed = [any(f.startswith("regressed") for f in r.flags) for r in rows]
    return [r.case.id for r, reg in zip(rows, regressed, strict=True) if reg] + [
        r.case.id for r, reg in zip(rows, regressed, strict=True) if not reg]


def _fails(row, model: str, metric: str | None = None) -> bool:
    output = row.outputs[model]
    if output.error and metric is None:
        return True
    scores = row.scores[model]
    names = [metric] if metric else list(scores)
    return any(scores[n].passed is False or (scores[n].value is None and scores[n].error) for n in names)


def test_loads_offline_without_errors(page_watch, small):
    path, _, rows = small
    page_watch.open(path)
    page = page_watch.page
    page_watch.assert_self_contained(path)
    assert _ids(page) == _default_order(rows)[:PAGE]
    assert page.text_content("#page-info") == "Page 1 of 3"
    page_watch.screenshot("report-top.png")


def test_regressions_come_first_and_pagination_walks_the_pages(page_watch, small):
    path, _, rows = small
    page_watch.open(path)
    page = page_watch.page
    order = _default_order(rows)
    assert "regressed" in page.get_attribute("#case-rows tr:first-child", "class")
    page.click("#page-next")
    _wait_ids(page, order[PAGE:2 * PAGE])
    assert page.text_content("#page-info") == "Page 2 of 3"
    page.click("#page-last")
    _wait_ids(page, order[2 * PAGE:])
    assert page.is_disabled("#page-next") and not page.is_disabled("#page-prev")
    page.click("#page-prev-bottom")
    _wait_ids(page, order[PAGE:2 * PAGE])
    page.select_option("#page-size", "100")
    _wait_ids(page, order[:100])


def test_clicking_a_sort_header_reorders_rows(page_watch, small):
    path, _, rows = small
    page_watch.open(path)
    page = page_watch.page

    def by(key, reverse=False):
        known = [(i, r) for i, r in enumerate(rows) if key(r) is not None]
        ordered = [r for _, r in sorted(known, key=lambda p: (key(p[1]) * (-1 if reverse else 1), p[0]))]
        return [r.case.id for r in ordered + [r for r in rows if key(r) is None]]

    # rougeL: higher is better, so the first click shows the worst delta (most negative) first.
    page.click("#case-table button.sort[data-sort='metric:0']")
    _wait_ids(page, by(lambda r: _delta(r, "rougeL"))[:PAGE])
    assert page.get_attribute("#case-table th:has(button[data-sort='metric:0'])", "aria-sort") == "ascending"
    page.click("#case-table button.sort[data-sort='metric:0']")
    _wait_ids(page, by(lambda r: _delta(r, "rougeL"), reverse=True)[:PAGE])
    # ter: lower is better, so worst first means the largest delta first.
    page.click("#case-table button.sort[data-sort='metric:2']")
    _wait_ids(page, by(lambda r: _delta(r, "ter"), reverse=True)[:PAGE])
    page.click("#case-table button.sort[data-sort='id']")
    _wait_ids(page, sorted(r.case.id for r in rows)[:PAGE])


def test_search_and_filters_narrow_the_rows(page_watch, small):
    path, _, rows = small
    page_watch.open(path)
    page = page_watch.page
    page.fill("#search", "case-00042")
    _wait_ids(page, ["case-00042"])
    page.fill("#search", "")
    _wait_ids(page, _default_order(rows)[:PAGE])

    page.select_option("#filter-tag", "critical")
    critical = [i for i in _default_order(rows) if "critical" in next(r for r in rows if r.case.id == i).case.tags]
    _wait_ids(page, critical[:PAGE])
    assert page.text_content("#case-count").startswith(f"Showing 1–{len(critical)} of {len(critical)} cases")

    page.select_option("#filter-tag", "")
    page.select_option("#filter-status", "fail:0")
    failing = [r.case.id for r in rows if _fails(r, "tuned", "rougeL")]
    _wait_ids(page, [i for i in _default_order(rows) if i in failing][:PAGE])

    page.select_option("#filter-status", "pass")
    passing = {r.case.id for r in rows if not _fails(r, "tuned")
               and any(s.passed for s in r.scores["tuned"].values())}
    _wait_ids(page, [i for i in _default_order(rows) if i in passing][:PAGE])

    page.select_option("#filter-status", "")
    page.select_option("#filter-flag", "^fixed")
    fixed = {r.case.id for r in rows if any(f.startswith("fixed:") for f in r.flags)}
    _wait_ids(page, [i for i in _default_order(rows) if i in fixed][:PAGE])
    page.fill("#search", "no such text anywhere")
    page.wait_for_selector("#case-rows tr.no-rows")


def test_outputs_rebuilt_in_the_browser_equal_the_model_text(page_watch, small):
    path, report, rows = small
    page_watch.open(path)
    page = page_watch.page
    page.uncheck("#show-diff")
    # Predicates are functions, not expressions: playwright evals expressions, which the page's CSP forbids.
    page.wait_for_function("() => !document.querySelector('#case-rows del')")
    texts = page.eval_on_selector_all(
        "#case-rows tr[data-case-id]",
        "rows => rows.map(r => [r.dataset.caseId, [...r.querySelectorAll('td.output-cell')].map(td => "
        "td.querySelector('.text') ? td.querySelector('.text').textContent : null)])")
    by_id = {r.case.id: r for r in rows}
    for case_id, outputs in texts:
        for model, shown in zip(report.models, outputs, strict=True):
            output = by_id[case_id].outputs[model]
            assert shown == (None if output.error else output.text)
    page.check("#show-diff")
    page.wait_for_selector("#case-rows del")


def test_injection_payloads_stay_inert(page_watch, small, payloads):
    path, _, rows = small
    page_watch.open(path)
    page = page_watch.page
    page.select_option("#page-size", "200")
    _wait_ids(page, _default_order(rows))
    page.hover("#case-rows tr:first-child td.output-cell")
    page.select_option("#filter-flag", "-")
    page.select_option("#filter-flag", "")
    found = page.evaluate(
        """() => ({
            injected: document.querySelectorAll('img, svg:not(.chart), iframe, textarea, b, object, embed').length,
            chartsInCases: document.querySelectorAll('#case-rows svg').length,
            handlers: [...document.querySelectorAll('*')].flatMap(el =>
                [...el.attributes].map(a => a.name).filter(n => n.toLowerCase().startsWith('on'))),
            scripts: document.scripts.length,
            styles: document.querySelectorAll('style').length,
            text: document.getElementById('case-rows').textContent,
            options: [...document.querySelectorAll('#filter-tag option, #filter-flag option')]
                .map(o => o.textContent).join('\\n'),
        })""")
    assert found["injected"] == 0 and found["chartsInCases"] == 0
    assert found["handlers"] == [] and found["scripts"] == 3 and found["styles"] == 1
    for payload in payloads:
        assert payload in found["text"]
    assert payloads[0] in found["options"]
    assert page_watch.dialogs == []
    page_watch.assert_self_contained(path)


def test_ten_thousand_cases_load_and_paginate(page_watch, large):
    path, _, rows = large
    page_watch.open(path)
    page = page_watch.page
    order = _default_order(rows)
    assert _ids(page) == order[:PAGE]
    assert page.text_content("#page-info") == "Page 1 of 200"
    page.click("#page-next")
    _wait_ids(page, order[PAGE:2 * PAGE])
    page.click("#page-last")
    _wait_ids(page, order[-(len(rows) % PAGE or PAGE):])
    page.fill("#search", "case-09999")
    _wait_ids(page, ["case-09999"])
    page_watch.assert_self_contained(path)
