"""Benchmark the reports at scale: the HTML run report (Python render time, file size, time-to-usable in headless
Chromium) and the weekly report (time to read a history and write the page).

    python benchmarks/bench_report.py                 # 10,000 cases, 2 models; weekly: 14 runs x 2,000 cases
    python benchmarks/bench_report.py --cases 2000 --models 3 --keep out.html
    python benchmarks/bench_report.py --no-browser --weekly-runs 28 --weekly-cases 5000

Case texts are real golden references from ../shared/data (see its README); "model outputs" are edited
copies (words dropped, inserted, replaced), so the word diffs are realistic. The ``terms`` metric is the real
terminology metric with a small glossary, so the page carries real term marks. "Usable" means the first page of
case rows is in the DOM: the page's script sets ``html[data-ready]`` and ``window.tunebenchReadyMs``
(milliseconds since navigation start) right after rendering it.

The weekly history is written through the Store API (runs two per day, base and tuned, the terminology metric
with pass/fail and ROUGE-like values) into a temporary DuckDB file; ``weekly_report`` then reads it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tunebench.metrics.terminology import terminology
from tunebench.records import Aggregate, Case, Output, Sample, Score
from tunebench.report import CaseRow, MetricInfo, RunReport, render_html, render_markdown, report_json

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
METRICS = [MetricInfo("rougeL", "rouge", "overlap", True, 0.3),
           MetricInfo("terms", "terminology", "terminology", True, 1.0),
           MetricInfo("ter", "ter", "overlap", False, 0.6)]
GLOSSARY = {"required": ["plan", "coverage", "benefit", "premium", "deductible", "Marketplace", "customer support",
                         "order", "account"],
            "forbidden": ["cheap"], "preferred": {"policyholder": ["client"]}}


def _terms_metric():
    metric = terminology(**GLOSSARY, threshold=1.0)
    metric.name = "terms"
    return metric


def _golden() -> list[tuple[str, str]]:
    pairs = []
    for path in sorted(DATA.glob("*.shared.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            pairs.append((item["input"], item["expected"]))
    if not pairs:
        raise SystemExit(f"no golden data in {DATA}")
    return pairs


def _edit(rng: random.Random, text: str, rate: float) -> str:
    words = text.split(" ")
    out = []
    for word in words:
        roll = rng.random()
        if roll < rate / 2:
            continue
        if roll < rate:
            out.append(rng.choice(words))
        out.append(word)
    return " ".join(out)


def build_report(n_cases: int, n_models: int, seed: int = 1) -> RunReport:
    rng = random.Random(seed)
    golden = _golden()
    terms = _terms_metric()
    models = ["base", "tuned", "tuned-v2", "tuned-v3"][:n_models]
    rows = []
    sums = {m: {k.name: [] for k in METRICS} for m in models}
    for i in range(n_cases):
        source, expected = golden[i % len(golden)]
        case = Case(id=f"case-{i:05d}", input=source, expected=expected,
                    tags=(rng.choice(["billing", "claims", "travel", "product"]),))
        outputs, scores = {}, {}
        for m, model in enumerate(models):
            error = "HTTP 503 after 3 attempts" if rng.random() < 0.005 else None
            text = "" if error else _edit(rng, expected, 0.1 + 0.1 * m)
            outputs[model] = Output(case_id=case.id, model=model, repeat=0, text=text, error=error,
                                    latency_ms=rng.uniform(80, 2000))
            if error:
                scores[model] = {k.name: Score(value=None, error=error) for k in METRICS}
                continue
            values = {"rougeL": rng.random(), "ter": rng.uniform(0, 1.2)}
            scores[model] = {}
            for info in METRICS:
                if info.name == "terms":
                    score = terms.score(Sample(case, outputs[model]))
                else:
                    v = values[info.name]
                    score = Score(value=v, passed=(v >= info.threshold) == info.higher_is_better)
                scores[model][info.name] = score
                sums[model][info.name].append(score.value)
        flags = ("regressed:rougeL",) if len(models) > 1 and rng.random() < 0.05 else ()
        rows.append(CaseRow(case=case, outputs=outputs, scores=scores, flags=flags))
    aggregates = {m: {k: Aggregate(value=statistics.fmean(v), n=len(v), n_errors=n_cases - len(v))
                      for k, v in by.items()} for m, by in sums.items()}
    return RunReport(
        run_id="bench", suite_name="bench", description="benchmark report", started_at="2025-01-01T00:00:00Z",
        finished_at="2025-01-01T00:10:00Z", tunebench_version="0.1.0", git_commit=None, models=models,
        baseline="base", candidate=models[1] if n_models > 1 else None, metrics=METRICS, aggregates=aggregates,
        errors={m: sum(1 for r in rows if r.outputs[m].error) for m in models}, cases=rows,
    )


def measure_browser(path: Path, loads: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    ready, wall, next_page, search = [], [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(loads):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            start = time.perf_counter()
            page.goto(path.resolve().as_uri())
            page.wait_for_selector("html[data-ready='true']", timeout=60_000)
            wall.append((time.perf_counter() - start) * 1000)
            ready.append(page.evaluate("window.tunebenchReadyMs"))
            start = time.perf_counter()
            page.click("#page-next")
            # Functions, not expressions: playwright evals expressions, which the page's CSP forbids.
            page.wait_for_function("() => document.getElementById('page-info').textContent.startsWith('Page 2 ')")
            next_page.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            page.fill("#search", "case-09")  # first search builds the search index
            page.wait_for_function("() => document.getElementById('page-info').textContent === 'Page 1 of 20'")
            search.append((time.perf_counter() - start) * 1000 - 120)  # minus the input debounce
            page.close()
        browser.close()
    med = statistics.median
    return {"ready_ms": med(ready), "goto_to_ready_ms": med(wall), "next_page_ms": med(next_page),
            "first_search_ms": med(search)}


def build_history(db: Path, n_runs: int, n_cases: int, seed: int = 2) -> tuple[datetime, datetime, float]:
    """Write ``n_runs`` runs (two a day) of ``n_cases`` cases into a new store; returns the period and seconds."""
    from tunebench.store import Store

    rng = random.Random(seed)
    golden = _golden()
    terms = _terms_metric()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    cases = [Case(id=f"case-{i:05d}", input=golden[i % len(golden)][0], expected=golden[i % len(golden)][1],
                  tags=(rng.choice(["billing", "claims", "travel"]),)) for i in range(n_cases)]
    began = time.perf_counter()
    with Store.open(db) as store:
        for k in range(n_runs):
            run_id = store.start_run({"suite_name": "bench", "baseline": "base", "candidate": "tuned",
                                      "started_at": start + timedelta(hours=12 * k)})
            store.add_models(run_id, [{"model": m, "runner": "mock"} for m in ("base", "tuned")])
            store.add_metrics(run_id, [{"metric": "terms", "kind": "terminology", "higher_is_better": True},
                                       {"metric": "rougeL", "kind": "rouge", "higher_is_better": True}])
            store.add_cases(run_id, cases)
            outputs, scores, sums = [], [], {}
            for model, rate in (("base", 0.3), ("tuned", 0.15)):
                for case in cases:
                    out = Output(case_id=case.id, model=model, repeat=0, text=_edit(rng, case.expected, rate))
                    outputs.append(out)
                    score = terms.score(Sample(case, out))
                    rouge_value = rng.random()
                    scores += [(case.id, model, 0, "terms", score),
                               (case.id, model, 0, "rougeL", Score(value=rouge_value))]
                    sums.setdefault((model, "terms"), []).append(score.value)
                    sums.setdefault((model, "rougeL"), []).append(rouge_value)
            store.add_outputs(run_id, outputs)
            store.add_scores(run_id, scores)
            store.add_aggregates(run_id, [(m, k, Aggregate(value=statistics.fmean(v), n=len(v)))
                                          for (m, k), v in sums.items()])
            store.finish_run(run_id)
    return start, start + timedelta(hours=12 * n_runs), time.perf_counter() - began


def measure_weekly(n_runs: int, n_cases: int, tmp: Path) -> dict[str, float]:
    from tunebench.weekly import WeeklyConfig, weekly_report

    since, until, write_s = build_history(tmp / "history.duckdb", n_runs, n_cases)
    times = []
    for _ in range(3):
        began = time.perf_counter()
        result = weekly_report(WeeklyConfig(db=tmp / "history.duckdb", out=tmp / "weekly.html", since=since,
                                            until=until))
        times.append(time.perf_counter() - began)
    return {"write_s": write_s, "weekly_s": min(times), "runs": result.runs,
            "size": (tmp / "weekly.html").stat().st_size, "newly_failing": result.newly_failing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=2, choices=[1, 2, 3, 4])
    parser.add_argument("--loads", type=int, default=3, help="page loads to take the median of")
    parser.add_argument("--keep", type=Path, help="write the report here instead of a temporary folder")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--weekly-runs", type=int, default=14, help="runs in the weekly history (0: skip)")
    parser.add_argument("--weekly-cases", type=int, default=2000)
    args = parser.parse_args()

    report = build_report(args.cases, args.models)
    rows = list(report.cases)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "report.html"
        times = []
        for _ in range(3):
            report.cases = iter(rows)
            start = time.perf_counter()
            render_html(report, path)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        render_markdown(report)
        json.dumps(report_json(report))
        summary_s = time.perf_counter() - start
        size = path.stat().st_size
        print(f"cases={args.cases} models={args.models}")
        print(f"render_html: best {min(times):.2f} s, median {statistics.median(times):.2f} s (3 runs)")
        print(f"render_markdown + report_json: {summary_s * 1000:.1f} ms")
        print(f"file size: {size / 1e6:.2f} MB ({size / args.cases:.0f} bytes per case)")
        if not args.no_browser:
            numbers = measure_browser(path, args.loads)
            print(f"chromium, first rows in DOM: {numbers['ready_ms']:.0f} ms after navigation start "
                  f"(goto → ready {numbers['goto_to_ready_ms']:.0f} ms, median of {args.loads})")
            print(f"chromium, next page: {numbers['next_page_ms']:.0f} ms; first search: "
                  f"{numbers['first_search_ms']:.0f} ms")
        if args.weekly_runs:
            w = measure_weekly(args.weekly_runs, args.weekly_cases, Path(tmp))
            print(f"weekly: {w['runs']} runs x {args.weekly_cases:,} cases written in {w['write_s']:.1f} s; "
                  f"weekly_report {w['weekly_s']:.2f} s (best of 3), page {w['size'] / 1e3:.0f} kB, "
                  f"{w['newly_failing']} newly failing")


if __name__ == "__main__":
    main()
