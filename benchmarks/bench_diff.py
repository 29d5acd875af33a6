"""Benchmark the report's word diff (``report/diff.py``) on real pairs: the shipped insurance example's golden
answers against its recorded base and tuned outputs (332 pairs), ``word_diff`` over all of them, median of 15
passes.

    python benchmarks/bench_diff.py
    python benchmarks/bench_diff.py --passes 31
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tunebench.report.diff import word_diff

EXAMPLE = Path(__file__).resolve().parents[1] / "evals" / "insurance"


def pairs() -> list[tuple[str, str]]:
    golden = {row["id"]: row["expected"] for row in map(json.loads, (EXAMPLE / "cases.jsonl").open())}
    return [(golden[row["id"]], row["output"]) for name in ("base.jsonl", "tuned.jsonl")
            for row in map(json.loads, (EXAMPLE / name).open()) if row["id"] in golden]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=15)
    args = parser.parse_args()
    data = pairs()
    walls = []
    for _ in range(args.passes):
        start = time.perf_counter()
        for golden, output in data:
            word_diff(golden, output)
        walls.append(time.perf_counter() - start)
    print(f"{len(data)} pairs: median {statistics.median(walls) * 1000:.1f} ms a pass "
          f"(min {min(walls) * 1000:.1f}, max {max(walls) * 1000:.1f}; {args.passes} passes)")


if __name__ == "__main__":
    main()
