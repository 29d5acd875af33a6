"""The self-contained HTML run report: server-rendered summary, client-rendered case table.

Invariants:
- One file, no network: CSS and JavaScript are inlined from ``static/``; a Content-Security-Policy allows only
  those two inline blocks (by SHA-256 hash) and ``data:`` images, so even a rendering bug cannot make the page
  fetch anything or run injected script.
- Untrusted text reaches the page in exactly three ways: Jinja2 autoescaping (verdict, gates, summary, warnings),
  the SVG charts of ``charts`` (every text through ``markupsafe.escape``), and the
  ``<script type="application/json">`` blocks, where ``<``, ``>``, ``&``, U+2028 and U+2029 are ``\\uXXXX``
  escapes, so no output can close the script element. The JavaScript builds the case table with
  ``createElement``/``textContent`` only.
- Cases are streamed: ``report.cases`` is iterated once, in batches, into a temporary spool file while the
  per-metric charts collect their numbers (the charts sit above the cases in the page); the spool is then
  copied into the output in blocks. Memory stays bounded; the page holds one JSON record per case (diff ops
  instead of output text) and renders one page of rows at a time.
- Charts are inline SVG built in ``charts`` (no script, no inline ``style`` attributes, so the CSP holds).
- The file appears atomically: it is written to ``path.with_suffix('.tmp')`` and renamed; on any error the
  temporary file is removed and an existing report at ``path`` is left untouched.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from ._format import fmt_count, fmt_day, fmt_duration, fmt_num, fmt_pct, fmt_signed, fmt_signed_pct, fmt_stamp, fmt_when
from .diff import word_diff
from .model import CaseRow, RunReport, summary_rows
from .sections import CaseStats, metric_views
from .terms import term_marks
from .verdict import build_verdict

__all__ = ["PAGE_SIZE", "case_record", "render_html", "script_json"]

PAGE_SIZE = 50
"""Case rows per page in the browser (the reader can change it)."""

_BATCH = 256  # case records per json.dumps call: fewer calls, bounded memory
_COPY_BLOCK = 1 << 20  # characters per block when copying the spooled case data into the page
_ROUND = 4  # per-case metric values in the page are for display and sorting; exact values are in the store

_COMPARISON_ORDER = ("metric", "n", "mean_baseline", "mean_candidate", "delta", "ci_low", "ci_high", "wins", "ties",
                     "losses", "p_value", "verdict")


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2  # only the HTML form needs it

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tunebench.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, signed=fmt_signed, pct=fmt_pct, signed_pct=fmt_signed_pct,
                       count=fmt_count, cell=_cell, when=fmt_when, day=fmt_day,
                       stamp=fmt_stamp)
    env.globals.update(duration=fmt_duration)
    return env


@functools.lru_cache(maxsize=4)
def _static(name: str) -> str:
    return (resources.files("tunebench.report") / "static" / name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays arrive from metric code; turn them into plain numbers and lists.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# (str.translate with a mapping is ~10x slower than chained replace on multi-megabyte strings)
_SCRIPT_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                   ("\u2029", "\\u2029"))


def script_json(value: Any) -> str:
    """Compact JSON that is safe inside ``<script type="application/json">`` (see the module docstring)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default)
    for char, escape in _SCRIPT_ESCAPES:
        if char in text:
            text = text.replace(char, escape)
    return text


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)  # bools, ints, numpy scalars; anything else raises
    return round(value, _ROUND) if math.isfinite(value) else None


def case_record(row: CaseRow, models: list[str], metric_names: list[str]) -> dict:
    """The compact JSON record of one case that the page's JavaScript reads.

    ``id``, ``t`` tags, ``in`` input, ``x`` expected, optional ``f`` flags, ``m`` chat messages (``[role,
    content]``), ``src`` source, and ``o``: one entry per model in ``models`` order, ``null`` when the model has
    neither output nor scores, else ``{"d": diff ops against the golden, "e": error, "l": latency ms, "s":
    scores, "k": terminology marks}``; ``s`` has one entry per metric in ``metric_names`` order: ``null`` or
    ``[value, passed]`` plus the explanation or error as a third element when there is one; ``k`` (only when a
    terminology metric scored the output) is ``terms.term_marks``: hit and bad-term spans of the output text,
    missing terms, bad terms used.
    """
    case = row.case
    record: dict[str, Any] = {"id": case.id, "t": list(case.tags), "in": case.input, "x": case.expected}
    if row.flags:
        record["f"] = list(row.flags)
    if case.messages:
        record["m"] = [[str(msg.get("role", "")), str(msg.get("content", ""))] for msg in case.messages]
    if case.source:
        record["src"] = case.source
    outputs = []
    for model in models:
        output = row.outputs.get(model)
        scores = row.scores.get(model) or {}
        if output is None and not scores:
            outputs.append(None)
            continue
        entry: dict[str, Any] = {}
        if output is None:
            entry["e"] = "no output recorded"
        else:
            if output.error:
                entry["e"] = output.error
            if output.text or not output.error:
                entry["d"] = word_diff(case.expected, output.text)
            if output.latency_ms is not None:
                entry["l"] = round(float(output.latency_ms))
        compact = []
        for name in metric_names:
            score = scores.get(name)
            if score is None:
                compact.append(None)
                continue
            item: list[Any] = [_number(score.value), score.passed if score.passed is None else bool(score.passed)]
            note = score.error or score.explanation
            if note:
                item.append(note)
            compact.append(item)
        entry["s"] = compact
        if scores:
            marks = term_marks(output.text if output is not None and not output.error else "", scores)
            if marks:
                entry["k"] = marks
        outputs.append(entry)
    record["o"] = outputs
    return record


