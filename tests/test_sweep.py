"""Checkpoint sweeps: real tiny LoRA checkpoints through api.run into DuckDB, the report parsed as HTML/SVG."""

from __future__ import annotations

import math
from pathlib import Path

import lxml.html
import pytest

from tinymodels import TinyModels, write_suite
from tunebench.cases import Selection
from tunebench.errors import ConfigError
from tunebench.runners import hf_models
from tunebench.store import Store
from tunebench.sweep import (
    Checkpoint,
    SweepConfig,
    SweepPoint,
    SweepResult,
    checkpoints_from_glob,
    retention_failures,
    run_sweep,
    step_from_name,
    write_report,
)

pytest_plugins = ("tinymodels",)  # the session fixture tiny_models, shared by every module


@pytest.fixture
def suite(tiny_models: TinyModels, tmp_path: Path) -> Path:
    return write_suite(tiny_models, tmp_path, name="tiny-sweep", adapter=tiny_models.adapter,
                       metrics="  rougeL: {type: rouge}\n")


def points_of(html: Path, metric: str) -> list[lxml.html.HtmlElement]:
    doc = lxml.html.fromstring(html.read_text(encoding="utf-8"))
    (svg,) = doc.xpath(f'//svg[@data-metric="{metric}"]')
    return svg.xpath('.//circle[contains(concat(" ", @class, " "), " point ")]')


