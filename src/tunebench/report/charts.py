"""Hand-written inline SVG charts for the reports: no JavaScript, no fonts or images to fetch, no dependency.

Invariants:
- Every function returns ``markupsafe.Markup`` holding one ``<svg class="chart …">`` element; every piece of
  text in it (metric, model, tag and label names are untrusted) goes through ``markupsafe.escape``.
- Colours come from CSS classes (``better``, ``worse``, ``same``, ``band``, …) defined in ``report.css``, so
  the charts follow the page's light/dark theme and need no inline ``style`` attribute (the page's CSP forbids
  those). Intensities are ``fill-opacity`` presentation attributes.
- Marks carry ``data-*`` attributes with the numbers they draw (count, value, run id), so tests and readers
  can check a chart against the data without measuring pixels.
- Pure functions of their arguments: the same data always gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

from ._format import fmt_num, fmt_signed

__all__ = ["Bin", "TrendPoint", "delta_bins", "delta_histogram", "distribution_histogram", "heatmap",
           "interval_bar", "trend_chart", "value_bins"]

TIES = 1e-12
"""Per-case deltas smaller than this (in absolute value) count as ties."""


def _n(value: float) -> str:
    """A coordinate: one decimal, no trailing ``.0`` noise in the common case."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _attr(value: object) -> str:
    return str(escape(str(value)))


def _svg(width: float, height: float, cls: str, label: str, body: list[str]) -> Markup:
    head = (f'<svg class="chart {cls}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_n(width)} {_n(height)}" '
            f'width="{_n(width)}" height="{_n(height)}" role="img" aria-label="{_attr(label)}">'
            f"<title>{escape(label)}</title>")
    return Markup(head + "".join(body) + "</svg>")


def _direction(delta: float, higher_is_better: bool) -> str:
    if abs(delta) < TIES:
        return "same"
    return "better" if (delta > 0) == higher_is_better else "worse"


# ---- interval --------------------------------------------------------------------------------------------


def interval_bar(delta: float | None, low: float | None, high: float | None, *, higher_is_better: bool,
                 scale: tuple[float, float] | None = None, width: float = 260, height: float = 40,
                 label: str = "") -> Markup:
    """The paired interval as a horizontal bar with the point estimate and the zero line.

    ``scale`` fixes the axis (to compare several bars); by default it spans the interval and zero. The bar's
    class says whether the whole interval lies on the better side (``better``), the worse side (``worse``) or
    straddles zero (``same``).
    """
    if delta is None or low is None or high is None or not all(map(math.isfinite, (delta, low, high))):
        return _svg(width, height, "interval empty", label or "no interval",
                    [f'<text x="{_n(width / 2)}" y="{_n(height / 2 + 4)}" text-anchor="middle" '
                     'class="axis-label">no interval</text>'])
    lo, hi = scale if scale else (min(low, 0.0), max(high, 0.0))
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.06 * span, hi + 0.06 * span
    pad = 6.0 if height < 34 else 44.0

    def x(v: float) -> float:
        return pad + (v - lo) / (hi - lo) * (width - 2 * pad)

    if low > 0 or high < 0:
        cls = "better" if (low > 0) == higher_is_better else "worse"
    else:
        cls = "same"
    mid = height / 2 if height < 34 else 14.0
    body = [
        f'<line class="zero" x1="{_n(x(0))}" x2="{_n(x(0))}" y1="2" y2="{_n(mid * 2 - 2)}"/>',
        f'<rect class="ci {cls}" x="{_n(x(low))}" y="{_n(mid - 4)}" width="{_n(max(x(high) - x(low), 1.5))}" '
        f'height="8" rx="2" data-low="{low!r}" data-high="{high!r}"/>',
        f'<circle class="estimate {cls}" cx="{_n(x(delta))}" cy="{_n(mid)}" r="4" data-value="{delta!r}">'
        f"<title>{escape(f'Δ {fmt_signed(delta)} (CI {fmt_signed(low)} … {fmt_signed(high)})')}</title></circle>",
    ]
    if height >= 34:  # room for the axis: the interval's ends and zero
        y_text = height - 2
        body.append(f'<text class="axis-label" x="{_n(x(low))}" y="{_n(y_text)}" text-anchor="end">'
                    f"{escape(fmt_signed(low))}</text>")
        body.append(f'<text class="axis-label" x="{_n(x(high))}" y="{_n(y_text)}">{escape(fmt_signed(high))}</text>')
        if x(0) < x(low) - 24 or x(0) > x(high) + 24:
            body.append(f'<text class="axis-label" x="{_n(x(0))}" y="{_n(y_text)}" text-anchor="middle">0</text>')
    text = label or f"Δ {fmt_signed(delta)}, interval {fmt_signed(low)} to {fmt_signed(high)}"
    return _svg(width, height, f"interval {cls}", text, body)


