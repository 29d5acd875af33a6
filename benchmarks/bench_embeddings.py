"""Benchmark: embedding_similarity's score_batch against raw sentence-transformers ``encode``.

Workload: real golden cases from the shared data (insurance_qa, domain_assistant, then product_description to
fill up), scored for two "models" (base and tuned) that share every golden, so ``--pairs`` output/golden pairs
hold ``pairs/2`` goldens plus ``pairs`` outputs. Outputs are built from real text: the base answer echoes the
question and the first sentence of the golden; the tuned answer is the golden with its sentences rotated.

Measured, on the same model object and the same distinct texts:
- raw: ``model.encode(distinct_texts, batch_size=B)`` -- the floor; it does no dedup, caching or scoring.
- metric, cold: a fresh metric instance with an empty cache directory scores base then tuned (hashing, dedup,
  model identity hash, sqlite writes, cosine) -- target >= 0.9x raw throughput; also both models in one call.
- metric, warm: a fresh instance on the same cache directory (every vector on disk), in this process and in a
  fresh Python process (which then never imports torch).

Run:  HF_HUB_OFFLINE=1 python benchmarks/bench_embeddings.py [--pairs 1000] [--batch-size 64] [--repeats 3]
      [--threads 1]   (wall times on a shared 2-core machine are noisy; with one thread CPU seconds are not)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

DATA_FILES = ("insurance_qa", "domain_assistant", "product_description")


def load_cases(data_dir: Path, n: int) -> list[dict]:
    cases: list[dict] = []
    for name in DATA_FILES:
        with (data_dir / f"{name}.shared.jsonl").open(encoding="utf-8") as f:
            cases += [json.loads(line) for line in f if line.strip()]
    if len(cases) < n:
        raise SystemExit(f"only {len(cases)} cases in {data_dir}, {n} needed")
    return cases[:n]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def build_samples(cases: list[dict]):
    from tunebench.records import Case, Output, Sample

    base, tuned = [], []
    for c in cases:
        case = Case(id=c["id"], input=c["input"], expected=c["expected"])
        sents = _sentences(c["expected"])
        base_text = f"{c['input']} {sents[0]}"
        tuned_text = " ".join(sents[1:] + sents[:1]) if len(sents) > 1 else c["expected"].lower()
        base.append(Sample(case, Output(case_id=case.id, model="base", repeat=0, text=base_text)))
        tuned.append(Sample(case, Output(case_id=case.id, model="tuned", repeat=0, text=tuned_text)))
    return base, tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=1000, help="output/golden pairs (two models share goldens)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating raw/metric runs; medians reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch CPU threads (0: torch's default); 1 makes CPU seconds comparable on a busy shared machine",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from tunebench.metrics import MetricContext
    from tunebench.metrics import embedding as emb

    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    base, tuned = build_samples(load_cases(args.data_dir, args.pairs // 2))
    samples = base + tuned
    distinct = list(dict.fromkeys(t for s in samples for t in (s.text, s.case.expected)))

    t0 = time.perf_counter()
    import sentence_transformers  # timed separately: every first score in a process pays it

    t_import = time.perf_counter() - t0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model_dir = emb._packaged_model_dir()
    t0 = time.perf_counter()
    model = emb._load_model(model_dir, args.device)  # the metric's own process-wide model: same object for both
    t_load = time.perf_counter() - t0
    model.encode(distinct[:64], batch_size=args.batch_size, show_progress_bar=False)  # warm-up, not timed

    factory = emb.embedding_similarity.__tunebench_metric__

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        return result, (time.perf_counter() - wall, time.process_time() - cpu)

    def cold_metric(cache_dir: Path):
        emb._identities.clear()  # a cold run pays for the model's content hash too
        options = {"batch_size": args.batch_size, "device": args.device}
        return factory.build(options, MetricContext(cache_dir=cache_dir))

    runs: dict[str, list[tuple[float, float]]] = {"raw": [], "cold": [], "cold1": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            raw, t = timed(lambda: model.encode(distinct, batch_size=args.batch_size, show_progress_bar=False))
            runs["raw"].append(t)

            # As the score stage calls it: once per model.
            metric = cold_metric(Path(tmp) / f"cold{r}")
            scores, t = timed(lambda m=metric: m.score_batch(base) + m.score_batch(tuned))
            runs["cold"].append(t)
            assert metric.texts_embedded == len(distinct), (metric.texts_embedded, len(distinct))

            # Both models in one call: one length-sorted encode, as the raw run.
            one = cold_metric(Path(tmp) / f"one{r}")
            one_scores, t = timed(lambda m=one: m.score_batch(samples))
            runs["cold1"].append(t)
            assert one.texts_embedded == len(distinct)
            assert np.allclose([s.value for s in one_scores], [s.value for s in scores], atol=1e-5)

            cache_dir = Path(tmp) / f"cold{r}"
            warm = factory.build({"batch_size": args.batch_size}, MetricContext(cache_dir=cache_dir))
            warm_scores, t = timed(lambda m=warm: m.score_batch(base) + m.score_batch(tuned))
            runs["warm"].append(t)
            assert warm.texts_embedded == 0 and [s.value for s in warm_scores] == [s.value for s in scores]

        # Sanity: the metric's values are the cosine of the raw vectors.
        index = {t: i for i, t in enumerate(distinct)}
        a = np.stack([raw[index[s.text]] for s in samples]).astype(np.float64)
        b = np.stack([raw[index[s.case.expected]] for s in samples]).astype(np.float64)
        ref = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        max_diff = float(np.max(np.abs(ref - np.array([s.value for s in scores]))))

        # A warm run in a fresh process: no torch import at all.
        script = textwrap.dedent(
            f"""
            import json, sys, time
            t0 = time.perf_counter()
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from bench_embeddings import build_samples, load_cases
            from pathlib import Path
            from tunebench.metrics import MetricContext
            from tunebench.metrics.embedding import embedding_similarity
            base, tuned = build_samples(load_cases(Path({str(args.data_dir)!r}), {args.pairs // 2}))
            m = embedding_similarity.__tunebench_metric__.build({{}}, MetricContext(cache_dir=Path({str(cache_dir)!r})))
            t1 = time.perf_counter()
            m.score_batch(base); m.score_batch(tuned)
            t2 = time.perf_counter()
            print(json.dumps({{"setup": t1 - t0, "score": t2 - t1, "embedded": m.texts_embedded,
                              "torch": "torch" in sys.modules}}))
            """
        )
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        fresh_wall = time.perf_counter() - t0
        fresh = json.loads(out.stdout)

    n = len(distinct)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    raw_s, raw_cpu = med["raw"]
    import torch

    print(f"Command: `HF_HUB_OFFLINE=1 python benchmarks/bench_embeddings.py --pairs {args.pairs} "
          f"--batch-size {args.batch_size} --repeats {args.repeats}"
          + (f" --threads {args.threads}" if args.threads else "") + "`  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (load average before: {load_before}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), sentence-transformers "
          f"{sentence_transformers.__version__}, device {args.device}, model all-MiniLM-L6-v2 (packaged)  ")
    print(f"Workload: {len(samples)} output/golden pairs ({len(base)} goldens shared by base and tuned), "
          f"{2 * len(samples)} texts, {n} distinct; medians of {args.repeats} alternating runs  ")
    print(f"Max |metric - raw cosine| = {max_diff:.2e}\n")
    print("| measurement | texts embedded | wall s | CPU s | distinct texts/s (wall) | vs raw (wall) | vs raw (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    def row(label: str, key: str, embedded: int) -> None:
        wall, cpu = med[key]
        print(f"| {label} | {embedded} | {wall:.3f} | {cpu:.2f} | {n / wall:.0f} | {raw_s / wall:.2f}× "
              f"| {raw_cpu / cpu:.2f}× |")

    row(f"raw `model.encode(distinct, batch_size={args.batch_size})`", "raw", n)
    row("metric cold cache: `score_batch(base)` + `score_batch(tuned)`", "cold", n)
    row("metric cold cache: `score_batch(base + tuned)`", "cold1", n)
    row("metric warm disk cache, same process", "warm", 0)
    f_score = fresh["score"]
    print(f"| metric warm disk cache, fresh process: score only | {fresh['embedded']} | {f_score:.3f} | "
          f"| {n / f_score:.0f} | {raw_s / f_score:.0f}× | |")
    print(f"| ↳ same, whole process (start, imports, data, score); torch imported: {fresh['torch']} | "
          f"{fresh['embedded']} | {fresh_wall:.2f} | | | | |")
    print(f"| one-off per process: `import sentence_transformers` | | {t_import:.2f} | | | | |")
    print(f"| one-off per process: model load | | {t_load:.2f} | | | | |")
    for key, label in (("raw", "raw"), ("cold", "metric cold (per model)"), ("cold1", "metric cold (one call)")):
        print(f"\n{label} runs (wall/CPU s): " + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in runs[key]), end="")
    print()

if __name__ == "__main__":
    main()
