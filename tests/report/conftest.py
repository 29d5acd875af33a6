"""Fixtures for the report tests: deterministic RunReports (with hostile text) and a real headless Chromium."""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunebench.records import Aggregate, Case, Output, Score
from tunebench.report import CaseRow, MetricInfo, RunReport

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "</textarea><b>bold</b>",
    "</script><script>alert(2)</script>",
    '"><svg onload=alert(3)>',
    "<iframe src=javascript:alert(4)></iframe>",
    "' onmouseover='alert(5)' x='",
    "<!-- <style>body{display:none}</style>",
    "line\u2028separator\u2029paragraph & ampersand &amp; &lt;",
]
"""Markup a hostile or broken model could emit; every one must render as inert text."""

HOSTILE_MODEL = 'tuned"><img src=x onerror=alert(9)>'

WORDS = ["the", "policy", "covers", "deductible", "claim", "premium", "plan", "state", "coverage", "benefit",
         "network", "provider", "member", "annual", "limit", "copay", "refund", "order", "delivery", "return",
         "label", "café", "naïve", "東京", "données", "ß", "emoji", "🙂"]

METRICS = [
    MetricInfo("rougeL", "rouge", "overlap", True, 0.3),
    MetricInfo("exact", "exact_match", "overlap", True, None),
    MetricInfo("ter", "ter", "overlap", False, 0.5),
]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + rng.choice([".", "!", "?", ""])


