"""The DuckDB store against real files in tmp_path: round trips, upserts, migrations, locking, docs SQL."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from tunebench.errors import ConfigError, StoreError, StoreLockedError
from tunebench.migrations import FORMAT_VERSION, MIGRATIONS, Migration, applied_migrations, migrate
from tunebench.records import Aggregate, Case, Output, Score
from tunebench.store import Store, case_content_hash, read_table_file

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "store.md"

CASES = [
    Case(id="refund-003", input="Can I get a refund <b>now</b>?", expected="Yes, within 30 days.",
         tags=("critical", "label:refund"), vars={"glossary": ["refund"], "n": 2},
         messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Refund?"}),
         source="evals/support.jsonl:3"),
    Case(id="claim-001", input="Is flood covered? — ünïcode ✓", expected="Only with the flood add-on.",
         source="evals/support.jsonl:1"),
    Case(id="glass-002", input="Windscreen chip", expected="Covered, no excess.", tags=("glass",)),
]


def _output(case_id: str, model: str, text: str, **kw) -> Output:
    return Output(case_id=case_id, model=model, repeat=kw.pop("repeat", 0), text=text, **kw)


def _populate(store: Store, *, suite: str = "support", started_at: datetime | None = None,
              tuned_quality: float = 0.8) -> str:
    """One complete run: base and tuned models, 3 cases, outputs, rouge_l and exact scores, aggregates."""
    run_id = store.start_run({"suite_name": suite, "suite_path": "suites/support.yaml", "suite_hash": "h1",
                              "tunebench_version": "0.1.0", "baseline": "base", "candidate": "tuned",
                              "started_at": started_at, "options": {"limit": None, "seed": 7}})
    store.add_models(run_id, [{"model": "base", "runner": "mock", "identity": {"name": "b"}, "identity_hash": "1"},
                              {"model": "tuned", "runner": "mock", "identity": {"name": "t"}, "identity_hash": "2"}])
    store.add_metrics(run_id, [{"metric": "rouge_l", "kind": "rouge", "config": {"variant": "rougeL"},
                                "higher_is_better": True},
                               {"metric": "exact", "kind": "exact_match", "higher_is_better": True}])
    store.add_cases(run_id, CASES)
    outputs, scores = [], []
    for k, case in enumerate(CASES):
        for model, quality in (("base", 0.4), ("tuned", tuned_quality)):
            failed = model == "base" and k == 2
            outputs.append(_output(case.id, model, "" if failed else f"{model} says {case.expected}",
                                   error="HTTP 500" if failed else None, latency_ms=10.0 + k))
            value = None if failed else quality - k / 10
            scores.append((case.id, model, 0, "rouge_l",
                           Score(value=value, passed=None if failed else value > 0.5,
                                 details={} if failed else {"lcs": k}, error="output was an error" if failed
                                 else None)))
            scores.append((case.id, model, 0, "exact", Score(value=0.0 if failed else 1.0)))
    store.add_outputs(run_id, outputs)
    store.add_scores(run_id, scores)
    store.add_aggregates(run_id, [(m, "rouge_l", Aggregate(value=0.5, n=3, n_errors=0, pass_rate=0.5,
                                                           details={"ci": [0.4, 0.6]}))
                                  for m in ("base", "tuned")])
    store.add_verdict(run_id, {"metrics": {"rouge_l": {"delta": tuned_quality - 0.4}}}, [
        {"name": "rouge floor", "kind": "floor", "passed": True, "message": "rouge_l 0.6 >= 0.5",
         "numbers": {"value": 0.6, "threshold": 0.5}},
        {"name": "no regressions", "kind": "regressions", "passed": False, "message": "1 regression > 0",
         "flips": [{"case_id": "glass-002", "baseline": 0.5, "candidate": 0.1, "change": -0.4}]},
    ])
    store.finish_run(run_id)
    return run_id


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "sub" / "runs.duckdb") as s:
        yield s


# ---------------------------------------------------------------------------------------------- round trips


def test_every_record_type_round_trips(store: Store) -> None:
    started = datetime(2025, 1, 14, 9, 30, 12)  # naive: taken as UTC
    run_id = store.start_run({"suite_name": "support", "suite_hash": "h1", "started_at": started,
                              "options": {"limit": 5, "filter": ["critical"], "overrides": {"a": {"b": 1}}},
                              "baseline": "base", "candidate": "tuned", "git_commit": "abc123"})
    assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{6}", run_id)  # generated: sorts by time
    run = store.get_run(run_id)
    assert run["started_at"] == started.replace(tzinfo=UTC) and run["started_at"].utcoffset() == timedelta(0)
    assert run["options"] == {"limit": 5, "filter": ["critical"], "overrides": {"a": {"b": 1}}}
    assert (run["status"], run["finished_at"], run["tags"]) == ("running", None, [])
    assert (run["baseline"], run["candidate"], run["git_commit"]) == ("base", "tuned", "abc123")

    models = [{"model": "tuned", "runner": "openai", "identity": {"url": "http://x", "temperature": 0.0},
               "identity_hash": "9f"},
              {"model": "base", "runner": "hf", "identity": None, "identity_hash": None}]
    store.add_models(run_id, models)
    assert store.get_models(run_id) == models
    metrics = [{"metric": "rouge_l", "kind": "rouge", "config": {"variant": "rougeL"}, "higher_is_better": True},
               {"metric": "latency", "kind": "latency", "config": None, "higher_is_better": False}]
    store.add_metrics(run_id, metrics)
    assert store.get_metrics(run_id) == metrics

    store.add_cases(run_id, CASES)
    assert store.get_cases(run_id) == CASES

    outputs = [
        _output("refund-003", "tuned", "Sure <script>alert(1)</script>", latency_ms=12.5, prompt_tokens=20,
                completion_tokens=7, finish_reason="stop", attempts=2, cached=False,
                request={"messages": [{"role": "user", "content": "Refund?"}], "temperature": 0.0}),
        _output("refund-003", "tuned", "", repeat=1, error="timeout after 3 attempts", attempts=3),
        _output("claim-001", "base", "ünïcode ✓ answer", cached=True, latency_ms=3),
    ]
    store.add_outputs(run_id, outputs)
    got = list(store.iter_outputs(run_id))
    # Ordered by model position (tuned was added first), then case position, then repeat.
    assert got == [outputs[0], outputs[1], outputs[2]]
    assert isinstance(got[2].latency_ms, float)
    assert list(store.iter_outputs(run_id, model="base")) == [outputs[2]]

    scores = [("refund-003", "tuned", 0, "rouge_l", Score(value=0.75, passed=True, explanation="missing: days",
                                                          details={"matched": ["refund"], "p": 0.5})),
              ("refund-003", "tuned", 1, "rouge_l", Score(value=None, error="output was an error")),
              ("claim-001", "base", 0, "latency", Score(value=3.0))]
    store.add_scores(run_id, scores)
    assert store.get_scores(run_id) == [scores[0], scores[1], scores[2]]
    assert store.get_scores(run_id, model="base") == [scores[2]]
    assert store.get_scores(run_id, metric="rouge_l", model="tuned") == scores[:2]

    aggregates = [("tuned", "rouge_l", Aggregate(value=0.75, n=1, n_errors=1, pass_rate=1.0,
                                                 details={"per_class": {"a": 1}})),
                  ("base", "latency", Aggregate(value=None, n=0))]
    store.add_aggregates(run_id, aggregates)
    assert store.get_aggregates(run_id) == aggregates

    store.finish_run(run_id, "completed")
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["finished_at"] >= run["started_at"]


def test_verdict_and_summaries(store: Store) -> None:
    run_id = _populate(store)
    assert store.get_comparison(run_id) == {"metrics": {"rouge_l": {"delta": pytest.approx(0.4)}}}
    gates = store.get_gate_results(run_id)
    assert [(g["name"], g["passed"]) for g in gates] == [("rouge floor", True), ("no regressions", False)]
    assert gates[0]["numbers"] == {"value": 0.6, "threshold": 0.5} and gates[0]["flips"] == []
    assert gates[1]["flips"][0]["case_id"] == "glass-002"
    store.add_verdict(run_id, None, [{"name": "g", "kind": "floor", "passed": True, "message": "ok"}])
    assert store.get_comparison(run_id) is None
    assert [g["name"] for g in store.get_gate_results(run_id)] == ["g"]
    assert store.output_counts(run_id) == {"base": (3, 1), "tuned": (3, 0)}
    assert store.case_hashes(run_id) == {c.id: case_content_hash(c) for c in CASES}
    assert len(set(store.case_hashes(run_id).values())) == 3
    assert store.tags_of(run_id) == []
    store.tag_run(run_id, "production")
    store.tag_run(run_id, "candidate")
    assert store.tags_of(run_id) == ["candidate", "production"]


def test_sql_types_are_what_the_docs_promise(store: Store) -> None:
    run_id = _populate(store)
    row = store.query(
        "SELECT typeof(o.request) AS request, typeof(o.created_at) AS created_at, typeof(c.tags) AS tags, "
        "typeof(s.details) AS details, s.details ->> 'lcs' AS lcs, c.vars -> 'glossary' ->> 0 AS word, "
        "c.content_hash FROM outputs o JOIN cases c USING (run_id, case_id) "
        "JOIN scores s USING (run_id, case_id, model, repeat) "
        "WHERE o.run_id = ? AND o.case_id = 'refund-003' AND o.model = 'tuned' AND s.metric = 'rouge_l'",
        [run_id])
    assert row == [{"request": "JSON", "created_at": "TIMESTAMP WITH TIME ZONE", "tags": "VARCHAR[]",
                    "details": "JSON", "lcs": "0", "word": "refund", "content_hash": case_content_hash(CASES[0])}]
    assert store.query("SELECT value FROM store_meta WHERE key = 'format_version'") == [
        {"value": str(FORMAT_VERSION)}]


def test_a_success_replaces_an_error_output_on_resume(store: Store) -> None:
    run_id = _populate(store)
    assert ("glass-002", "base", 0) not in store.done_jobs(run_id)
    assert len(store.done_jobs(run_id)) == 5
    store.add_outputs(run_id, [_output("glass-002", "base", "Covered.", attempts=2)])
    assert ("glass-002", "base", 0) in store.done_jobs(run_id)
    rows = store.query("SELECT text, error, attempts FROM outputs WHERE run_id = ? AND case_id = 'glass-002' "
                       "AND model = 'base'", [run_id])
    assert rows == [{"text": "Covered.", "error": None, "attempts": 2}]
    assert store.query("SELECT count(*) AS n FROM outputs WHERE run_id = ?", [run_id]) == [{"n": 6}]


def test_duplicates_in_one_batch_keep_the_last(store: Store) -> None:
    run_id = store.start_run({"suite_name": "s"})
    store.add_outputs(run_id, [_output("a", "m", "", error="boom"), _output("a", "m", "fixed")])
    assert [o.text for o in store.iter_outputs(run_id)] == ["fixed"]
    store.add_scores(run_id, [("a", "m", 0, "x", Score(value=1.0)), ("a", "m", 0, "x", Score(value=2.0))])
    assert [s.value for *_, s in store.get_scores(run_id)] == [2.0]


def test_scores_and_aggregates_are_replaced_not_duplicated(store: Store) -> None:
    run_id = _populate(store)
    store.add_scores(run_id, [("refund-003", "tuned", 0, "rouge_l", Score(value=0.1, explanation="re-scored"))])
    store.add_aggregates(run_id, [("tuned", "rouge_l", Aggregate(value=0.1, n=3))])
    assert store.query("SELECT count(*) AS n FROM scores WHERE run_id = ?", [run_id]) == [{"n": 12}]
    assert store.get_scores(run_id, model="tuned", metric="rouge_l")[0][4] == Score(value=0.1,
                                                                                   explanation="re-scored")
    assert dict(((m, k), a) for m, k, a in store.get_aggregates(run_id))[("tuned", "rouge_l")] == Aggregate(
        value=0.1, n=3)
    assert len(store.get_aggregates(run_id)) == 2


def test_outputs_and_scores_written_without_replace_are_appended_as_given(store: Store) -> None:
    """``replace=False`` (a new run, each output written once) appends without looking for stored keys: the same
    rows as replacing when no key is stored, and -- the caller's promise broken -- a second row when one is."""
    fresh, replaced = store.start_run({"suite_name": "s"}), store.start_run({"suite_name": "s"})
    outputs = [_output(f"c{i}", m, f"answer {i}", latency_ms=float(i)) for i in range(300) for m in ("a", "b")]
    scores = [(f"c{i}", m, 0, "x", Score(value=i / 300, passed=i % 2 == 0)) for i in range(300) for m in ("a", "b")]
    store.add_outputs(fresh, outputs[:200], replace=False)
    store.add_outputs(fresh, outputs[200:], replace=False)
    store.add_scores(fresh, scores, replace=False)
    store.add_outputs(replaced, outputs)
    store.add_scores(replaced, scores)
    columns = "case_id, model, repeat, text, latency_ms, text_key"
    assert store.query(f"SELECT {columns} FROM outputs WHERE run_id = ? ORDER BY ALL", [fresh]) == \
        store.query(f"SELECT {columns} FROM outputs WHERE run_id = ? ORDER BY ALL", [replaced])
    assert store.get_scores(fresh) == store.get_scores(replaced)
    store.add_outputs(fresh, [_output("c0", "a", "again")], replace=False)
    assert store.query("SELECT count(*) AS n FROM outputs WHERE run_id = ? AND case_id = 'c0' AND model = 'a'",
                       [fresh]) == [{"n": 2}]