# ---- histograms -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bin:
    """One bar: values in [low, high) (a single value when low == high) and how many cases fell in it."""

    low: float
    high: float
    count: int


def delta_bins(deltas: Sequence[float], *, bins_per_side: int = 10, max_distinct: int = 11) -> list[Bin]:
    """Bins for per-case deltas: one per distinct value when there are few (0/1 metrics give −1, 0, +1);
    otherwise ties in a bar of their own at zero and ``bins_per_side`` equal bins on either side."""
    if not deltas:
        return []
    distinct = sorted(set(0.0 if abs(d) < TIES else d for d in deltas))
    if len(distinct) <= max_distinct:
        counts: dict[float, int] = dict.fromkeys(distinct, 0)
        for d in deltas:
            counts[0.0 if abs(d) < TIES else d] += 1
        return [Bin(v, v, c) for v, c in counts.items()]
    top = max(abs(d) for d in deltas)
    step = top / bins_per_side
    neg = [0] * bins_per_side
    pos = [0] * bins_per_side
    ties = 0
    for d in deltas:
        if abs(d) < TIES:
            ties += 1
        elif d < 0:
            neg[min(int(-d / step), bins_per_side - 1)] += 1
        else:
            pos[min(int(d / step), bins_per_side - 1)] += 1
    out = [Bin(-(i + 1) * step, -i * step, neg[i]) for i in reversed(range(bins_per_side))]
    out.append(Bin(0.0, 0.0, ties))
    out += [Bin(i * step, (i + 1) * step, pos[i]) for i in range(bins_per_side)]
    return out


def value_bins(values: Sequence[float], *, bins: int = 20, max_distinct: int = 11) -> list[Bin]:
    """Bins for a score distribution: one per distinct value when there are few, else ``bins`` equal bins."""
    if not values:
        return []
    distinct = sorted(set(values))
    if len(distinct) <= max_distinct:
        counts = dict.fromkeys(distinct, 0)
        for v in values:
            counts[v] += 1
        return [Bin(v, v, c) for v, c in counts.items()]
    lo, hi = distinct[0], distinct[-1]
    step = (hi - lo) / bins
    counts_list = [0] * bins
    for v in values:
        counts_list[min(int((v - lo) / step), bins - 1)] += 1
    return [Bin(lo + i * step, lo + (i + 1) * step, counts_list[i]) for i in range(bins)]


def _bin_text(b: Bin) -> str:
    return fmt_signed(b.low) if b.low == b.high else f"{fmt_signed(b.low)} … {fmt_signed(b.high)}"


def _bars(bins: list[Bin], classes: list[str], titles: list[str], width: float, height: float,
          left_note: str, right_note: str, label: str, cls: str) -> Markup:
    top, bottom, pad = 8.0, 34.0, 8.0
    plot_h = height - top - bottom
    most = max((b.count for b in bins), default=0) or 1
    slot = (width - 2 * pad) / max(len(bins), 1)
    body = [f'<line class="axis" x1="{_n(pad)}" x2="{_n(width - pad)}" y1="{_n(top + plot_h)}" '
            f'y2="{_n(top + plot_h)}"/>']
    for i, (b, c, t) in enumerate(zip(bins, classes, titles, strict=True)):
        h = b.count / most * plot_h
        if b.count:
            h = max(h, 1.5)
        x = pad + i * slot + slot * 0.08
        body.append(f'<rect class="bar {c}" x="{_n(x)}" y="{_n(top + plot_h - h)}" width="{_n(slot * 0.84)}" '
                    f'height="{_n(h)}" data-count="{b.count}" data-low="{b.low!r}" data-high="{b.high!r}">'
                    f"<title>{escape(t)}</title></rect>")
    y_text = top + plot_h + 14
    if bins:
        body.append(f'<text class="axis-label" x="{_n(pad)}" y="{_n(y_text)}">{escape(_bin_text(bins[0]))}</text>')
        body.append(f'<text class="axis-label" x="{_n(width - pad)}" y="{_n(y_text)}" text-anchor="end">'
                    f"{escape(_bin_text(bins[-1]))}</text>")
    body.append(f'<text class="axis-note" x="{_n(pad)}" y="{_n(height - 4)}">{escape(left_note)}</text>')
    body.append(f'<text class="axis-note" x="{_n(width - pad)}" y="{_n(height - 4)}" text-anchor="end">'
                f"{escape(right_note)}</text>")
    body.append(f'<text class="axis-label" x="{_n(width - pad)}" y="{_n(top + 2)}" text-anchor="end" '
                f'dominant-baseline="hanging">max {most:,} cases</text>')
    return _svg(width, height, cls, label, body)


