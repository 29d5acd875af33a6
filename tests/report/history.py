"""Real run histories for the report tests: DuckDB stores in tmp_path written through the Store API.

Every run is scored by the real metrics (terminology, label, ROUGE via rouge-score), compared by the real paired
statistics (``paired.compare_sides``), judged by the real gates (``gates.evaluate_gates``) and stored with
``add_verdict``, as ``tunebench run`` does. Outputs follow a seeded script, with a few scenario cases whose
history is known exactly:

- ``case-newfail``: the candidate passes (``terms`` in the ``support`` kind of suite, ``intent`` in the
  ``triage`` kind) in runs 0–2 and fails from run 3 on (newly failing, first seen failing in run 3, last
  passed in run 2);
- ``case-oldfail``: the candidate fails in every run (failing since run 0, before the period);
- ``case-flaky``: the candidate alternates pass, fail, pass, … (unstable);
- ``case-removed``: only in runs 0–2; ``case-added``: only from run 4 on.

Two kinds of suite: ``support`` (metrics ``terms``: terminology, ``rougeL``: ROUGE-L) with answers to customer
messages, and ``triage`` (metric ``intent``: label classification, so a confusion matrix) with labels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tunebench.compare import summarize
from tunebench.gates import evaluate_gates
from tunebench.metrics.classification import label
from tunebench.metrics.rouge import rouge
from tunebench.metrics.terminology import terminology
from tunebench.paired import Side, compare_sides
from tunebench.records import Aggregate, Case, Output, Sample, Score
from tunebench.store import Store
from tunebench.suite import FloorGate, ImprovementGate, RegressionsGate

LABELS = ["refund", "shipping", "billing", "other"]
TERMS = ["deductible", "copay", "policyholder", "premium", "claim number", "out-of-pocket maximum"]
SENTENCE = ["please", "note", "that", "your", "request", "is", "being", "handled", "by", "our", "team", "today",
            "and", "we", "will", "follow", "up", "soon"]
SCENARIO = ("case-newfail", "case-oldfail", "case-flaky", "case-removed", "case-added")
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def _metrics(kind: str) -> list:
    if kind == "triage":
        intent = label(labels=LABELS)
        intent.name = "intent"
        return [intent]
    terms = terminology(forbidden=["cheap"], preferred={"policyholder": ["customer"]}, threshold=1.0)
    terms.name = "terms"
    rouge_l = rouge(variant="rougeL")
    rouge_l.name = "rougeL"
    return [terms, rouge_l]


def make_cases(n: int, kind: str = "support", seed: int = 3) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    ids = [*SCENARIO, *(f"case-{i:03d}" for i in range(n - len(SCENARIO)))]
    for i, cid in enumerate(ids):
        terms = rng.sample(TERMS, rng.randint(1, 3))
        gold = LABELS[i % len(LABELS)]
        words = [rng.choice(SENTENCE) for _ in range(rng.randint(6, 14))]
        if kind == "triage":
            cases.append(Case(id=cid, input=f"Customer message {i}: {' '.join(words)}?", expected=gold,
                              tags=(f"label:{gold}",) + (("critical",) if i % 3 == 0 else ()),
                              source=f"evals/triage.jsonl:{i + 1}"))
            continue
        expected = " ".join(words[:3] + terms[:1] + words[3:] + terms[1:]) + "."
        tags = (rng.choice(["billing", "claims", "travel"]),) + (("critical",) if i % 3 == 0 else ())
        cases.append(Case(id=cid, input=f"Customer message {i}: {' '.join(words[:5])}?", expected=expected,
                          tags=tags, vars={"required_terms": terms}, source=f"evals/support.jsonl:{i + 1}"))
    return cases


def _text(rng: random.Random, case: Case, kind: str, *, ok: bool, bad: bool = False) -> str:
    if kind == "triage":
        # Wrong answers favour one confusion (refund → billing) so the matrices have structure.
        if ok:
            return rng.choice(["", "Label: "]) + case.expected
        if case.expected == "refund" and rng.random() < 0.7:
            return "billing"
        return rng.choice([*(lab for lab in LABELS if lab != case.expected), "no idea"])
    body = case.expected.split()
    if not ok:
        body = " ".join(body).replace(case.vars["required_terms"][0], "thing").split()  # a required term missing
    for _ in range(rng.randint(0, 3)):
        body.insert(rng.randint(0, len(body)), rng.choice(SENTENCE))
    text = " ".join(body)
    if bad:
        text += " It is cheap for every customer."
    return text


@dataclass
class Plan:
    """What one run looks like."""

    started_at: datetime
    candidate: str
    models: list[str] = field(default_factory=lambda: ["base"])
    tags: list[str] = field(default_factory=list)
    status: str = "completed"


def default_plans(now: datetime = NOW) -> list[Plan]:
    """Six runs a day apart ending a day before ``now``; the candidate changes at run 3; tags move."""
    plans = []
    for k in range(6):
        cand = "tuned-v1" if k < 3 else "tuned-v2"
        tags = {2: ["production"], 4: ["production"], 5: ["staging"]}.get(k, [])
        plans.append(Plan(now - timedelta(days=6 - k, hours=k), cand, ["base", cand], tags))
    return plans


def _tuned_ok(case_id: str, k: int, rng: random.Random, kind: str) -> bool:
    if case_id == "case-newfail":
        return k < 3
    if case_id == "case-oldfail":
        return False
    if case_id == "case-flaky":
        return k % 2 == 0
    return True if kind == "support" else rng.random() < 0.85


def suite_gates(kind: str) -> list:
    if kind == "triage":
        return [ImprovementGate(name="intent improves", kind="improvement", metric="intent"),
                RegressionsGate(name="few intent regressions", kind="max_regressions", metric="intent", max=2)]
    return [ImprovementGate(name="terms improve", kind="improvement", metric="terms", significant=True),
            RegressionsGate(name="no critical terms regressions", kind="max_regressions", metric="terms", max=0,
                            tag="critical"),
            FloorGate(name="rougeL floor", kind="floor", metric="rougeL", min=0.5)]


def compare_run(store: Store, run_id: str):
    """The run's paired comparison, recomputed exactly as ``write_run`` stored it."""
    run = store.get_run(run_id)
    directions = {m["metric"]: m["higher_is_better"] for m in store.get_metrics(run_id)}
    return compare_sides(store, Side(run_id, run["baseline"]), Side(run_id, run["candidate"]), directions,
                         n_resamples=2000)


