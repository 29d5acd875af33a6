"""Benchmark the HTML run report at scale: Python render time, file size, time-to-usable in headless Chromium.

    python benchmarks/bench_report.py                 # 10,000 cases, 2 models
    python benchmarks/bench_report.py --cases 2000 --models 3 --keep out.html

Case texts are real golden references from /work/shared/data (see its README); "model outputs" are edited
copies (words dropped, inserted, replaced), so the word diffs are realistic. "Usable" means the first page of
case rows is in the DOM: the page's script sets ``html[data-ready]`` and ``window.tunebenchReadyMs``
(milliseconds since navigation start) right after rendering it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from tunebench.records import Aggregate, Case, Output, Score
from tunebench.report import CaseRow, MetricInfo, RunReport, render_html, render_markdown, report_json

DATA = Path("/work/shared/data")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
METRICS = [MetricInfo("rougeL", "rouge", "overlap", True, 0.3),
           MetricInfo("terms", "glossary", "domain", True, 1.0),
           MetricInfo("ter", "ter", "overlap", False, 0.6)]


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
            values = {"rougeL": rng.random(), "terms": rng.choice([0.0, 0.5, 1.0]), "ter": rng.uniform(0, 1.2)}
            scores[model] = {}
            for info in METRICS:
                v = values[info.name]
                scores[model][info.name] = Score(value=v, passed=(v >= info.threshold) == info.higher_is_better)
                sums[model][info.name].append(v)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=2, choices=[1, 2, 3, 4])
    parser.add_argument("--loads", type=int, default=3, help="page loads to take the median of")
    parser.add_argument("--keep", type=Path, help="write the report here instead of a temporary folder")
    parser.add_argument("--no-browser", action="store_true")
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


if __name__ == "__main__":
    main()