def _mutate(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    kept = [w for w in words if rng.random() > 0.2]
    for _ in range(rng.randint(0, 3)):
        kept.insert(rng.randint(0, len(kept)), rng.choice(WORDS))
    return " ".join(kept)


def _score(info: MetricInfo, value: float) -> Score:
    passed = None
    if info.threshold is not None:
        passed = value >= info.threshold if info.higher_is_better else value <= info.threshold
    return Score(value=value, passed=passed, explanation=f"{info.name}={value:.2f}")


def make_rows(n: int, models: list[str], *, seed: int = 7, hostile: bool = True) -> list[CaseRow]:
    """``n`` cases (the first ones hostile when asked) with outputs, scores, errors, flags for ``models``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tags = (rng.choice(["billing", "claims", "travel"]),) + (("critical",) if i % 7 == 0 else ())
        payload = PAYLOADS[i % len(PAYLOADS)] if hostile and i < 2 * len(PAYLOADS) else None
        case_id = f"case-{i:05d}" + (f"-{payload}" if payload and i % 2 else "")
        expected = _sentence(rng, rng.randint(3, 25))
        case = Case(
            id=case_id,
            input=(payload or "") + " " + _sentence(rng, rng.randint(4, 12)),
            expected=expected + (f" {payload}" if payload else ""),
            tags=tags + ((payload,) if payload and i % 3 == 0 else ()),
            source=f"evals/golden.jsonl:{i + 1}",
        )
        outputs, scores = {}, {}
        for m, model in enumerate(models):
            error = None
            if i % 23 == 5 and m == len(models) - 1:
                error = "HTTP 500 after 3 attempts" + (f" {payload}" if payload else "")
            text = "" if error else (expected if rng.random() < 0.15 else _mutate(rng, expected))
            if payload and not error and m > 0:
                text = f"{payload} {text} {payload}"
            outputs[model] = Output(case_id=case_id, model=model, repeat=0, text=text, error=error,
                                    latency_ms=rng.uniform(50, 900))
            if error:
                scores[model] = {info.name: Score(value=None, error=f"model error: {error}") for info in METRICS}
                continue
            scores[model] = {
                "rougeL": _score(METRICS[0], round(rng.random(), 6)),
                "exact": Score(value=float(text == expected), passed=None),
                "ter": _score(METRICS[2], round(rng.uniform(0, 1.5), 6)),
            }
        flags = []
        if len(models) > 1:
            base, cand = scores[models[0]], scores[models[1]]
            for info in METRICS:
                a, b = base[info.name].value, cand[info.name].value
                if a is None or b is None:
                    continue
                diff = (b - a) if info.higher_is_better else (a - b)
                if diff < -0.5:
                    flags.append(f"regressed:{info.name}")
                elif diff > 0.5:
                    flags.append(f"fixed:{info.name}")
        if i % 11 == 3:
            flags.append("unstable")
        if payload and i % 4 == 1:
            flags.append(f"regressed:{payload}")
        rows.append(CaseRow(case=case, outputs=outputs, scores=scores, flags=tuple(flags)))
    return rows


def aggregates_of(rows: list[CaseRow], models: list[str]) -> dict[str, dict[str, Aggregate]]:
    result: dict[str, dict[str, Aggregate]] = {}
    for model in models:
        result[model] = {}
        for info in METRICS:
            scored = [r.scores[model][info.name] for r in rows if r.scores[model][info.name].value is not None]
            passed = [s.passed for s in scored if s.passed is not None]
            result[model][info.name] = Aggregate(
                value=statistics.fmean(s.value for s in scored) if scored else None,
                n=len(scored),
                n_errors=len(rows) - len(scored),
                pass_rate=(sum(passed) / len(passed)) if passed else None,
            )
    return result


def make_report(n: int = 120, *, models: list[str] | None = None, hostile: bool = True,
                stream: bool = False) -> tuple[RunReport, list[CaseRow]]:
    """A complete RunReport over ``n`` cases, plus the rows (for assertions); ``stream`` passes a generator."""
    models = models or ["base", "tuned", HOSTILE_MODEL]
    rows = make_rows(n, models, hostile=hostile)
    errors = {model: sum(1 for r in rows if r.outputs[model].error) for model in models}

    def generate() -> Iterator[CaseRow]:
        yield from rows

    report = RunReport(
        run_id="20250101T120000-ab12cd",
        suite_name="insurance-faq <b>suite</b>",
        description="Nightly eval. " + PAYLOADS[1],
        started_at="2025-01-01T12:00:00Z",
        finished_at="2025-01-01T12:04:31Z",
        tunebench_version="0.1.0",
        git_commit="0123456789abcdef0123456789abcdef01234567",
        models=models,
        baseline=models[0],
        candidate=models[1],
        metrics=list(METRICS),
        aggregates=aggregates_of(rows, models),
        errors=errors,
        cases=generate() if stream else rows,
        warnings=["tuned outputs identical to base on 12% of cases", "hostile " + PAYLOADS[0]],
        comparisons=[
            {"metric": "rougeL", "delta": 0.0412, "ci_low": 0.01, "ci_high": 0.07, "wins": 50, "ties": 20,
             "losses": 30, "p_value": 0.00123, "verdict": "improved"},
            {"metric": "ter", "delta": 0.02, "ci_low": -0.01, "ci_high": 0.05, "wins": 40, "ties": 10,
             "losses": 50, "p_value": 0.2, "verdict": "regressed " + PAYLOADS[4]},
        ],
        gates=[
            {"name": "rougeL not worse", "passed": True, "message": "Δ +0.041 ≥ −0.01"},
            {"name": "no new errors", "passed": False, "message": "tuned has 5 errors " + PAYLOADS[3]},
        ],
    )
    return report, rows


# ---- real headless Chromium ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by playwright (playwright's own browser download does not work offline).

    Module-scoped on purpose: playwright's sync API keeps an event loop running in this thread while it is
    alive, and any later test in the same worker that calls asyncio.run() would fail.
    """
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} missing: apt-get install -y chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


class PageWatch:
    """Everything a page did that a self-contained report must not: requests, console errors, dialogs."""

    def __init__(self, page) -> None:
        self.page = page
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

        def on_dialog(dialog) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)

    def open(self, path: Path) -> None:
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("html[data-ready='true']", timeout=15_000)

    def assert_self_contained(self, path: Path) -> None:
        """The page asked for nothing but its own file and logged no error."""
        assert self.requests == [path.resolve().as_uri()]
        assert self.console_errors == [] and self.page_errors == []

    def screenshot(self, name: str) -> Path:
        """Save a screenshot of the top of the page as a test artifact (test-artifacts/NAME)."""
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / name
        self.page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return shot


@pytest.fixture
def page_watch(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    yield PageWatch(page)
    context.close()


@pytest.fixture(scope="session")
def report_factory():
    """``make_report`` as a fixture, so test modules need not import this conftest."""
    return make_report


@pytest.fixture(scope="session")
def payloads() -> list[str]:
    return list(PAYLOADS)
