"""The self-contained HTML page of the weekly quality report (the data comes from ``tunebench.weekly``).

Invariants:
- One file, no network, no script at all: the CSS is inlined (the run report's stylesheet) and the
  Content-Security-Policy allows only that stylesheet, by hash, and ``data:`` images.
- Everything from the store (suite, model, case, metric and tag names) is untrusted: it reaches the page only
  through Jinja2 autoescaping or ``charts`` (which escapes too).
- The page is complete for an empty or one-run history: it then says so at the top instead of showing charts.
- Written atomically, like the run report: a temporary file renamed into place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import charts
from .html import _csp_hash, _environment, _static, write_atomically

if TYPE_CHECKING:
    from ..weekly import MetricTrend, SuiteHistory, WeeklyData

__all__ = ["render_weekly", "trend_svg"]


def trend_svg(trend: MetricTrend, history: SuiteHistory, data: WeeklyData) -> Any:
    """The trend chart of one metric (one point per run, the interval band, promotion flags)."""
    tags = {r.run_id: tuple(r.tags) for r in history.runs}
    for event in history.promotions:
        tags[event["run_id"]] = tuple(dict.fromkeys([*tags.get(event["run_id"], ()), event["tag"]]))
    points = [charts.TrendPoint(p.run_id, p.started_at, p.candidate, p.baseline, p.band, p.model,
                                tags.get(p.run_id, ())) for p in trend.points]
    return charts.trend_chart(points, metric=trend.metric, higher_is_better=trend.higher_is_better,
                              start=data.since, end=data.until)


def _strip(track: Any) -> list[tuple[str, str]]:
    """(css class, title) per period run of a case track: pass, fail or error."""
    names = {"P": ("pass", "pass"), "F": ("fail", "fail"), "E": ("fail", "error"), "-": ("missing", "not run")}
    return [(names[st][0], f"run {run_id}: {names[st][1]}") for run_id, st in track.statuses]


def render_weekly(data: WeeklyData, path: Path) -> Path:
    """Write the weekly page to ``path`` (atomically) and return ``path``."""
    from markupsafe import Markup

    css = _static("report.css")
    csp = "; ".join(["default-src 'none'", f"style-src {_csp_hash(css)}", "img-src data:", "base-uri 'none'",
                     "form-action 'none'"])
    template = _environment().get_template("weekly.html.j2")
    return write_atomically(path, template.generate(data=data, csp=csp, css=Markup(css), trend_svg=trend_svg,
                                                    strip=_strip, max_listed=_max_listed()))


def _max_listed() -> int:
    from ..weekly import MAX_LISTED

    return MAX_LISTED