def test_re_added_cases_keep_their_position(store: Store) -> None:
    run_id = store.start_run({"suite_name": "s"})
    store.add_cases(run_id, CASES[:2])
    changed = Case(id="claim-001", input="changed", expected="x")
    store.add_cases(run_id, [changed, CASES[2]])
    assert [c.id for c in store.get_cases(run_id)] == ["refund-003", "claim-001", "glass-002"]
    assert store.get_cases(run_id)[1] == changed
    with pytest.raises(StoreError, match="appears twice"):
        store.add_cases(run_id, [CASES[0], CASES[0]])


def test_outputs_stream_while_scores_are_written(store: Store) -> None:
    run_id = store.start_run({"suite_name": "s"})
    store.add_outputs(run_id, [_output(f"c{i:03d}", "m", f"t{i}") for i in range(25)])
    seen = []
    for out in store.iter_outputs(run_id, batch_size=4):
        seen.append(out.case_id)
        store.add_scores(run_id, [(out.case_id, out.model, out.repeat, "len", Score(value=len(out.text)))])
    assert seen == [f"c{i:03d}" for i in range(25)]
    assert len(store.get_scores(run_id)) == 25


def test_concurrent_writers_in_one_process(store: Store) -> None:
    run_id = store.start_run({"suite_name": "s"})

    def write(model: str) -> None:
        for k in range(10):
            store.add_outputs(run_id, [_output(f"c{k}-{i}", model, "x") for i in range(20)])

    threads = [threading.Thread(target=write, args=(f"m{t}",)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.query("SELECT count(*) AS n FROM outputs") == [{"n": 800}]


def test_model_output_with_lone_surrogates_is_stored(store: Store) -> None:
    run_id = store.start_run({"suite_name": "s"})
    store.add_outputs(run_id, [_output("a", "m", "bad \ud800 byte", request={"p": "\udfff"}),
                               _output("b", "m", "fine")])
    assert [o.text for o in store.iter_outputs(run_id)] == ["bad \ufffd byte", "fine"]
    assert next(store.iter_outputs(run_id)).request == {"p": "\ufffd"}


def test_secrets_never_reach_the_store(store: Store) -> None:
    run_id = store.start_run({"suite_name": "s", "options": {"api_key": "sk-live-1", "limit": 3}})
    store.add_models(run_id, [{"model": "m", "runner": "openai",
                               "identity": {"base_url": "http://h", "headers": {"Authorization": "Bearer sk-live-2"}}}])
    store.add_outputs(run_id, [_output("a", "m", "x", request={"messages": [], "extra": {"API-Key": "sk-live-3"},
                                                              "max_tokens": 5})])
    dumped = json.dumps(store.query("SELECT r.options, m.identity, o.request FROM runs r JOIN models m "
                                    "USING (run_id) JOIN outputs o USING (run_id)"), default=str)
    assert "sk-live" not in dumped and dumped.count("[redacted]") == 3
    assert store.get_run(run_id)["options"] == {"api_key": "[redacted]", "limit": 3}
    assert next(store.iter_outputs(run_id)).request["max_tokens"] == 5  # "token" alone is not a secret


def test_unserialisable_details_name_the_row(store: Store) -> None:
    run_id = store.start_run({"suite_name": "s"})
    with pytest.raises(StoreError, match=r"details of rouge_l for case 'c1'.*object is not JSON"):
        store.add_scores(run_id, [("c1", "m", 0, "rouge_l", Score(value=1.0, details={"x": object()}))])


def test_writes_need_an_existing_run_and_valid_status(store: Store) -> None:
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.add_outputs("nope", [_output("a", "m", "x")])
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.finish_run("nope")
    run_id = store.start_run({"suite_name": "s"})
    with pytest.raises(ValueError, match="status 'done'"):
        store.finish_run(run_id, "done")
    with pytest.raises(StoreError, match="already exists"):
        store.start_run({"suite_name": "s", "run_id": run_id})
    with pytest.raises(ValueError, match="unknown key"):
        store.start_run({"suite_name": "s", "sute_hash": "typo"})


# ---------------------------------------------------------------------------------------------- finding runs


def test_resolve_run_by_id_prefix_tag_and_latest(store: Store) -> None:
    with pytest.raises(StoreError, match="has no runs yet"):
        store.resolve_run("latest")
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    first = _populate(store, started_at=t0)
    second = store.start_run({"suite_name": "support", "run_id": "20250102T000000-abcdef",
                              "started_at": t0 + timedelta(days=1)})
    assert store.resolve_run("latest") == second
    assert store.resolve_run(second) == second
    assert store.resolve_run("20250102T00") == second
    store.tag_run(first, "production")
    assert store.resolve_run("production") == first
    assert store.get_run(first)["tags"] == ["production"]
    store.tag_run(second, "production")  # moves the tag, keeps its history
    assert store.resolve_run("production") == second
    assert store.get_run(first)["tags"] == []
    assert [r["run_id"] for r in store.query("SELECT run_id FROM run_tags ORDER BY tagged_at")] == [first, second]

    store.start_run({"suite_name": "support", "run_id": "20250102T000000-abc999"})
    with pytest.raises(StoreError, match="matches several runs"):
        store.resolve_run("20250102T000000-abc")
    with pytest.raises(StoreError) as err:
        store.resolve_run("nightly")
    assert second in str(err.value) and "tags: production" in str(err.value)
    with pytest.raises(StoreError, match="reserved"):
        store.tag_run(first, "latest")
    with pytest.raises(StoreError, match="one word"):
        store.tag_run(first, "two words")


def test_list_runs_and_find_resumable(store: Store) -> None:
    t0 = datetime(2025, 3, 1, tzinfo=UTC)
    ids = [store.start_run({"suite_name": suite, "suite_hash": "h", "started_at": t0 + timedelta(hours=k)})
           for k, suite in enumerate(["a", "b", "a", "a"])]
    assert [r["run_id"] for r in store.list_runs()] == ids[::-1]
    assert [r["run_id"] for r in store.list_runs(suite_name="a")] == [ids[3], ids[2], ids[0]]
    assert [r["run_id"] for r in store.list_runs(since=t0 + timedelta(hours=1), until=t0 + timedelta(hours=3))
            ] == [ids[2], ids[1]]
    assert [r["run_id"] for r in store.list_runs(limit=2)] == [ids[3], ids[2]]

    store.finish_run(ids[3], "completed")
    store.finish_run(ids[2], "interrupted")
    assert store.find_resumable("a", "h")["run_id"] == ids[2]
    assert store.find_resumable("a", "other-hash") is None
    store.finish_run(ids[2], "failed")
    assert store.find_resumable("a", "h")["run_id"] == ids[0]  # still 'running': it crashed
    store.resume_run(ids[2])
    assert store.get_run(ids[2])["status"] == "running" and store.get_run(ids[2])["finished_at"] is None


# ---------------------------------------------------------------------------------------------- migrations


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    Store.open(path).close()
    with Store.open(path) as store:
        assert [r["name"] for r in store.query("SELECT name FROM _migrations")] == [m.name for m in MIGRATIONS]
    conn = duckdb.connect(str(path))
    try:
        assert migrate(conn) == []
    finally:
        conn.close()


def test_an_old_store_gets_newer_migrations_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    with Store.open(path) as store:
        run_id = _populate(store)

    def m900_add_note(conn) -> None:
        conn.execute("ALTER TABLE runs ADD COLUMN note VARCHAR")

    newer = [*MIGRATIONS, Migration("m900_add_note", m900_add_note)]
    conn = duckdb.connect(str(path))
    try:
        assert migrate(conn, newer) == ["m900_add_note"]
        assert migrate(conn, newer) == []
        assert applied_migrations(conn) == [*(m.name for m in MIGRATIONS), "m900_add_note"]
        assert conn.execute("SELECT count(*), count(note) FROM runs WHERE run_id = ?", [run_id]).fetchall() == [
            (1, 0)]
    finally:
        conn.close()
    # This tunebench does not know m900: the file now belongs to a newer version.
    with pytest.raises(StoreError, match="newer tunebench"):
        Store.open(path)


def _text_key(text: str) -> int:
    """DuckDB's md5_number (the digest read little-endian) of the text as str.split() normalises it."""
    return int.from_bytes(hashlib.md5(" ".join(text.split()).encode()).digest(), "little")


TEXTS = ["The  deductible\tapplies.\n", " The deductible applies. ", "the deductible applies.", "",
         "caf\u00e9\u00a0au\u2003lait\u200b", "\u3000"]


def test_the_output_text_key_is_written_with_the_output_and_added_to_old_stores(tmp_path: Path) -> None:
    old = tmp_path / "old.duckdb"
    conn = duckdb.connect(str(old))
    try:  # a store as the first release wrote it: outputs without text_key
        migrate(conn, MIGRATIONS[:1])
        conn.execute("INSERT INTO runs (run_id, suite_name, started_at, status) VALUES ('r1', 's', now(), "
                     "'completed')")
        for i, text in enumerate(TEXTS):
            conn.execute("INSERT INTO outputs (run_id, case_id, model, repeat, text, attempts, cached, created_at) "
                         "VALUES ('r1', ?, 'm', 0, ?, 1, false, now())", [f"c{i}", text])
    finally:
        conn.close()
    with Store.open(old) as store:  # migrated on open
        rows = store.query("SELECT text, text_key FROM outputs ORDER BY case_id")
        assert [r["text_key"] for r in rows] == [_text_key(t) for t in TEXTS]
        run_id = store.start_run({"suite_name": "s"})
        store.add_outputs(run_id, [_output(f"c{i}", "m", t) for i, t in enumerate(TEXTS)])
        rows = store.query("SELECT text_key FROM outputs WHERE run_id = ? ORDER BY case_id", [run_id])
        assert [r["text_key"] for r in rows] == [_text_key(t) for t in TEXTS]
    assert _text_key(TEXTS[0]) == _text_key(TEXTS[1]) != _text_key(TEXTS[2])


def test_large_tables_are_written_in_small_row_groups(tmp_path: Path) -> None:
    """Row groups of 2,048 rows, not DuckDB's 122,880: a checkpoint rewrites only the last, small one."""
    with Store.open(tmp_path / "runs.duckdb") as store:
        run_id = store.start_run({"suite_name": "s"})
        store.add_outputs(run_id, [_output(f"c{i:05d}", "m", f"answer {i}") for i in range(5000)])
        store._release()
        groups = store.query("SELECT count(DISTINCT row_group_id) AS n FROM pragma_storage_info('outputs')")
        assert groups == [{"n": 3}]


def test_a_failing_migration_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    Store.open(path).close()

    def m901_half_done(conn) -> None:
        conn.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("boom")

    conn = duckdb.connect(str(path))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            migrate(conn, [*MIGRATIONS, Migration("m901_half_done", m901_half_done)])
        assert applied_migrations(conn) == [m.name for m in MIGRATIONS]
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'half'"
                            ).fetchall() == [(0,)]
    finally:
        conn.close()


def test_read_only_open_refuses_writes_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    with pytest.raises(StoreError, match="no store at"):
        Store.open(path, read_only=True)
    with Store.open(path) as store:
        run_id = _populate(store)
    with Store.open(path, read_only=True) as store:
        assert store.get_run(run_id)["status"] == "completed"
        with pytest.raises(StoreError, match="read-only"):
            store.tag_run(run_id, "production")


# ---------------------------------------------------------------------------------------------- bad files, locks


def test_files_that_are_not_stores(tmp_path: Path) -> None:
    junk = tmp_path / "junk.duckdb"
    junk.write_text("this is not a database\n" * 100)
    with pytest.raises(StoreError, match=re.escape(str(junk)) + ".*not a DuckDB database file"):
        Store.open(junk)

    corrupt = tmp_path / "corrupt.duckdb"
    with Store.open(corrupt) as store:
        _populate(store)
    data = bytearray(corrupt.read_bytes())
    data[4096:8192] = bytes(range(256)) * 16  # DuckDB's database header block
    corrupt.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=re.escape(str(corrupt)) + " is corrupt"):
        Store.open(corrupt)

    other = tmp_path / "other.duckdb"
    conn = duckdb.connect(str(other))
    conn.execute("CREATE TABLE sales (x INTEGER)")
    conn.close()
    with pytest.raises(StoreError, match="not a tunebench store"):
        Store.open(other)

    with pytest.raises(StoreError, match="is a folder"):
        Store.open(tmp_path)