def delta_histogram(deltas: Sequence[float], *, higher_is_better: bool, candidate: str, baseline: str,
                    metric: str, width: float = 420, height: float = 150) -> Markup:
    """Histogram of per-case candidate − baseline deltas; bars coloured by which side is better."""
    bins = delta_bins(deltas)
    classes, titles = [], []
    for b in bins:
        mid = (b.low + b.high) / 2
        classes.append(_direction(mid, higher_is_better))
        what = "no change" if b.low == b.high == 0 else f"Δ {_bin_text(b)}"
        titles.append(f"{b.count:,} case{'' if b.count == 1 else 's'}: {what}")
    better = f"{candidate} better"
    worse = f"{candidate} worse"
    left, right = (f"← {worse}", f"{better} →") if higher_is_better else (f"← {better}", f"{worse} →")
    label = f"{metric}: per-case change {candidate} − {baseline} over {len(deltas):,} cases"
    return _bars(bins, classes, titles, width, height, left, right, label, "histogram delta")


def distribution_histogram(values: Sequence[float], *, model: str, metric: str, width: float = 300,
                           height: float = 120) -> Markup:
    """Histogram of one model's per-case values (used when there is no baseline/candidate pair)."""
    bins = value_bins(values)
    titles = [f"{b.count:,} case{'' if b.count == 1 else 's'}: "
              + (fmt_num(b.low) if b.low == b.high else f"{fmt_num(b.low)} … {fmt_num(b.high)}") for b in bins]
    label = f"{metric}: distribution of {model}'s per-case values over {len(values):,} cases"
    return _bars(bins, ["neutral"] * len(bins), titles, width, height, model, "", label, "histogram values")


# ---- heat maps --------------------------------------------------------------------------------------------