def _spool_cases(cases: Iterable[CaseRow], models: list[str], metric_names: list[str], stats: CaseStats,
                 spool) -> None:
    """Write the JSON array of case records to ``spool``, feeding every row to ``stats`` on the way."""
    spool.write("[")
    batch: list[dict] = []
    first = True
    for row in cases:
        try:
            batch.append(case_record(row, models, metric_names))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"case {row.case.id!r} cannot be rendered: {exc}") from exc
        stats.add(row)
        if len(batch) >= _BATCH:
            spool.write(("" if first else ",") + script_json(batch)[1:-1])
            batch, first = [], False
    if batch:
        spool.write(("" if first else ",") + script_json(batch)[1:-1])
    spool.write("]")


def _read_spool(spool) -> Iterator[str]:
    from markupsafe import Markup  # comes with jinja2

    spool.seek(0)
    while block := spool.read(_COPY_BLOCK):
        yield Markup(block)


def _cell(value: Any, key: str = "") -> str:
    """One comparison/gate value as text: numbers formatted, p-values in 3 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return fmt_count(value)
    if isinstance(value, float):
        if key.replace("-", "_") in ("p", "p_value", "pvalue"):
            return f"{value:.3g}"
        return fmt_signed(value) if key == "delta" else fmt_num(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _verdict_class(verdict: Any) -> str:
    text = str(verdict).lower()
    if any(word in text for word in ("regress", "worse", "degrad", "fail")):
        return "worse"
    if any(word in text for word in ("improv", "better", "pass")):
        return "better"
    return "same"


def _comparison_columns(comparisons: list[dict]) -> list[str]:
    # Lists and dicts (flips, per-tag rows, unstable ids) have their own sections; a cell holds one number.
    scalar = {key for row in comparisons for key, value in row.items()
              if value is None or isinstance(value, str | int | float | bool)}
    scalar -= {key for row in comparisons for key, value in row.items() if isinstance(value, list | dict | tuple)}
    seen = [key for key in _COMPARISON_ORDER if key in scalar]
    for row in comparisons:
        seen.extend(key for key in row if key in scalar and key not in seen)
    return seen


def _gate_numbers(gate: dict) -> list[tuple[str, str]]:
    numbers = gate.get("numbers") or {}
    if not isinstance(numbers, dict):
        return []
    return [(str(key).replace("_", " "), _cell(value, str(key))) for key, value in numbers.items()
            if value is not None]


def _context(report: RunReport, spool) -> dict[str, Any]:
    css, js = _static("report.css"), _static("report.js")
    csp = "; ".join([
        "default-src 'none'",
        f"script-src {_csp_hash(js)}",
        f"style-src {_csp_hash(css)}",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
    ])
    metric_names = [m.name for m in report.metrics]
    models = list(report.models)
    index = {model: i for i, model in enumerate(models)}
    meta = {
        "models": models,
        "metrics": [{"name": m.name, "kind": m.kind, "hib": m.higher_is_better, "thr": m.threshold}
                    for m in report.metrics],
        "base": index.get(report.baseline) if report.baseline else None,
        "cand": index.get(report.candidate) if report.candidate else None,
        "pageSize": PAGE_SIZE,
    }
    from markupsafe import Markup

    roles = {report.baseline: "baseline", report.candidate: "candidate"}
    roles.pop(None, None)
    stats = CaseStats(report)
    _spool_cases(report.cases, models, metric_names, stats, spool)
    rows = summary_rows(report)
    return {
        "report": report,
        "rows": rows,
        "verdict": build_verdict(report),
        "views": metric_views(report, rows, stats),
        "has_terms": stats.has_terms,
        "gate_numbers": _gate_numbers,
        "has_delta": meta["base"] is not None and meta["cand"] is not None,
        "roles": roles,
        "comparison_columns": _comparison_columns(report.comparisons),
        "verdict_class": _verdict_class,
        "csp": csp,
        "css": Markup(css),
        "js": Markup(js),
        "meta_json": Markup(script_json(meta)),
        "case_chunks": _read_spool(spool),
    }


def write_atomically(path: Path, chunks: Iterable[str]) -> Path:
    """Stream ``chunks`` to ``path`` through a temporary file renamed at the end: whole or not at all."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # backslashreplace: a lone surrogate in model output (bad decoding upstream) must not abort the page.
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def render_html(report: RunReport, path: Path) -> Path:
    """Write the report to ``path`` (atomically, see the module docstring) and return ``path``."""
    template = _environment().get_template("report.html.j2")
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # the case spool is filled before the first chunk
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="backslashreplace", newline="\n") as spool:
        return write_atomically(path, template.generate(**_context(report, spool)))
