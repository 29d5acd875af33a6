"""Number formatting shared by the HTML and Markdown reports, so both show the same digits.

Invariants: pure functions of their argument; ``None`` (no value) always formats as an em dash; a value's
precision depends only on its magnitude (metrics range from 0–1 scores to 0–100 BLEU to milliseconds).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

__all__ = ["MISSING", "fmt_count", "fmt_day", "fmt_duration", "fmt_num", "fmt_pct", "fmt_signed", "fmt_signed_pct",
           "fmt_stamp", "fmt_when"]

MISSING = "—"


def finite(value: Any) -> float | None:
    """A finite float, or None for None, booleans, non-numbers, NaN and infinities."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _digits(value: float) -> int:
    magnitude = abs(value)
    if magnitude >= 1000:
        return 0
    if magnitude >= 100:
        return 1
    if magnitude >= 10:
        return 2
    return 3


def fmt_num(value: float | None) -> str:
    """``0.412``, ``35.12``, ``1,234``; ``—`` for no value."""
    if value is None or not math.isfinite(float(value)):
        return MISSING
    value = float(value)
    return f"{value:,.{_digits(value)}f}"


def fmt_signed(value: float | None) -> str:
    """A delta with an explicit sign: ``+0.050``, ``−1.20`` (true minus sign), ``±0.000`` for zero."""
    if value is None or not math.isfinite(float(value)):
        return MISSING
    value = float(value)
    text = f"{abs(value):,.{_digits(value)}f}"
    if value > 0:
        return "+" + text
    if value < 0:
        return "\u2212" + text
    return "\u00b1" + text


def fmt_pct(rate: float | None) -> str:
    """A share in 0–1 as a percentage with one decimal: ``42.0%``."""
    if rate is None or not math.isfinite(float(rate)):
        return MISSING
    return f"{float(rate) * 100:.1f}%"


def fmt_signed_pct(rate: float | None) -> str:
    """A difference of two shares in percentage points: ``+3.0 pp``."""
    if rate is None or not math.isfinite(float(rate)):
        return MISSING
    points = float(rate) * 100
    sign = "+" if points > 0 else ("\u2212" if points < 0 else "\u00b1")
    return f"{sign}{abs(points):.1f} pp"


def fmt_count(count: int | None) -> str:
    """``1,234``; ``—`` for no count."""
    return MISSING if count is None else f"{count:,}"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def fmt_when(value: datetime | None) -> str:
    """``2025-01-14 09:30 UTC``; ``—`` for no time. Reports show UTC, like the store."""
    return MISSING if value is None else _utc(value).strftime("%Y-%m-%d %H:%M UTC")


def _parse(iso: str | None) -> datetime | None:
    try:
        return _utc(datetime.fromisoformat(iso)) if iso else None
    except ValueError:
        return None


def fmt_stamp(iso: str | None) -> str:
    """An ISO-8601 time as ``2025-01-14 09:30:05 UTC`` (to the second); ``—`` for none; other text as it is."""
    when = _parse(iso)
    return (iso or MISSING) if when is None else when.strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(start_iso: str | None, end_iso: str | None) -> str:
    """The time between two ISO-8601 times: ``0.4 s``, ``12 s``, ``3 min 05 s``, ``2 h 07 min``; ``—`` when either
    is missing or not a time."""
    start, end = _parse(start_iso), _parse(end_iso)
    if start is None or end is None:
        return MISSING
    seconds = (end - start).total_seconds()
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_day(value: datetime | None) -> str:
    """``2025-01-14`` (UTC)."""
    return MISSING if value is None else _utc(value).strftime("%Y-%m-%d")