def run_report(store: Store, run_id: str, kind: str = "support"):
    """The RunReport of a stored run, built by ``render.build_report`` as ``tunebench run`` builds it."""
    from tunebench.render import build_report

    summary = summarize(store, run_id)
    comparison = compare_run(store, run_id)
    tags_of = {c.id: c.tags for c in store.get_cases(run_id)}
    gates = evaluate_gates(suite_gates(kind), summary, comparison, tags_of)
    return build_report(store, run_id, summary, comparison.to_json(), [g.to_json() for g in gates])


def write_run(store: Store, suite: str, plan: Plan, k: int, cases: list[Case], *, kind: str = "support",
              seed: int = 11) -> str:
    """One complete run: models, metrics, cases, outputs, real scores and aggregates, verdict, tags."""
    rng = random.Random(seed * 1000 + k)
    run_cases = [c for c in cases if not ((c.id == "case-removed" and k > 2) or (c.id == "case-added" and k < 4))]
    baseline, candidate = plan.models[0], plan.candidate
    run_id = store.start_run({"suite_name": suite, "suite_path": f"suites/{suite}.yaml", "suite_hash": "h",
                              "tunebench_version": "0.1.0", "baseline": baseline if len(plan.models) > 1 else None,
                              "candidate": candidate, "started_at": plan.started_at,
                              "run_id": f"{plan.started_at:%Y%m%dT%H%M%S}-{suite[:4]}{k:02d}"})
    store.add_models(run_id, [{"model": m, "runner": "mock", "identity": {"name": m}, "identity_hash": m}
                              for m in plan.models])
    metrics = _metrics(kind)
    store.add_metrics(run_id, [{"metric": m.name, "kind": m.kind, "config": {"threshold": m.threshold},
                                "higher_is_better": m.higher_is_better} for m in metrics])
    store.add_cases(run_id, run_cases)
    outputs, scores, aggregates = [], [], []
    for model in plan.models:
        is_base = model == baseline and len(plan.models) > 1
        samples = []
        for case in run_cases:
            if not is_base and case.id.endswith("7") and k == 5:
                out = Output(case_id=case.id, model=model, repeat=0, text="", error="HTTP 503 after 3 attempts")
            else:
                ok = rng.random() < 0.6 if is_base else _tuned_ok(case.id, k, rng, kind)
                bad = (not is_base) and case.id.endswith("4")
                out = Output(case_id=case.id, model=model, repeat=0, text=_text(rng, case, kind, ok=ok, bad=bad),
                             latency_ms=100.0 + rng.random() * 50)
            outputs.append(out)
            samples.append(Sample(case, out))
        for metric in metrics:
            ok = [s for s in samples if not s.output.error]
            scored = dict(zip([s.case.id for s in ok], metric.score_batch(ok), strict=True))
            per_case = [scored.get(s.case.id) or Score(value=None, error=f"output was an error: {s.output.error}")
                        for s in samples]
            scores += [(s.case.id, model, 0, metric.name, sc) for s, sc in zip(samples, per_case, strict=True)]
            aggregates.append((model, metric.name, metric.aggregate(per_case)))
    store.add_outputs(run_id, outputs)
    store.add_scores(run_id, scores)
    store.add_aggregates(run_id, aggregates)
    if len(plan.models) > 1:
        comparison = compare_run(store, run_id)
        gates = evaluate_gates(suite_gates(kind), summarize(store, run_id), comparison,
                               {c.id: c.tags for c in run_cases})
        store.add_verdict(run_id, comparison.to_json(), [g.to_json() for g in gates])
    if plan.status != "running":
        store.finish_run(run_id, plan.status)
    for tag in plan.tags:
        store.tag_run(run_id, tag)
    return run_id


def build_history(path: Path, *, plans: list[Plan] | None = None, suite: str = "support-bot", kind: str = "support",
                  n_cases: int = 30, store: Store | None = None) -> list[str]:
    """Write the runs of ``plans`` (default ``default_plans()``) to the store at ``path``; returns run ids."""
    cases = make_cases(n_cases, kind)
    own = store is None
    store = store or Store.open(path)
    try:
        return [write_run(store, suite, plan, k, cases, kind=kind) for k, plan in enumerate(plans or default_plans())]
    finally:
        if own:
            store.close()


def aggregate_values(store: Store, run_id: str) -> dict[tuple[str, str], Aggregate]:
    return {(model, metric): agg for model, metric, agg in store.get_aggregates(run_id)}
