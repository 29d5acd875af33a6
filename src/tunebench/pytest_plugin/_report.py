"""What the plugin shows: a run → a JSON record → failure text, JUnit properties, Markdown and terminal summaries.

Invariants: every view is built from the JSON record (so an xdist controller, which ran nothing, renders the
same summary as a single process); model output and golden text are untrusted: control characters are escaped
in the terminal, and Markdown is escaped cell by cell (``|``, ``<``, backticks …); texts are shortened to one
line; nothing here writes to the store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

__all__ = ["build_record", "failure_text", "gate_properties", "markdown_summary", "terminal_lines",
           "write_summaries"]

TEXT_WIDTH = 160
"""Characters of golden/output text shown per flipped case."""
_THRESHOLDS = ("min", "max", "min_delta", "significant", "margin", "tag")
_MEASURED = ("value", "lower", "regressions", "fixes", "rate", "errors", "outputs")


def _plain(value: Any) -> Any:
    """numpy scalars → Python numbers, recursively (records are JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    return value


def build_record(config: pytest.Config, suite: Path, result: Any) -> dict[str, Any]:
    """The JSON record of a finished run; reads the flipped cases' texts of failed gates from the store."""
    from tunebench.suite import load_suite

    from ._session import display_path

    summary, comparison = result.summary, result.comparison
    if comparison is not None:
        a, b = comparison.baseline, comparison.candidate
        labels = (a.model if a.run_id == b.run_id else a.label, b.model)
    else:
        labels = (summary.baseline, summary.candidate)
    definitions = {g.name: g for g in load_suite(suite).suite.gates}
    metrics = []
    for name, info in summary.metrics.items():
        mc = comparison.metrics.get(name) if comparison is not None else None
        p = mc.paired if mc is not None else None
        row: dict[str, Any] = {"metric": name, "higher_is_better": info.get("higher_is_better"),
                               "values": {m: _value(summary, m, name) for m in summary.models}}
        if p is not None:
            row.update(baseline=p.mean_a, candidate=p.mean_b, delta=p.delta, ci_low=p.interval.low,
                       ci_high=p.interval.high, n=p.n, paired=True)
        else:
            row.update(baseline=_value(summary, summary.baseline, name),
                       candidate=_value(summary, summary.candidate, name), delta=summary.delta(name),
                       ci_low=None, ci_high=None, n=None, paired=False)
        metrics.append(row)
    gates = []
    for g in result.gates:
        gate = g.to_json()
        definition = definitions.get(g.name)
        metric = getattr(definition, "metric", None) or gate["numbers"].get("metric")
        gate["metric"] = metric
        if metric and comparison is not None and metric in comparison.metrics:
            gate["regressions_total"] = len(comparison.metrics[metric].flips.regressions)
        gates.append(gate)
    failed_flips = [f for gate in gates if not gate["passed"] for f in gate["flips"]]
    if failed_flips and comparison is not None:
        _add_texts(result.db, comparison, failed_flips)
    return _plain({
        "version": 1, "suite": display_path(config, suite), "name": summary.suite_name, "error": None,
        "run_id": result.run_id, "status": summary.status, "db": str(result.db),
        "report": display_path(config, Path(result.report)) if result.report else None,
        "baseline": labels[0], "candidate": labels[1], "metrics": metrics, "gates": gates,
        "errors": {m: [summary.errors.get(m, 0), summary.outputs.get(m, 0)] for m in summary.models},
        "requests": {"sent": result.requests.sent, "cached": result.requests.cached,
                     "errors": result.requests.errors},
        "warnings": list(summary.warnings),
    })


def _value(summary: Any, model: str | None, metric: str) -> float | None:
    agg = summary.aggregates.get(model or "", {}).get(metric)
    return agg.value if agg is not None else None


def _add_texts(db: Path, comparison: Any, flips: list[dict[str, Any]]) -> None:
    """Golden answer and both outputs (repeat 0) of each flipped case, from the store."""
    from tunebench.store import Store

    wanted = {f["case_id"] for f in flips}
    a, b = comparison.baseline, comparison.candidate
    with Store.open(db, read_only=True) as store:
        golden = {c.id: c.expected for c in store.get_cases(b.run_id) if c.id in wanted}
        texts: dict[tuple[str, str], str] = {}
        for side, role in ((a, "baseline"), (b, "candidate")):
            for out in store.iter_outputs(side.run_id, model=side.model):
                if out.case_id in wanted and out.repeat == 0:
                    texts[(role, out.case_id)] = out.text if out.error is None else f"[error] {out.error}"
    for f in flips:
        f["golden"] = golden.get(f["case_id"])
        f["baseline_text"] = texts.get(("baseline", f["case_id"]))
        f["candidate_text"] = texts.get(("candidate", f["case_id"]))


# -- JUnit properties and failure text


def gate_properties(gate: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) pairs recorded on the item: they become ``<property>`` elements in JUnit XML."""
    props: list[tuple[str, Any]] = [("gate", gate["name"]), ("kind", gate["kind"]), ("passed", gate["passed"])]
    if gate.get("metric"):
        props.append(("metric", gate["metric"]))
    props += [(k, v) for k, v in gate["numbers"].items() if v is not None and k != "metric"]
    return props


def terminal_text(text: str | None, width: int = TEXT_WIDTH) -> str:
    """One line of untrusted text, control characters escaped, cut at ``width`` characters."""
    if text is None:
        return "(none)"
    flat = " ".join(text.split())
    safe = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in flat)
    return safe if len(safe) <= width else safe[: width - 1] + "…"


def _num(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _signed(x: Any) -> str:
    return "n/a" if x is None else f"{x:+.4g}"


def failure_text(gate: dict[str, Any], record: dict[str, Any]) -> str:
    """The report of a failed gate: what was required, the numbers for both sides, the worst flipped cases."""
    lines = [f"gate {gate['name']!r} failed: {terminal_text(gate['message'], 400)}",
             f"  {gate['kind']} gate of suite {record['name']} ({record['suite']})", ""]
    row = next((m for m in record["metrics"] if m["metric"] == gate.get("metric")), None)
    base, cand = record.get("baseline") or "baseline", record.get("candidate") or "candidate"
    width = max(len(base), len(cand), len("golden")) + 2
    if row is not None:
        direction = "higher is better" if row["higher_is_better"] else "lower is better"
        paired = f", paired over {row['n']} cases" if row.get("paired") else ""
        lines += [f"  {row['metric']} ({direction}{paired})",
                  f"    {base:<{width}}{_num(row['baseline'])}",
                  f"    {cand:<{width}}{_num(row['candidate'])}",
                  f"    {'delta':<{width}}{_signed(row['delta'])}"
                  + (f"  (95% CI {_signed(row['ci_low'])} … {_signed(row['ci_high'])})"
                     if row.get("ci_low") is not None else "")]
    elif gate["kind"] == "max_error_rate":
        for model, (errors, outputs) in record.get("errors", {}).items():
            lines.append(f"    {model:<{width}}{errors} errors in {outputs} outputs")
    numbers = gate["numbers"]
    required = [f"{k} {_num(numbers[k])}" for k in _THRESHOLDS if numbers.get(k) is not None]
    measured = [f"{k} {_num(numbers[k])}" for k in _MEASURED if numbers.get(k) is not None]
    if required:
        lines.append(f"  threshold: {', '.join(required)}")
    if measured:
        lines.append(f"  measured: {', '.join(measured)}")
    flips = gate.get("flips") or []
    if flips:
        total = gate.get("regressions_total", len(flips))
        lines += ["", f"  worst regressions on {gate.get('metric')} (pass → fail; {len(flips)} of {total} shown):"]
        for f in flips:
            lines.append(f"    case {terminal_text(f['case_id'], 80)}: {_num(f['baseline'])} → "
                         f"{_num(f['candidate'])}")
            for label, key in (("golden", "golden"), (base, "baseline_text"), (cand, "candidate_text")):
                if key in f:
                    lines.append(f"      {label:<{width}}{terminal_text(f[key])}")
    lines += ["", f"  run {record['run_id']}" + (f" · report {record['report']}" if record.get("report") else "")]
    return "\n".join(lines)


# -- session summaries


def terminal_lines(records: list[dict[str, Any]], config: pytest.Config) -> list[str]:
    lines = []
    for r in records:
        if r.get("error"):
            lines.append(f"{r['suite']}: ERROR {terminal_text(r['error'], 300)}")
            continue
        gates = r["gates"]
        passed = sum(1 for g in gates if g["passed"])
        lines.append(f"{r['suite']}: run {r['run_id']} ({r['status']}); {passed}/{len(gates)} gates passed; "
                     f"{r['requests']['sent']} requests sent, {r['requests']['cached']} from cache"
                     + (f"; report {r['report']}" if r.get("report") else "") + _tag_note(r))
    return lines


def _tag_note(record: dict[str, Any]) -> str:
    tag = record.get("tag")
    if not tag:
        return ""
    return f"; tagged {tag['name']}" if tag["applied"] else f"; not tagged {tag['name']}: {tag['reason']}"


def md(text: Any) -> str:
    """Escape a value for one Markdown table cell (GitHub flavour; raw HTML is neutralised)."""
    s = " ".join(str(text).split())
    for ch, rep in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("`", "\\`"), ("*", "\\*"),
                    ("_", "\\_"), ("[", "\\["), ("]", "\\]")):
        s = s.replace(ch, rep)
    return s


def markdown_summary(records: list[dict[str, Any]]) -> str:
    """The session's runs as GitHub-flavoured Markdown: one section per suite, metrics and gates as tables."""
    failed = sum(1 for r in records for g in r["gates"] if not g["passed"])
    errors = sum(1 for r in records if r.get("error"))
    head = "passed" if not failed and not errors else \
        ", ".join(p for p in (f"{failed} gate(s) failed" if failed else "",
                              f"{errors} suite(s) errored" if errors else "") if p)
    out = [f"## tunebench: {head}", ""]
    for r in records:
        if r.get("error"):
            out += [f"### ⚠️ {md(r['name'])} ({md(r['suite'])}): error", "", f"> {md(r['error'])}", ""]
            continue
        bad = [g for g in r["gates"] if not g["passed"]]
        mark = "❌" if bad else "✅"
        out += [f"### {mark} {md(r['name'])} ({md(r['suite'])})", "",
                f"run {md(r['run_id'])} · baseline {md(r['baseline'])} · candidate {md(r['candidate'])}"
                + (f" · report {md(r['report'])}" if r.get("report") else "") + md(_tag_note(r)), ""]
        out += [f"| metric | {md(r['baseline'])} | {md(r['candidate'])} | delta | 95% CI | n |",
                "|---|---:|---:|---:|---|---:|"]
        for m in r["metrics"]:
            ci = f"{_signed(m['ci_low'])} … {_signed(m['ci_high'])}" if m.get("ci_low") is not None else ""
            out.append(f"| {md(m['metric'])} | {_num(m['baseline'])} | {_num(m['candidate'])} | "
                       f"{_signed(m['delta'])} | {ci} | {_num(m['n']) if m.get('n') is not None else ''} |")
        out.append("")
        if r["gates"]:
            out += ["| gate | result | details |", "|---|---|---|"]
            for g in r["gates"]:
                out.append(f"| {md(g['name'])} | {'✅ passed' if g['passed'] else '❌ failed'} | "
                           f"{md(g['message'])} |")
            out.append("")
        for w in r.get("warnings", ()):
            out.append(f"> ⚠️ {md(w)}")
        if r.get("warnings"):
            out.append("")
    return "\n".join(out) + "\n"


def write_summaries(config: pytest.Config, records: list[dict[str, Any]]) -> None:
    """Write the Markdown summary where asked, and append it to ``$GITHUB_STEP_SUMMARY`` when that is set."""
    if not records:
        return
    from ._session import get_runs

    target = get_runs(config).settings.summary
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if target is None and not step:
        return
    text = markdown_summary(records)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if step:
        with open(step, "a", encoding="utf-8") as fh:
            fh.write(text)
