"""Time ``paired.compare_sides`` (the paired statistics after a run) on a real DuckDB store.

Run: ``python benchmarks/bench_compare.py [--cases 2000 8000] [--repeat 7] [--profile]``

For every case count it writes one run through the public store API (cases with tags, both models' outputs
with ~300-character texts, and three metrics' scores: an exact-match-like 0/1 metric, a ROUGE-like
continuous one and a label metric that carries gold/predicted labels, as ``label`` does), then times
``compare_sides`` for each metric alone and for all three together (store reads included, as after a run). It
prints a markdown table of the best and median wall time and the best CPU time of ``--repeat`` calls (CPU time is
steadier on a shared machine); ``--profile`` adds the top of a cProfile of one call per metric.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tunebench.paired import Side, compare_sides
from tunebench.records import Case, Output, Score
from tunebench.store import Store

WORDS = ("claim", "policy", "deductible", "premium", "refund", "coverage", "agent", "window", "glass", "water",
         "damage", "flood", "storm", "liability", "vehicle", "home", "contents", "excess", "notice", "cancel")
TAGS = ("billing", "claims", "cover", "home", "motor", "travel")
LABELS = tuple(f"intent_{k}" for k in range(12))
METRICS = {"exact_match": True, "rouge_l": True, "label": True}


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def build(path: Path, n_cases: int, seed: int = 0) -> str:
    """Write one run of ``n_cases`` cases, two models and the three metrics; return its id."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    models = ("base", "tuned")
    cases = [Case(id=f"case-{i:06d}", input=_text(rng, 40), expected=_text(rng, 50),
                  tags=(TAGS[i % len(TAGS)],) + (("critical",) if i % 10 == 0 else ()))
             for i in range(n_cases)]
    outputs = [Output(case_id=c.id, model=m, repeat=0, text=_text(rng, 50), latency_ms=rng.uniform(50, 900),
                      prompt_tokens=60, completion_tokens=70, finish_reason="stop")
               for m in models for c in cases]
    # A shared case difficulty plus per-model noise; the tuned model is slightly better.
    difficulty = nrng.beta(2, 2, n_cases)
    scores: list[tuple[str, str, int, str, Score]] = []
    for m, shift in zip(models, (0.0, 0.02), strict=True):
        rouge = np.clip(difficulty + shift + nrng.normal(0, 0.15, n_cases), 0, 1)
        exact = nrng.random(n_cases) < np.clip(difficulty + shift, 0, 1)
        correct = nrng.random(n_cases) < 0.6 + shift
        for i, c in enumerate(cases):
            gold = LABELS[i % len(LABELS)]
            predicted = gold if correct[i] else LABELS[(i * 7 + 3) % len(LABELS)]
            scores.append((c.id, m, 0, "exact_match", Score(
                value=float(exact[i]), passed=bool(exact[i]), explanation="" if exact[i] else "differs",
                details={"output": outputs[i].text[:200], "expected": c.expected[:200]})))
            scores.append((c.id, m, 0, "rouge_l", Score(value=float(rouge[i]), passed=bool(rouge[i] >= 0.5))))
            scores.append((c.id, m, 0, "label", Score(value=float(correct[i]), passed=bool(correct[i]),
                                                      details={"gold": gold, "predicted": predicted})))
    with Store.open(path) as store:
        run_id = store.start_run({"suite_name": "bench", "suite_hash": "x", "baseline": "base",
                                  "candidate": "tuned"})
        store.add_models(run_id, [{"model": m, "runner": "mock"} for m in models])
        store.add_metrics(run_id, [{"metric": k, "kind": k, "higher_is_better": h} for k, h in METRICS.items()])
        store.add_cases(run_id, cases)
        store.add_outputs(run_id, outputs)
        store.add_scores(run_id, scores)
        store.finish_run(run_id)
    return run_id


def _time(store: Store, run_id: str, metrics: dict[str, bool], repeat: int) -> tuple[float, float, float]:
    """Best wall, median wall and best CPU seconds of ``repeat`` calls (after one warm-up call)."""
    a, b = Side(run_id, "base"), Side(run_id, "tuned")
    compare_sides(store, a, b, metrics)  # warm-up: first-query planning, numpy caches
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        compare_sides(store, a, b, metrics)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), statistics.median(walls), min(cpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[2000, 8000], help="case counts to time")
    parser.add_argument("--repeat", type=int, default=7, help="timed calls per measurement")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one call per metric")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; {args.repeat} calls per row after one warm-up\n")
    print("| cases | metrics | best ms | median ms | best CPU ms |")
    print("|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cases:
            path = Path(tmp) / f"bench-{n}.duckdb"
            run_id = build(path, n)
            with Store.open(path, read_only=True) as store:
                for selection in [{k: h} for k, h in METRICS.items()] + [METRICS]:
                    best, median, cpu = _time(store, run_id, selection, args.repeat)
                    names = ", ".join(f"`{k}`" for k in selection)
                    print(f"| {n:,} | {names} | {best * 1e3:.1f} | {median * 1e3:.1f} | {cpu * 1e3:.1f} |")
                if args.profile:
                    for k, h in METRICS.items():
                        profile = cProfile.Profile()
                        profile.runcall(compare_sides, store, Side(run_id, "base"), Side(run_id, "tuned"), {k: h})
                        print(f"--- profile: {k}, {n} cases")
                        pstats.Stats(profile).sort_stats("cumulative").print_stats(14)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
