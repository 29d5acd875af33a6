"""The verdict paragraph, on constructed reports: gates, tallies, spelled-out changes, flips, errors."""

from __future__ import annotations

import re

import pytest

from tunebench.records import Aggregate
from tunebench.report import MetricInfo, RunReport, render_markdown, report_json
from tunebench.report.verdict import build_verdict, classify, describe_change


def _comparison(metric: str, base: float, cand: float, low: float, high: float, verdict: str, *,
                higher: bool = True, regressions: int = 0, fixes: int = 0, unstable: tuple[str, ...] = ()) -> dict:
    return {"metric": metric, "higher_is_better": higher, "n": 200, "mean_baseline": base, "mean_candidate": cand,
            "delta": cand - base, "ci_low": low, "ci_high": high, "confidence": 0.95, "wins": 10, "ties": 5,
            "losses": 3, "significant": verdict != "no clear difference", "verdict": verdict,
            "regressions_n": regressions, "fixes_n": fixes, "regressions": [], "fixes": [], "by_tag": [],
            "unstable": list(unstable), "p_value": 0.01}


def _report(comparisons: list[dict], gates: list[dict] | None = None, *, metrics: list[MetricInfo] | None = None,
            errors: dict[str, int] | None = None, aggregates: dict | None = None) -> RunReport:
    metrics = metrics or [MetricInfo(c["metric"], "x", "", c["higher_is_better"], None) for c in comparisons]
    return RunReport(
        run_id="r", suite_name="s", description="", started_at="t", finished_at=None, tunebench_version="0",
        git_commit=None, models=["base", "tuned"], baseline="base", candidate="tuned", metrics=metrics,
        aggregates=aggregates or {}, errors=errors or {"base": 0, "tuned": 0}, cases=[],
        comparisons=comparisons, gates=gates or [],
    )


FIVE = [
    _comparison("terminology", 0.61, 0.88, 0.21, 0.33, "better", regressions=2, fixes=40),
    _comparison("rougeL", 0.40, 0.38, -0.035, -0.005, "worse", regressions=7, fixes=3),
    _comparison("bleu", 30.0, 34.5, 2.1, 6.9, "better"),
    _comparison("ter", 55.0, 50.0, -8.0, -2.0, "better", higher=False),
    _comparison("exact", 0.20, 0.30, 0.04, 0.16, "better"),
]


def test_the_issue_example_reads_as_written():
    verdict = build_verdict(_report(FIVE))
    assert verdict.status == "none" and verdict.gates_total == 0
    assert "tuned beats base on 4 of 5 metrics and is worse on rougeL" in verdict.paragraph
    assert "terminology improved from 61% to 88% (+27 points, 95% CI +21…+33)" in verdict.paragraph
    assert "7 cases regressed on rougeL and 2 on terminology (pass → fail), 43 were fixed" in verdict.paragraph
    assert "see" not in verdict.paragraph or "case table below" in verdict.paragraph
    assert verdict.headline == "No gates — better on 4 of 5, worse on 1"


def test_worse_metrics_are_spelled_out_first_then_the_clearest_gains():
    paragraph = build_verdict(_report(FIVE)).paragraph
    spelled = re.findall(r"(\w+) (improved|got worse) from", paragraph)
    assert spelled[0] == ("rougeL", "got worse")
    assert len(spelled) == 3  # HIGHLIGHTS
    # Values outside 0–1 keep their unit: BLEU and TER are not percentages.
    assert "from 40.0% to 38.0% (−2.0 points, 95% CI −3.5…−0.5)" in paragraph


def test_lower_is_better_metric_improves_when_it_goes_down():
    comparison = _comparison("ter", 55.0, 50.0, -8.0, -2.0, "better", higher=False)
    text = describe_change(comparison, higher_is_better=False)
    assert text == "ter improved from 55.00 to 50.00 (−5.000, 95% CI −8.000…−2.000)"


@pytest.mark.parametrize(("verdict", "expected"), [
    ("better", "better"), ("worse", "worse"), ("no clear difference", "unclear"), ("improved", "better"),
    ("regressed", "worse"), (None, "unclear"),
])
def test_classify_reads_verdict_words(verdict, expected):
    assert classify({"verdict": verdict}) == expected