def heatmap(rows: Sequence[str], columns: Sequence[str], matrix: Sequence[Sequence[float]], *, title: str,
            diff: bool = False, row_axis: str = "gold", column_axis: str = "predicted") -> Markup:
    """A confusion matrix (``diff=False``: counts, one hue) or a difference of two (``diff=True``).

    In a difference, a cell is ``better`` when it moves toward the diagonal: more on the diagonal, fewer off it.
    """
    cell = 30.0 if len(columns) <= 12 else max(12.0, 360.0 / len(columns))
    longest = max((len(str(x)) for x in [*rows, *columns]), default=1)
    margin = min(8.0 + 6.5 * longest, 150.0)
    top = margin + 18
    left = margin + 18
    width = left + cell * len(columns) + 8
    height = top + cell * len(rows) + 8
    peak = max((abs(v) for row in matrix for v in row), default=0) or 1
    show_numbers = cell >= 22
    body = [f'<text class="axis-note" x="{_n(left + cell * len(columns) / 2)}" y="12" text-anchor="middle">'
            f"{escape(column_axis)} →</text>",
            f'<text class="axis-note" x="12" y="{_n(top + cell * len(rows) / 2)}" text-anchor="middle" '
            f'transform="rotate(-90 12 {_n(top + cell * len(rows) / 2)})">{escape(row_axis)} →</text>']
    for j, name in enumerate(columns):
        cx = left + (j + 0.5) * cell
        body.append(f'<text class="tick" x="{_n(cx)}" y="{_n(top - 6)}" '
                    f'transform="rotate(-45 {_n(cx)} {_n(top - 6)})">{escape(_short(str(name)))}</text>')
    for i, name in enumerate(rows):
        body.append(f'<text class="tick" x="{_n(left - 6)}" y="{_n(top + (i + 0.5) * cell + 4)}" '
                    f'text-anchor="end">{escape(_short(str(name)))}</text>')
        for j, value in enumerate(matrix[i]):
            x, y = left + j * cell, top + i * cell
            if diff:
                on_diagonal = j == i
                cls = "same" if value == 0 else ("better" if (value > 0) == on_diagonal else "worse")
            else:
                cls = "count"
            opacity = 0.0 if value == 0 else 0.15 + 0.85 * abs(value) / peak
            text = f"{value:+g}" if diff and value else f"{value:g}"
            tip = f"{row_axis} {rows[i]} → {column_axis} {columns[j]}: {text}"
            body.append(f'<rect class="cell {cls}" x="{_n(x)}" y="{_n(y)}" width="{_n(cell - 1)}" '
                        f'height="{_n(cell - 1)}" fill-opacity="{opacity:.2f}" data-row="{i}" data-col="{j}" '
                        f'data-value="{value!r}"><title>{escape(tip)}</title></rect>')
            if show_numbers and value:
                strong = " strong" if abs(value) / peak > 0.6 else ""
                body.append(f'<text class="cell-value{strong}" x="{_n(x + cell / 2 - 0.5)}" '
                            f'y="{_n(y + cell / 2 + 3.5)}" text-anchor="middle">{escape(text)}</text>')
    return _svg(width, height, "heatmap" + (" diff" if diff else ""), title, body)