HOLDER = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1], read_only=sys.argv[3] == "ro")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.close()
"""


def _hold(path: Path, seconds: float, mode: str = "rw") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds), mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_second_process_holding_the_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    Store.open(path).close()
    proc = _hold(path, 30)
    try:
        start = time.monotonic()
        with pytest.raises(StoreLockedError) as err:
            Store.open(path, wait_s=1.0)
        waited = time.monotonic() - start
        with pytest.raises(StoreLockedError):
            Store.open(path, read_only=True, wait_s=0)
    finally:
        proc.kill()
        proc.wait()
    assert 1.0 <= waited < 4.0
    message = str(err.value)
    assert str(path) in message and f"PID {proc.pid}" in message and "--db" in message and "wait" in message


def test_the_store_opens_once_the_other_process_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    with Store.open(path) as store:
        run_id = _populate(store)
    proc = _hold(path, 1.0)
    try:
        start = time.monotonic()
        with Store.open(path, wait_s=10.0) as store:
            waited = time.monotonic() - start
            assert store.get_run(run_id)["status"] == "completed"
    finally:
        proc.wait()
    assert 0.5 < waited < 10.0


def test_read_only_readers_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    with Store.open(path) as store:
        run_id = _populate(store)
    proc = _hold(path, 30, "ro")
    try:
        with Store.open(path, read_only=True, wait_s=0) as store:
            assert store.resolve_run("latest") == run_id
    finally:
        proc.kill()
        proc.wait()


def test_importing_the_store_does_not_import_duckdb() -> None:
    code = "import sys, tunebench.store; print('duckdb' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_only_the_store_modules_import_duckdb() -> None:
    pattern = re.compile(r"^\s*(import duckdb|from duckdb\b)", re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "src" / "tunebench").rglob("*.py")
                 if p.name not in ("store.py", "storeio.py", "migrations.py", "tablefile.py", "storeformat.py")
                 and pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


# ---------------------------------------------------------------------------------------------- table files


def test_read_csv_rows_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "golden.csv"
    path.write_bytes('\ufeffid,input,expected\n007,"Hello, world","two\nlines"\n8,"é",\n9,x,y\n'.encode())
    assert list(read_table_file(path)) == [
        (2, {"id": "007", "input": "Hello, world", "expected": "two\nlines"}),
        (4, {"id": "8", "input": "é", "expected": None}),
        (5, {"id": "9", "input": "x", "expected": "y"}),
    ]
    tsv = tmp_path / "golden.tsv.gz"
    with gzip.open(tsv, "wt", encoding="utf-8") as fh:
        fh.write("id\tinput\n1\ta,b\n")
    assert list(read_table_file(tsv)) == [(2, {"id": "1", "input": "a,b"})]


def test_read_parquet_rows(tmp_path: Path) -> None:
    path = tmp_path / "golden.parquet"
    conn = duckdb.connect()
    conn.execute(f"COPY (SELECT 'c' || i AS id, i AS n, ['t', 'u'] AS tags FROM range(1, 4) t(i)) "
                 f"TO '{path}' (FORMAT parquet)")
    conn.close()
    assert list(read_table_file(path)) == [(i, {"id": f"c{i}", "n": i, "tags": ["t", "u"]}) for i in (1, 2, 3)]


@pytest.mark.parametrize(("name", "content", "line", "message"), [
    ("extra.csv", b"id,input\n1,a\n2,b,c\n", 3, "this row has 3 fields but the header has 2"),
    ("quote.csv", b'id,input\n1,"open\n2,b\n', 2, "a quoted field is never closed"),
    ("latin.csv", b"id,input\n1,caf\xe9\n", 2, "this line is not UTF-8 text"),
    ("empty.csv", b"", 1, "the file is empty"),
    ("dup.csv", b"id,id\n1,2\n", 1, "appears twice"),
    ("noname.csv", b"id,\n1,2\n", 1, "column 2 of the header has no name"),
    ("bad.parquet", b"PAR1 not really", None, "not a Parquet file"),
    ("golden.xlsx", b"x", None, "unsupported table file type"),
])
def test_table_file_errors_name_the_file_and_line(tmp_path: Path, name: str, content: bytes, line: int | None,
                                                 message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        list(read_table_file(path))
    assert err.value.path == str(path) and err.value.line == line
    assert message.lower() in str(err.value).lower()
    assert str(err.value).startswith(str(path))


def test_missing_table_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        read_table_file(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------- the docs


def _sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)


def test_every_sql_example_in_the_docs_runs(tmp_path: Path) -> None:
    blocks = _sql_blocks()
    assert len(blocks) >= 7
    with Store.open(tmp_path / "runs.duckdb") as store:
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        old = _populate(store, started_at=t0, tuned_quality=0.6)
        new = _populate(store, started_at=t0 + timedelta(days=1))
        store.tag_run(old, "production")
        store.tag_run(new, "production")
        for sql in blocks:
            rows = store.query(sql)
            assert rows, f"no rows from:\n{sql}"
        worst = store.query(blocks[1])
        assert [r["case_id"] for r in worst] == ["glass-002", "claim-001", "refund-003"]
        assert worst[0]["base_output"] == "" and worst[0]["tuned_output"] == "tuned says Covered, no excess."


def test_the_docs_describe_every_column(tmp_path: Path) -> None:
    text = DOCS.read_text(encoding="utf-8")
    sections = dict(re.findall(r"^### `(\w+)`[^\n]*\n(.*?)(?=^### |^## )", text, re.S | re.M))
    with Store.open(tmp_path / "runs.duckdb") as store:
        columns = store.query("SELECT table_name, column_name FROM information_schema.columns "
                              "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position")
    missing = [f"{c['table_name']}.{c['column_name']}" for c in columns
               if c["table_name"] not in sections or (f"`{c['column_name']}`" not in sections[c["table_name"]])]
    assert missing == []
    assert {c["table_name"] for c in columns} <= set(sections)


# ------------------------------------------------------------------------------------------- long documents


def test_writes_of_long_documents_go_in_slices_and_arrive_whole(tmp_path: Path) -> None:
    """30 MB of documents in one call each for cases and outputs: none lost, truncated or reordered."""
    cases = [Case(id=f"doc-{i:04d}", input=f"clause {i} " + "policyholder deductible " * 800, expected=f"s{i}")
             for i in range(1500)]
    with Store.open(tmp_path / "docs.duckdb") as s:
        run_id = s.start_run({"suite_name": "docs", "suite_path": "s.yaml", "suite_hash": "h",
                              "tunebench_version": "0"})
        s.add_cases(run_id, cases)
        s.add_outputs(run_id, [_output(c.id, "tuned", c.input.upper()) for c in cases])
        stored = s.query("SELECT count(*) AS n, sum(length(text)) AS chars FROM outputs")[0]
        assert s.get_cases(run_id) == cases
    assert stored == {"n": 1500, "chars": sum(len(c.input) for c in cases)}


def test_cases_are_written_in_chunks_and_a_bad_one_takes_back_the_rows_the_call_added(tmp_path: Path) -> None:
    """9 MB of cases go in several chunks; when the last cannot be stored, the first chunks are removed again."""
    from tunebench.storeformat import _SLICE_CHARS

    long = [Case(id=f"c{i:04d}", input="coinsurance " * 750, expected=f"e{i}") for i in range(1000)]
    assert sum(len(c.input) for c in long) > 2 * _SLICE_CHARS  # so more than two chunks are written first
    bad = Case(id="bad", input="x", expected="y", vars={"when": object()})
    with Store.open(tmp_path / "chunks.duckdb") as s:
        run_id = s.start_run({"suite_name": "s"})
        s.add_cases(run_id, CASES)
        with pytest.raises(StoreError, match=r"cannot store cases row 'bad'.*not JSON-serialisable"):
            s.add_cases(run_id, [*long, bad])
        assert s.get_cases(run_id) == list(CASES)
        s.add_cases(run_id, long)
        assert s.get_cases(run_id) == [*CASES, *long]


def test_long_writes_are_checkpointed_as_they_go_and_keep_the_memory_limit(tmp_path: Path) -> None:
    """Past ~4M characters written, the store checkpoints: the log stays small and nothing else changes."""
    from tunebench.storeio import _RELEASE_CHARS

    path = tmp_path / "release.duckdb"
    with Store.open(path) as s:
        limit = _memory_limit(s)
        run_id = s.start_run({"suite_name": "s"})
        s.add_outputs(run_id, [_output(f"c{i:04d}", "tuned", "premium " * 1000) for i in range(600)])
        assert _RELEASE_CHARS < 600 * 8000
        wal = path.with_name(path.name + ".wal")
        assert not wal.exists() or wal.stat().st_size < 1_000_000  # 4.8 MB written, checkpointed into the file
        assert _memory_limit(s) == limit
        assert s.query("SELECT count(*) AS n, min(length(text)) AS lo FROM outputs") == [{"n": 600, "lo": 8000}]


def test_score_values_aggregate_as_the_full_scores_do(store: Store) -> None:
    """The numpy read behind the default aggregate gives the same Aggregate as the scores with details."""
    from tunebench.metrics import Metric, mean_aggregate

    run_id = store.start_run({"suite_name": "s"})
    scores = [("c1", "m", 0, "em", Score(1.0, True, "same", {"output": "x" * 500})),
              ("c2", "m", 0, "em", Score(0.25, False, "differs", {"output": "y"})),
              ("c2", "m", 1, "em", Score(None, None, "", {}, "the model failed")),
              ("c3", "m", 0, "em", Score(0.5, None)),
              ("c4", "m", 0, "em", Score(0.1, True)),
              ("c5", "m", 0, "em", Score(0.7, True, error="scored, then failed")),
              ("c3", "other", 0, "em", Score(0.0, False))]
    store.add_scores(run_id, scores)
    values, judged, n = store.score_values(run_id, "m", "em")
    full = [s for *_, s in store.get_scores(run_id, model="m", metric="em")]
    assert (sorted(values.tolist()), sorted(judged.tolist()), n) == ([0.1, 0.25, 0.5, 1.0], [False, True, True], 6)
    lean = mean_aggregate(values, judged, n)
    assert lean == Metric.aggregate(None, full)  # type: ignore[arg-type]
    assert (lean.n, lean.n_errors, lean.pass_rate) == (4, 2, 2 / 3)
    assert type(lean.value) is float and lean.value == math.fsum([1.0, 0.25, 0.5, 0.1]) / 4
    none = store.score_values(run_id, "m", "missing")
    assert mean_aggregate(*none) == Metric.aggregate(None, [])  # type: ignore[arg-type]


def test_slices_hold_about_four_million_characters_and_every_row_once() -> None:
    from tunebench.storeformat import _SLICE_CHARS, _slices

    sizes = [10, 3_000_000, 2_000_000, 5_000_000, 1, 1, 3_999_999, 7]
    data = [[f"id{i}" for i in range(len(sizes))], ["x" * n for n in sizes], [1.0] * len(sizes)]
    slices = list(_slices([("id", "VARCHAR"), ("text", "VARCHAR"), ("v", "DOUBLE")], data))
    assert [(start, stop) for start, stop, _ in slices] == [(0, 3), (3, 4), (4, 7), (7, 8)]  # closes at the size
    for start, stop, chars in slices:
        rows = zip(data[0][start:stop], data[1][start:stop], strict=True)
        assert chars == sum(len(i) + len(t) for i, t in rows)
    assert all(chars >= _SLICE_CHARS for _, _, chars in slices[:-1])
    assert list(_slices([("id", "VARCHAR")], [["a", "b"]])) == [(0, 2, 2)]


def test_reads_between_the_batches_of_a_streamed_read_drop_cached_blocks_safely(tmp_path: Path) -> None:
    """Every query() makes DuckDB drop the blocks it caches (a momentary tiny memory limit, then the default):
    with a streaming read holding blocks at the same time, both still return every row, and the limit is back."""
    with Store.open(tmp_path / "runs.duckdb") as store:
        default = _memory_limit(store)
        _grow_past_the_read_cap(store)  # smaller stores are read plainly
        run_id = store.start_run({"suite_name": "s"})
        texts = [f"answer {i} " + "x" * (i % 500) for i in range(6000)]
        store.add_outputs(run_id, [_output(f"c{i:05d}", "m", t) for i, t in enumerate(texts)])
        seen = []
        for n, out in enumerate(store.iter_outputs(run_id, batch_size=700)):
            seen.append(out.text)
            if n % 1000 == 0:
                assert store.query("SELECT count(*) AS n FROM outputs WHERE run_id = ?", [run_id]) == [{"n": 6000}]
        assert seen == texts
        assert _memory_limit(store) == default


def test_a_store_path_with_quotes_and_spaces_opens_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "it's a store; DROP TABLE runs" / "o'brien's runs.duckdb"
    with Store.open(path) as store:
        run_id = _populate(store)
    with Store.open(path, read_only=True) as store:
        assert store.get_run(run_id)["suite_name"] == "support"
        assert [c.id for c in store.get_cases(run_id)] == [c.id for c in CASES]
    assert sorted(p.name for p in path.parent.iterdir()) == ["o'brien's runs.duckdb"]


def _memory_limit(s: Store) -> str:
    """DuckDB's memory limit on the store's connection, between statements (what Store's reads leave behind)."""
    return s._conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def _grow_past_the_read_cap(s: Store) -> None:
    """Write incompressible outputs until the store's file and log together hold more than the read cap."""
    from tunebench.storeio import _READ_CAPS_BYTES

    run_id = s.start_run({"suite_name": "big"})
    path, i = Path(s.path), 0
    while sum(p.stat().st_size for p in (path, Path(f"{path}.wal")) if p.exists()) <= _READ_CAPS_BYTES[0]:
        s.add_outputs(run_id, [_output(f"c{i}-{j}", "m", base64.b64encode(os.urandom(150_000)).decode())
                               for j in range(10)])
        i += 1


def test_a_read_of_a_store_smaller_than_the_budget_runs_plainly(tmp_path: Path) -> None:
    """Below the cap, a cap could not bind: reads run under the default limit (setting it costs ~10 ms a read)."""
    with Store.open(tmp_path / "small.duckdb") as s:
        default = _memory_limit(s)
        assert s.query("SELECT current_setting('memory_limit') AS m") == [{"m": default}]
        _grow_past_the_read_cap(s)
        assert s.query("SELECT current_setting('memory_limit') AS m") != [{"m": default}]
        assert _memory_limit(s) == default


def test_a_read_runs_under_a_small_budget_then_larger_ones_then_none_as_it_needs(tmp_path: Path) -> None:
    from tunebench.storeio import _READ_CAPS

    raw = duckdb.connect()
    default = raw.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    shown = {}  # each budget as current_setting() shows it
    for cap in _READ_CAPS:
        raw.execute(f"SET memory_limit = '{cap}'")
        shown[cap] = raw.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    # Statements that need more than the first budget, and more than the last: on their own, DuckDB refuses them.
    middle = ("SELECT current_setting('memory_limit') AS m, len(list(i ORDER BY -i)) AS n "
              "FROM range(300000) t(i)")
    big = "SELECT len(list(i ORDER BY -i)) AS n, list(i ORDER BY -i)[1] AS first FROM range(3000000) t(i)"
    for sql, cap in ((middle, _READ_CAPS[0]), (big, _READ_CAPS[-1])):
        raw.execute(f"SET memory_limit = '{cap}'")
        with pytest.raises(duckdb.OutOfMemoryException):
            raw.execute(sql).fetchall()
    with Store.open(tmp_path / "cap.duckdb") as s:
        _grow_past_the_read_cap(s)
        assert _memory_limit(s) == default
        assert s.query("SELECT current_setting('memory_limit') AS m") == [{"m": shown[_READ_CAPS[0]]}]
        (row,) = s.query(middle)  # ... run again under a larger budget, still a budget
        assert row["n"] == 300_000 and row["m"] in {shown[c] for c in _READ_CAPS[1:]}, row
        assert s.query(big) == [{"n": 3_000_000, "first": 2_999_999}]  # ... and at last without one
        assert s.query_arrays(big)["first"].tolist() == [2_999_999]
        assert _memory_limit(s) == default
        with pytest.raises(StoreError, match="running a query failed"):
            s.query("SELECT * FROM no_such_table")
        assert _memory_limit(s) == default  # a failed read leaves no budget behind


def test_long_documents_read_under_the_budget_come_back_whole_and_the_store_stays_writable(tmp_path: Path) -> None:
    """12 MB of 300 kB outputs (more than the read budget; DuckDB failed on such documents under a lasting cap)."""
    text = "premium deductible " * 15_800
    with Store.open(tmp_path / "long.duckdb", threads=1) as s:
        _grow_past_the_read_cap(s)
        run_id = s.start_run({"suite_name": "s"})
        s.add_outputs(run_id, [_output(f"c{i:02d}", "tuned", text + str(i)) for i in range(40)])
        rows = s.query("SELECT case_id, text FROM outputs WHERE run_id = ? ORDER BY case_id", [run_id])
        assert [r["text"] for r in rows] == [text + str(i) for i in range(40)]
        assert s.query_arrays("SELECT text FROM outputs WHERE run_id = ? ORDER BY case_id", [run_id]
                              )["text"].tolist() == [r["text"] for r in rows]
        s.add_outputs(run_id, [_output("after", "tuned", "x")])
        assert s.query("SELECT count(*) AS n FROM outputs WHERE run_id = ?", [run_id]) == [{"n": 41}]
        assert _memory_limit(s) == duckdb.connect().execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_query_arrays_returns_numpy_columns_with_nulls_masked(store: Store) -> None:
    run_id = _populate(store)
    cols = store.query_arrays("SELECT case_id, repeat, value, passed FROM scores WHERE run_id = ? AND "
                              "metric = 'rouge_l' ORDER BY model, case_id", [run_id])
    rows = store.query("SELECT case_id, repeat, value, passed FROM scores WHERE run_id = ? AND metric = 'rouge_l' "
                       "ORDER BY model, case_id", [run_id])
    assert list(cols["case_id"]) == [r["case_id"] for r in rows] and list(cols["repeat"]) == [0] * len(rows)
    for name in ("value", "passed"):
        got = np.ma.asarray(cols[name])
        assert [None if m else v for v, m in zip(got.data.tolist(), np.ma.getmaskarray(got), strict=True)] == [
            r[name] for r in rows]
    assert any(r["value"] is None for r in rows)  # the masked path is exercised
    empty = store.query_arrays("SELECT 1 AS x WHERE false")
    assert list(empty) == ["x"] and len(empty["x"]) == 0