def test_gates_lead_the_paragraph_and_set_the_status():
    gates = [{"name": "terms floor", "passed": True, "message": "ok"},
             {"name": "no regressions", "passed": False, "message": "7 > 0"},
             {"name": "rouge non-inferior", "passed": False, "message": "x"}]
    verdict = build_verdict(_report(FIVE, gates))
    assert verdict.status == "fail" and (verdict.gates_passed, verdict.gates_total) == (1, 3)
    assert verdict.headline == "Fail — 2 of 3 gates fail"
    assert verdict.paragraph.startswith("2 of 3 gates fail: no regressions and rouge non-inferior. tuned beats")
    passing = build_verdict(_report(FIVE, gates[:1]))
    assert passing.status == "pass" and passing.headline == "Pass — the gate passes"
    assert build_verdict(_report(FIVE, [gates[0], gates[0]])).paragraph.startswith("Both gates pass.")


def test_no_significant_difference_names_the_largest_change_as_noise():
    comparisons = [_comparison("terms", 0.70, 0.74, -0.02, 0.10, "no clear difference"),
                   _comparison("rougeL", 0.40, 0.405, -0.05, 0.06, "no clear difference")]
    paragraph = build_verdict(_report(comparisons)).paragraph
    verdict = build_verdict(_report(comparisons))
    assert verdict.paragraph == paragraph and verdict.headline == "No gates — no clear difference on 2 metrics"
    assert paragraph.startswith("tuned and base show no clear difference on any of the 2 metrics; the largest "
                                "change, terms changed from 70.0% to 74.0% (+4.0 points, 95% CI −2.0…+10.0), "
                                "has an interval that includes zero.")


def test_without_paired_statistics_the_paragraph_says_untested():
    metrics = [MetricInfo("acc", "accuracy", "", True, None), MetricInfo("latency", "latency", "", False, None)]
    aggregates = {"base": {"acc": Aggregate(0.5, 10), "latency": Aggregate(100.0, 10)},
                  "tuned": {"acc": Aggregate(0.6, 10), "latency": Aggregate(120.0, 10)}}
    verdict = build_verdict(_report([], metrics=metrics, aggregates=aggregates))
    assert verdict.paragraph == ("tuned is ahead of base on 1 of 2 metrics, behind on latency (no paired statistics, "
                                 "so these differences are untested). No gates were evaluated.")


def test_unstable_cases_and_candidate_errors_are_counted():
    comparisons = [_comparison("terms", 0.6, 0.7, 0.01, 0.2, "better", unstable=("a", "b")),
                   _comparison("rougeL", 0.4, 0.41, -0.01, 0.03, "no clear difference", unstable=("b", "c"))]
    paragraph = build_verdict(_report(comparisons, errors={"base": 1, "tuned": 5})).paragraph
    assert "3 cases gave different pass/fail results across repeats (marked unstable)." in paragraph
    assert paragraph.endswith("tuned returned errors on 5 cases (base: 1). No gates were evaluated.")


def test_missing_and_non_finite_numbers_are_left_out():
    broken = {"metric": "m", "delta": float("nan"), "ci_low": None, "verdict": "better"}
    partial = {"metric": "p", "delta": 0.1, "verdict": "better"}  # no means, no interval
    verdict = build_verdict(_report([broken, partial], metrics=[MetricInfo("m", "x", "", True, None),
                                                                MetricInfo("p", "x", "", True, None)]))
    assert "nan" not in verdict.paragraph.lower() and "None" not in verdict.paragraph
    assert "tuned beats base on the one metric; p improved (+0.100)." in verdict.paragraph


def test_markdown_and_json_carry_the_verdict_and_gates():
    gates = [{"name": "no regressions", "kind": "max_regressions", "passed": False, "message": "7 > 0",
              "numbers": {"regressions": 7, "max": 0}, "flips": []}]
    report = _report(FIVE, gates)
    verdict = build_verdict(report)
    data = report_json(report)
    assert data["verdict"] == verdict.to_json() and data["gates"] == gates
    text = render_markdown(report)
    lines = text.splitlines()
    headline = next(i for i, line in enumerate(lines) if line.startswith("❌ **"))
    assert lines[headline] == "❌ **Fail — 1 of 1 gate fails**"
    # The paragraph comes right after the headline, Markdown-escaped (so "+27" is "\+27").
    unescaped = re.sub(r"\\(.)", r"\1", lines[headline + 2])
    assert unescaped == verdict.paragraph
    assert lines[headline + 4] == "- ❌ **no regressions** — 7 &gt; 0"
    assert headline < next(i for i, line in enumerate(lines) if line.startswith("| metric"))