def _short(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- trend ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrendPoint:
    """One run on a trend chart."""

    run_id: str
    at: datetime
    value: float | None
    """The candidate's aggregate."""
    baseline: float | None = None
    """The baseline's aggregate in the same run, if any."""
    band: tuple[float, float] | None = None
    """Where the candidate lies given the paired interval of candidate − baseline (see ``trend_chart``)."""
    model: str = ""
    tags: tuple[str, ...] = ()
    """Tags (promotions) pointing at this run."""


def _nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw), default=10 * power)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def trend_chart(points: Sequence[TrendPoint], *, metric: str, higher_is_better: bool, start: datetime,
                end: datetime, width: float = 640, height: float = 220) -> Markup:
    """The candidate's aggregate per run over time (a line with one point per run), the baseline as a dashed
    line, and the interval band: for run *r*, ``band`` = candidate value + (CI of the paired delta − delta), so
    the band clears the baseline line exactly when the paired interval excludes zero. Runs carrying a tag are
    marked with a flag."""
    left, right, top, bottom = 54.0, 14.0, 16.0, 30.0
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for p in points for v in (p.value, p.baseline) if v is not None]
    values += [v for p in points if p.band for v in p.band]
    if not values:
        return _svg(width, 60, "trend empty", f"{metric}: no values in this period",
                    ['<text class="axis-label" x="10" y="30">no values in this period</text>'])
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - (abs(lo) * 0.05 or 0.5), hi + (abs(hi) * 0.05 or 0.5)
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    t0, t1 = start.timestamp(), end.timestamp()
    if t1 <= t0:
        t1 = t0 + 1

    def x(at: datetime) -> float:
        return left + (min(max(at.timestamp(), t0), t1) - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * plot_h

    body = []
    for tick in _nice_ticks(lo, hi):
        if lo <= tick <= hi:
            body.append(f'<line class="grid" x1="{_n(left)}" x2="{_n(left + plot_w)}" y1="{_n(y(tick))}" '
                        f'y2="{_n(y(tick))}"/>')
            body.append(f'<text class="axis-label" x="{_n(left - 6)}" y="{_n(y(tick) + 4)}" text-anchor="end">'
                        f"{escape(fmt_num(tick))}</text>")
    for tick_at in _day_ticks(start, end):
        body.append(f'<text class="axis-label" x="{_n(x(tick_at))}" y="{_n(height - 10)}" text-anchor="middle">'
                    f"{escape(tick_at.strftime('%b %d'))}</text>")
        body.append(f'<line class="tick-mark" x1="{_n(x(tick_at))}" x2="{_n(x(tick_at))}" '
                    f'y1="{_n(top + plot_h)}" y2="{_n(top + plot_h + 4)}"/>')
    body.append(f'<line class="axis" x1="{_n(left)}" x2="{_n(left + plot_w)}" y1="{_n(top + plot_h)}" '
                f'y2="{_n(top + plot_h)}"/>')

    # Band: one polygon per run of consecutive points that have an interval, plus a whisker per point.
    segment: list[TrendPoint] = []
    for p in [*points, None]:
        if p is not None and p.band is not None and p.value is not None:
            segment.append(p)
            continue
        if len(segment) >= 2:
            upper = " ".join(f"{_n(x(q.at))},{_n(y(q.band[1]))}" for q in segment)  # type: ignore[index]
            lower = " ".join(f"{_n(x(q.at))},{_n(y(q.band[0]))}" for q in reversed(segment))  # type: ignore[index]
            body.append(f'<polygon class="band" points="{upper} {lower}"/>')
        segment = []
    for p in points:
        if p.band is not None and p.value is not None:
            body.append(f'<line class="whisker" x1="{_n(x(p.at))}" x2="{_n(x(p.at))}" y1="{_n(y(p.band[0]))}" '
                        f'y2="{_n(y(p.band[1]))}" data-run="{_attr(p.run_id)}" data-low="{p.band[0]!r}" '
                        f'data-high="{p.band[1]!r}"/>')

    base = [p for p in points if p.baseline is not None]
    if len(base) >= 2:
        body.append('<polyline class="line baseline" points="'
                    + " ".join(f"{_n(x(p.at))},{_n(y(p.baseline))}" for p in base) + '"/>')  # type: ignore[arg-type]
    for p in base:
        body.append(f'<circle class="point baseline" cx="{_n(x(p.at))}" cy="{_n(y(p.baseline))}" r="2.5" '
                    f'data-run="{_attr(p.run_id)}" data-value="{p.baseline!r}"/>')  # type: ignore[arg-type]
    cand = [p for p in points if p.value is not None]
    if len(cand) >= 2:
        body.append('<polyline class="line candidate" points="'
                    + " ".join(f"{_n(x(p.at))},{_n(y(p.value))}" for p in cand) + '"/>')  # type: ignore[arg-type]
    for p in cand:
        tip = f"{p.at:%Y-%m-%d %H:%M} UTC · run {p.run_id} · {p.model}: {fmt_num(p.value)}"
        if p.baseline is not None:
            tip += f" (baseline {fmt_num(p.baseline)})"
        if p.band is not None:
            tip += f" · interval {fmt_num(p.band[0])} … {fmt_num(p.band[1])}"
        if p.tags:
            tip += " · tagged " + ", ".join(p.tags)
        body.append(f'<circle class="point candidate{" promoted" if p.tags else ""}" cx="{_n(x(p.at))}" '
                    f'cy="{_n(y(p.value))}" r="4" data-run="{_attr(p.run_id)}" data-value="{p.value!r}">'  # type: ignore[arg-type]
                    f"<title>{escape(tip)}</title></circle>")
        if p.tags:
            fx, fy = x(p.at), y(p.value) - 8  # type: ignore[arg-type]
            body.append(f'<path class="flag" d="M{_n(fx)} {_n(fy)} v-12 l8 3 l-8 3" data-run="{_attr(p.run_id)}">'
                        f"<title>{escape('tagged ' + ', '.join(p.tags))}</title></path>")
    arrow = "higher is better" if higher_is_better else "lower is better"
    label = f"{metric} over time ({arrow}): {len(cand)} run{'' if len(cand) == 1 else 's'}"
    return _svg(width, height, "trend", label, body)


def _day_ticks(start: datetime, end: datetime, most: int = 8) -> list[datetime]:
    """Midnights between start and end, thinned to at most ``most`` labels."""
    from datetime import timedelta

    first = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(days=1)
    days = []
    at = first
    while at <= end and len(days) < 400:
        days.append(at)
        at += timedelta(days=1)
    step = max(1, math.ceil(len(days) / most))
    return days[::step]
