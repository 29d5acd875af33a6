"""Throughput of the DuckDB store: write 100k outputs and 400k scores, read them back.

Run: ``python benchmarks/bench_store.py [--outputs 100000] [--metrics 4] [--batch 1000] [--db PATH]``

Outputs are written in batches of ``--batch`` (as the executor flushes them while a run progresses) and scores
in one call per metric (as the score stage does). Texts are ~300 characters and every output carries its
request, so the numbers include JSON serialisation. Prints rows/s for every stage, the file size and the
high-water mark of the process's RSS after each stage (it starts with the generated data in memory).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from tunebench.records import Aggregate, Case, Output, Score
from tunebench.store import Store

WORDS = ("claim", "policy", "deductible", "premium", "refund", "coverage", "agent", "window", "glass", "water",
         "damage", "flood", "storm", "liability", "vehicle", "home", "contents", "excess", "notice", "cancel")


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, default=100_000, help="outputs to write (cases × 2 models)")
    parser.add_argument("--metrics", type=int, default=4, help="metrics per output (scores = outputs × this)")
    parser.add_argument("--batch", type=int, default=1000, help="outputs per add_outputs call")
    parser.add_argument("--db", type=Path, default=None, help="database file (default: a temporary one)")
    args = parser.parse_args(argv)

    rng = random.Random(0)
    n_cases = args.outputs // 2
    models = ("base", "tuned")
    metrics = [f"metric_{i}" for i in range(args.metrics)]
    cases = [Case(id=f"case-{i:06d}", input=_text(rng, 40), expected=_text(rng, 50), tags=("bench",))
             for i in range(n_cases)]
    outputs = [
        Output(case_id=c.id, model=m, repeat=0, text=_text(rng, 50), latency_ms=rng.uniform(50, 900),
               prompt_tokens=60, completion_tokens=70, finish_reason="stop",
               request={"messages": [{"role": "user", "content": c.input}], "temperature": 0.0})
        for c in cases for m in models
    ]
    scores = [
        (o.case_id, o.model, 0, metric, Score(value=rng.random(), passed=rng.random() > 0.3,
                                              explanation="missing: deductible",
                                              details={"matched": ["claim"]} if k % 2 else {}))
        for k, metric in enumerate(metrics) for o in outputs
    ]
    print(f"python {sys.version.split()[0]}, generated data; peak RSS so far {_peak_rss_mib():.0f} MiB")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.duckdb"
        results: list[tuple[str, int, float, float]] = []

        def timed(label: str, rows: int, fn) -> object:
            start = time.perf_counter()
            value = fn()
            results.append((label, rows, time.perf_counter() - start, _peak_rss_mib()))
            return value

        with Store.open(path) as store:
            run_id = store.start_run({"suite_name": "bench", "suite_hash": "x", "baseline": "base",
                                      "candidate": "tuned"})
            store.add_models(run_id, [{"model": m, "runner": "mock"} for m in models])
            store.add_metrics(run_id, [{"metric": m, "kind": "bench", "higher_is_better": True} for m in metrics])
            timed("add_cases", len(cases), lambda: store.add_cases(run_id, cases))

            def write_outputs() -> None:
                for start in range(0, len(outputs), args.batch):
                    store.add_outputs(run_id, outputs[start:start + args.batch])

            timed(f"add_outputs (batches of {args.batch})", len(outputs), write_outputs)
            resumed = [Output(case_id=o.case_id, model=o.model, repeat=0, text=o.text) for o in outputs]
            timed("add_outputs (one call, all replace)", len(resumed), lambda: store.add_outputs(run_id, resumed))

            def write_scores() -> None:
                per_metric = len(outputs)
                for start in range(0, len(scores), per_metric):
                    store.add_scores(run_id, scores[start:start + per_metric])

            timed("add_scores (one call per metric)", len(scores), write_scores)
            store.add_aggregates(run_id, [(m, k, Aggregate(value=0.5, n=n_cases)) for m in models for k in metrics])
            store.finish_run(run_id)

        with Store.open(path, read_only=True) as store:
            timed("done_jobs", len(outputs), lambda: store.done_jobs(run_id))
            n = timed("iter_outputs", len(outputs), lambda: sum(1 for _ in store.iter_outputs(run_id)))
            assert n == len(outputs), n
            got = timed("get_scores", len(scores), lambda: store.get_scores(run_id))
            assert len(got) == len(scores), len(got)
            del got

        size = sum(p.stat().st_size for p in Path(path).parent.glob(Path(path).name + "*"))
        width = max(len(label) for label, *_ in results)
        print(f"{'stage':<{width}}  {'rows':>8}  {'seconds':>7}  {'rows/s':>10}  peak RSS after")
        for label, rows, seconds, rss in results:
            print(f"{label:<{width}}  {rows:>8,}  {seconds:7.2f}  {rows / seconds:>10,.0f}  {rss:,.0f} MiB")
        print(f"database file: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
