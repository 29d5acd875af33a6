"""The inline SVG charts, parsed: every mark carries the number it draws, text is escaped, nothing is fetched."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import lxml.etree as etree
import pytest

from tunebench.report import charts

NS = {"s": "http://www.w3.org/2000/svg"}


def _parse(markup) -> etree._Element:
    root = etree.fromstring(str(markup).encode("utf-8"))  # well-formed XML, or this raises
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and "chart" in root.get("class").split()
    assert root.find("s:title", NS) is not None and root.get("role") == "img"
    assert not [a for el in root.iter() for a in el.attrib if a in ("style", "href") or a.startswith("on")]
    return root


def test_delta_bins_keep_every_case_and_put_ties_at_zero():
    rng = random.Random(1)
    deltas = [round(rng.uniform(-1, 1), 3) for _ in range(500)] + [0.0] * 40 + [1e-15] * 3
    bins = charts.delta_bins(deltas)
    assert sum(b.count for b in bins) == len(deltas)
    zero = [b for b in bins if b.low == b.high == 0.0]
    assert len(zero) == 1 and zero[0].count == sum(1 for d in deltas if abs(d) < charts.TIES) >= 43
    for b in bins:
        if b.low != b.high:
            inside = [d for d in deltas if abs(d) >= charts.TIES and b.low <= d <= b.high]
            assert b.count <= len(inside)
    assert [b.count for b in charts.delta_bins([1.0, -1.0, 0.0, 0.0, 1.0])] == [1, 2, 2]


def test_delta_histogram_bars_match_the_bins_and_colour_by_direction():
    deltas = [0.5, 0.25, -0.25, 0.0, 0.0, -1.0, 0.5]
    for higher in (True, False):
        root = _parse(charts.delta_histogram(deltas, higher_is_better=higher, candidate="tuned<x>",
                                             baseline="base", metric="m"))
        bars = root.findall(".//s:rect", NS)
        assert [int(b.get("data-count")) for b in bars] == [b.count for b in charts.delta_bins(deltas)]
        for bar in bars:
            value = float(bar.get("data-low"))
            kind = "same" if value == 0 else ("better" if (value > 0) == higher else "worse")
            assert kind in bar.get("class").split()
        # Untrusted names are escaped text, not markup.
        notes = " ".join(t.text for t in root.findall(".//s:text", NS))
        assert "tuned<x> better" in notes and "tuned<x> worse" in notes


def test_interval_bar_classes_follow_the_interval():
    root = _parse(charts.interval_bar(0.1, 0.05, 0.15, higher_is_better=True))
    assert "better" in root.find(".//s:rect", NS).get("class")
    assert float(root.find(".//s:circle", NS).get("data-value")) == 0.1
    assert "worse" in _parse(charts.interval_bar(0.1, 0.05, 0.15, higher_is_better=False)).get("class")
    assert "same" in _parse(charts.interval_bar(0.1, -0.05, 0.15, higher_is_better=True)).get("class")
    assert "empty" in _parse(charts.interval_bar(None, None, None, higher_is_better=True)).get("class")


def test_heatmap_cells_hold_the_matrix_and_the_difference_is_judged_by_the_diagonal():
    rows, cols = ["a", "<b>"], ["a", "<b>", "<invalid>"]
    matrix = [[3, -1, 0], [2, 1, -2]]
    root = _parse(charts.heatmap(rows, cols, matrix, title="t", diff=True))
    cells = root.findall(".//s:rect", NS)
    assert len(cells) == 6
    got = {(int(c.get("data-row")), int(c.get("data-col"))): (float(c.get("data-value")), c.get("class"))
           for c in cells}
    assert got[(0, 0)] == (3.0, "cell better")   # more on the diagonal
    assert got[(0, 1)] == (-1.0, "cell better")  # fewer confusions
    assert got[(1, 0)] == (2.0, "cell worse")    # more confusions
    assert got[(1, 2)] == (-2.0, "cell better")  # fewer invalid predictions
    assert got[(0, 2)][1] == "cell same"
    assert "<b>" in [t.text for t in root.findall(".//s:text", NS)]


def test_trend_chart_has_one_point_per_run_and_a_band():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    points = [charts.TrendPoint(f"run-{i}", start + timedelta(days=i), 0.5 + i / 20, 0.45,
                                (0.4 + i / 20, 0.6 + i / 20) if i != 2 else None, "tuned",
                                ("production",) if i == 3 else ())
              for i in range(6)]
    root = _parse(charts.trend_chart(points, metric="terms", higher_is_better=True, start=start,
                                     end=start + timedelta(days=7)))
    cand = root.findall(".//s:circle[@class='point candidate']", NS) + root.findall(
        ".//s:circle[@class='point candidate promoted']", NS)
    assert sorted(c.get("data-run") for c in cand) == [p.run_id for p in points]
    assert {c.get("data-run"): float(c.get("data-value")) for c in cand} == {p.run_id: p.value for p in points}
    # The run without an interval splits the band into two polygons; whiskers mark each interval.
    assert len(root.findall(".//s:polygon[@class='band']", NS)) == 2
    whiskers = root.findall(".//s:line[@class='whisker']", NS)
    assert [w.get("data-run") for w in whiskers] == [p.run_id for p in points if p.band]
    flags = root.findall(".//s:path[@class='flag']", NS)
    assert [f.get("data-run") for f in flags] == ["run-3"]
    # Later runs are further right; a higher value is higher up (smaller y).
    xs = [float(c.get("cx")) for c in sorted(cand, key=lambda c: c.get("data-run"))]
    assert xs == sorted(xs)
    ys = [float(c.get("cy")) for c in sorted(cand, key=lambda c: c.get("data-run"))]
    assert ys == sorted(ys, reverse=True)


@pytest.mark.parametrize("n", [0, 1])
def test_trend_chart_with_no_or_one_run(n):
    start = datetime(2025, 1, 1, tzinfo=UTC)
    points = [charts.TrendPoint("only", start + timedelta(days=1), 0.7, None, (0.6, 0.8))][:n]
    root = _parse(charts.trend_chart(points, metric="m", higher_is_better=True, start=start,
                                     end=start + timedelta(days=7)))
    assert len(root.findall(".//s:circle", NS)) == n
    assert len(root.findall(".//s:line[@class='whisker']", NS)) == n