def test_sweep_over_two_adapter_checkpoints(tiny_models: TinyModels, suite: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny_models
    monkeypatch.chdir(m.root)  # the glob is relative to the working directory, as on the command line
    loads = hf_models.base_weight_loads(str(m.checkpoint))
    db, report = tmp_path / "tb.duckdb", tmp_path / "sweep.html"
    seen: list[int] = []
    result = run_sweep(SweepConfig(suite=suite, glob="runs/exp1/checkpoint-*", db=db, report=report,
                                   retention=("rougeL",), retention_delta=0.05,
                                   progress=lambda i, n, c: seen.append(c.step)))
    n = len(m.cases)
    assert [p.checkpoint.step for p in result.points] == list(m.steps) == seen
    assert [p.checkpoint.path for p in result.points] == [m.adapter, m.adapter2]
    ids = [p.run_id for p in result.points]
    assert None not in ids and len(set(ids)) == 2
    # the base model is queried once: the second checkpoint's run takes the base answers from the cache
    assert result.points[1].requests == {"sent": n, "cached": n}
    assert hf_models.base_weight_loads(str(m.checkpoint)) - loads <= 1

    with Store.open(db, read_only=True) as store:
        for p in result.points:
            run = store.get_run(p.run_id)
            assert run["status"] == "completed"
            assert run["options"]["overrides"] == {"tuned": {"adapter": str(p.checkpoint.path)}}
            tuned = {row["model"]: row for row in store.get_models(p.run_id)}["tuned"]
            assert tuned["identity"]["adapter"] == str(p.checkpoint.path)

    # best and retention follow from the stored numbers
    exact = [p.values["exact"] for p in result.points]
    assert result.best is not None and result.best.values["exact"] == max(
        p.values["exact"] for p in result.points if not p.retention_failures)
    failing = {p.checkpoint.step for p in result.points if p.base_values["rougeL"] - p.values["rougeL"] > 0.05}
    assert {p.checkpoint.step for p in result.points if p.retention_failures} == failing
    assert exact[1] > exact[0]  # more training on the golden cases: more exact answers

    # the report: one point per checkpoint on every chart, best and retention failures marked
    assert result.report == report
    for metric in ("exact", "rougeL"):
        circles = points_of(report, metric)
        assert [int(c.get("data-step")) for c in circles] == list(m.steps)
        values = [float(c.get("data-value")) for c in circles]
        assert all(math.isclose(v, p.values[metric]) for v, p in zip(values, result.points, strict=True))
        best = [int(c.get("data-step")) for c in circles if "best" in c.get("class").split()]
        assert best == [result.best.checkpoint.step]
        marked = {int(c.get("data-step")) for c in circles if "retention-fail" in c.get("class").split()}
        assert marked == failing
    doc = lxml.html.fromstring(report.read_text(encoding="utf-8"))
    assert len(doc.xpath('//table[@id="checkpoints"]/tbody/tr')) == 2
    assert not doc.xpath("//script") and "http" not in doc.xpath("//head")[0].text_content()
    assert doc.xpath('//svg[@data-metric="rougeL"]//line[@class="threshold"]')  # the retention floor is drawn
    assert result.to_json()["best_step"] == result.best.checkpoint.step


def test_a_checkpoint_that_cannot_run_is_reported_not_fatal(tiny_models: TinyModels, suite: Path,
                                                             tmp_path: Path) -> None:
    m = tiny_models
    result = run_sweep(SweepConfig(
        suite=suite, checkpoints=(Checkpoint(m.zero_adapter, 0), Checkpoint(m.adapter2, m.steps[1])),
        db=tmp_path / "tb.duckdb", report=tmp_path / "sweep.html", selection=Selection(limit=3)))
    broken, good = result.points
    assert broken.error is not None and "has no effect" in broken.error and broken.values == {}
    assert broken.run_id is not None  # the failed run is stored, and its id is kept
    assert good.error is None and result.best is good
    assert [int(c.get("data-step")) for c in points_of(result.report, "exact")] == [m.steps[1]]
    doc = lxml.html.fromstring(result.report.read_text(encoding="utf-8"))
    statuses = [td.text_content().strip() for td in doc.xpath('//td[@class="status"]')]
    assert statuses[0].startswith("error:") and statuses[1] == "best"


def test_steps_checkpoints_and_options_are_validated(tiny_models: TinyModels, suite: Path, tmp_path: Path) -> None:
    assert step_from_name(Path("runs/exp1/checkpoint-500")) == 500
    assert step_from_name(Path("step_0100_final")) == 100
    with pytest.raises(ConfigError, match="has no number"):
        step_from_name(Path("runs/final"))
    found = checkpoints_from_glob(str(tiny_models.root / "runs" / "exp1" / "checkpoint-*"))
    assert [c.step for c in found] == list(tiny_models.steps)
    with pytest.raises(ConfigError, match="no checkpoint directory matches"):
        checkpoints_from_glob(str(tmp_path / "nothing-*"))
    one = (Checkpoint(tiny_models.adapter, 1),)
    with pytest.raises(ConfigError, match=r"unknown metric 'rouge' \(did you mean 'rougeL'"):
        run_sweep(SweepConfig(suite=suite, checkpoints=one, retention=("rouge",), db=tmp_path / "x.duckdb"))
    with pytest.raises(ConfigError, match="is the suite's baseline"):
        run_sweep(SweepConfig(suite=suite, checkpoints=one, model="base", db=tmp_path / "x.duckdb"))
    with pytest.raises(ConfigError, match="several checkpoints have step 1"):
        run_sweep(SweepConfig(suite=suite, checkpoints=(*one, Checkpoint(tiny_models.adapter2, 1))))
    with pytest.raises(ConfigError, match="at least one checkpoint"):
        run_sweep(SweepConfig(suite=suite))
    assert not (tmp_path / "x.duckdb").exists()  # bad input writes nothing


def test_retention_rule_follows_metric_direction() -> None:
    higher = {"acc": True, "latency": False}
    assert retention_failures({"acc": 0.80}, {"acc": 0.84}, ["acc"], 0.05, higher) == []
    (msg,) = retention_failures({"acc": 0.70}, {"acc": 0.84}, ["acc"], 0.05, higher)
    assert msg.startswith("acc 0.7 vs baseline 0.84: worse by 0.14")
    assert retention_failures({"latency": 90.0}, {"latency": 100.0}, ["latency"], 0.0, higher) == []
    assert retention_failures({"latency": 120.0}, {"latency": 100.0}, ["latency"], 10.0, higher)
    assert retention_failures({}, {"acc": 0.5}, ["acc"], 0.0, higher) == ["acc: no value to compare"]


def test_report_escapes_every_text(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    point = SweepPoint(Checkpoint(tmp_path / evil, 7), f"run-{evil}", {"m<x>": 0.5}, {"m<x>": 0.25},
                       [f"gate {evil}"])
    sweep = SweepResult(f"suite{evil}", "tuned", "base", {"m<x>": True}, "m<x>", [point], None)
    out = write_report(sweep, tmp_path / "r.html", retention=["m<x>"], delta=0.1)
    doc = lxml.html.fromstring(out.read_text(encoding="utf-8"))
    assert not doc.xpath("//script")
    assert evil in doc.xpath("//h1")[0].text_content() and evil in doc.xpath('//td[@class="status"]')[0].text_content()
    (circle,) = points_of(out, "m<x>")
    assert circle.get("data-step") == "7" and "retention-fail" in circle.get("class")
