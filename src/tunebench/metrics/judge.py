"""LLM-as-judge: a rubric in the suite, any configured runner as the judge, a score on a fixed scale.

Invariants:
- the judge is blind: it sees the rendered rubric (``input``, ``expected``, ``output``, the case's vars and
  ``scale_min``/``scale_max``), never which model wrote the output, so identical outputs get identical requests.
- one Score per sample, always. A reply that holds no score, or a score outside the scale, is an error Score
  (``value=None``) whose ``details["raw"]`` keeps the judge's reply; a judge that cannot be reached is an error
  Score with the runner's reason. Never NaN, never dropped. With ``repeats > 1`` every repeat must succeed:
  a case judged only partly is an error (its parsed repeats are kept in ``details``), not a silent mean of fewer.
- ``value`` is the mean of the repeats, mapped to 0–1 with ``normalize`` (the raw mean stays in
  ``details["score"]``); ``passed`` compares the raw mean with ``pass_score``, in the judge's own scale.
- judge replies are cached apart from model outputs, in ``<cache_dir>/judge.sqlite``, keyed by sha256 of
  (judge runner identity, rendered judge messages, repeat index). Only replies that parsed are cached: a
  failed or unparseable call is asked again on the next run.
- transient judge failures (``RetryableError``, timeouts) are retried with exponential backoff and jitter,
  honouring Retry-After, up to ``max_attempts`` (3, or the ``judge_model`` setting) -- the engine's policy.
- a batch runs all its judge requests concurrently on a private event loop (``asyncio.run``; metrics are
  called from a worker thread), at most ``concurrency`` in flight, and releases the judge runner at the end.
- ``judge: NAME`` uses a copy, taken before the run starts, of the suite model's runner: a runner binds its
  connections to one event loop, and the engine's loop keeps using the original while the judge scores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PluginError, RetryableError, RunnerError
from ..factory import did_you_mean
from ..hookspecs import hookimpl
from ..records import Aggregate, Sample, Score
from ..runners import Request, Response, Runner, RunnerContext
from ._base import Metric, MetricContext, metric

if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

__all__ = ["CACHE_FILE", "DEFAULT_SYSTEM", "JudgeMetric", "Parsed", "judge", "parse_judge_reply"]

CACHE_FILE = "judge.sqlite"
_KEY_VERSION = 1
_REASON_CHARS = 200
_RAW_CHARS = 4000  # a rambling judge must not bloat the store; 4000 characters show what went wrong

DEFAULT_SYSTEM = (
    "You are a strict evaluator. Grade the answer with the rubric on a scale from {{ scale_min }} to "
    "{{ scale_max }} (higher is better). Reply with one JSON object and nothing else: "
    '{"score": <number>, "reason": "<one short sentence>"}'
)

# --- parsing the judge's reply ------------------------------------------------------------------------------

_NUM = r"[-+]?\d+(?:\.\d+)?"
# "Score: 4", "**Score:** 4", "Final rating = 4/5", "the grade is 4 out of 5". Not "score of 5 would need": a
# judge quoting the rubric's levels ("a score of 5 means …") must not be read as its verdict.
_MARKED = re.compile(
    rf"\b(?:final\s+)?(?:score|rating|grade)\b\s*(?:\*\*|__)?\s*(?:[:=]|\bis\b|-)?\s*(?:\*\*|__)?\s*"
    rf"({_NUM})(?:\s*(?:/|\bout\s+of\b)\s*({_NUM}))?",
    re.IGNORECASE,
)
_FRACTION = re.compile(rf"({_NUM})\s*(?:/|\bout\s+of\b)\s*({_NUM})", re.IGNORECASE)
_BOLD = re.compile(rf"(?:\*\*|__)\s*({_NUM})\s*(?:\*\*|__)")
_BARE = re.compile(rf"[\s\"'`*]*({_NUM})[\s\"'`*.]*")
_REASON_LINE = re.compile(
    r"^\W*(?:reason|reasoning|explanation|rationale|justification)\W*?[:\-]\s*(?:\*\*)?\s*(.+)",
    re.IGNORECASE | re.MULTILINE,
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_SCORE_KEYS = ("score", "rating", "grade")
_REASON_KEYS = ("reason", "reasoning", "explanation", "rationale", "justification")


@dataclass(frozen=True, slots=True)
class Parsed:
    """The outcome of parsing one judge reply: a score, or an error saying why not."""

    score: float | None
    reason: str = ""
    error: str | None = None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _shorten(text: str, limit: int = _REASON_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _json_candidates(text: str) -> list[Any]:
    blobs = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        blobs.append(text[start : end + 1])
    found = []
    for blob in blobs:
        try:
            found.append(json.loads(blob))
        except ValueError:
            continue
    return found


def _from_json(text: str) -> tuple[float | None, float | None, str] | None:
    """(score, denominator, reason) from a JSON object with a score key; score None when it is not a number."""
    for data in _json_candidates(text):
        if not isinstance(data, dict):
            continue
        lowered = {str(k).lower(): v for k, v in data.items()}
        key = next((k for k in _SCORE_KEYS if k in lowered), None)
        if key is None:
            continue
        value = lowered[key]
        reason = next((str(lowered[k]) for k in _REASON_KEYS if lowered.get(k) not in (None, "")), "")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), None, reason
        if isinstance(value, str):
            m = _FRACTION.fullmatch(value.strip())
            if m:
                return float(m.group(1)), float(m.group(2)), reason
            m = re.fullmatch(rf"\s*({_NUM})\s*", value)
            if m:
                return float(m.group(1)), None, reason
        return None, None, reason
    return None


def _reason(text: str, span: tuple[int, int] | None) -> str:
    marked = _REASON_LINE.search(text)
    if marked:
        return _shorten(marked.group(1))
    rest = text if span is None else text[: span[0]] + " " + text[span[1] :]
    return _shorten(rest.lstrip(" \n\t*_:.-").rstrip(" \n\t*_:-"))


def parse_judge_reply(text: str, scale: tuple[float, float]) -> Parsed:
    """Find the judge's score in ``text``; a clearly marked score wins over a loose number.

    Accepted, in this order: a JSON object with ``score``/``rating``/``grade`` (bare, in a code fence or inside
    prose); the last marked score ("Score: 4", "Rating: 4 out of 5", "**Score:** 4"); the last fraction whose
    denominator is the scale's maximum ("4/5"); a single bold number ("**4**"); a reply (or its first or last
    line) that is only a number. A score outside the scale, or given on another scale ("8/10" on 1–5), is an
    error, never clipped or rescaled.
    """
    lo, hi = scale
    where = f"the scale {_fmt(lo)}–{_fmt(hi)}"
    number: float | None = None
    denominator: float | None = None
    reason = ""

    from_json = _from_json(text)
    if from_json is not None:
        number, denominator, reason = from_json
        reason = _shorten(reason)
    else:
        span: tuple[int, int] | None = None
        marked = list(_MARKED.finditer(text))
        fractions = [m for m in _FRACTION.finditer(text) if float(m.group(2)) == hi]
        bold = list(_BOLD.finditer(text))
        lines = [line for line in text.strip().splitlines() if line.strip()]
        bare = [m for line in (lines[:1] + lines[-1:]) if (m := _BARE.fullmatch(line))]
        found: re.Match[str] | None = None
        if marked:
            found = marked[-1]
        elif fractions:
            found = fractions[-1]
        elif len({float(m.group(1)) for m in bold}) == 1:
            found = bold[0]
        elif bare and len({float(m.group(1)) for m in bare}) == 1:
            number = float(bare[0].group(1))
            start = text.find(bare[0].group(1))
            span = (start, start + len(bare[0].group(1)))
        if found is not None:
            number, span = float(found.group(1)), found.span()
            if found.re.groups == 2 and found.group(2) is not None:
                denominator = float(found.group(2))
        if number is not None:
            reason = _reason(text, span)

    if number is None:
        return Parsed(None, reason, "unparseable judge reply")
    if denominator is not None and denominator != hi:
        return Parsed(None, reason, f"judge scored on another scale ({_fmt(number)}/{_fmt(denominator)}, "
                                    f"expected {where})")
    if not math.isfinite(number) or not lo <= number <= hi:
        return Parsed(None, reason, f"judge score {_fmt(number)} is outside {where}")
    return Parsed(number, reason)


# --- the metric ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Retry:
    """The engine's retry policy, applied to judge calls."""

    max_attempts: int = 3
    timeout_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0


class JudgeMetric(Metric):
    """The metric behind ``kind: judge``."""

    kind = "judge"

    def __init__(self, *, runner: Runner, label: str, rubric: jinja2.Template, rubric_source: str,
                 system: jinja2.Template | None, scale: tuple[float, float], pass_score: float | None,
                 repeats: int, normalize: bool, concurrency: int, cache_path: Path | None, retry: _Retry,
                 suite_vars: dict[str, Any]) -> None:
        lo, hi = scale
        threshold = None
        if pass_score is not None:
            threshold = (pass_score - lo) / (hi - lo) if normalize else pass_score
        super().__init__(threshold=threshold)
        self.runner, self.label = runner, label
        self.identity = runner.identity()
        self.rubric, self.rubric_source, self.system = rubric, rubric_source, system
        self.scale, self.pass_score, self.repeats = scale, pass_score, repeats
        self.normalize, self.concurrency = normalize, concurrency
        self.cache_path, self.retry = cache_path, retry
        self.suite_vars = suite_vars
        self._identity_blob = json.dumps(self.identity, sort_keys=True, default=str)

    # -- requests ------------------------------------------------------------------------------------------

    def messages(self, sample: Sample) -> tuple[dict[str, str], ...]:
        """The judge's messages for one sample (raises jinja2.TemplateError on a bad rubric)."""
        case = sample.case
        variables = {**self.suite_vars, **case.vars, "id": case.id, "tags": list(case.tags), "input": case.input,
                     "expected": case.expected, "output": sample.output.text,
                     "scale_min": _fmt(self.scale[0]), "scale_max": _fmt(self.scale[1])}
        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system.render(variables)})
        messages.append({"role": "user", "content": self.rubric.render(variables)})
        return tuple(messages)

    def key(self, messages: tuple[dict[str, str], ...], repeat: int) -> str:
        blob = json.dumps(list(messages), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(f"{_KEY_VERSION}\0{self._identity_blob}\0{repeat}\0{blob}".encode()).hexdigest()

    async def _ask(self, case_id: str, repeat: int, messages: tuple[dict[str, str], ...]) -> Response:
        request = Request(case_id, repeat, messages)
        policy = self.retry
        attempts = 0
        while True:
            attempts += 1
            try:
                async with asyncio.timeout(policy.timeout_s + 5.0):  # guard for runners without a timeout
                    return await self.runner.generate(request)
            except RetryableError as exc:
                error: RetryableError = exc
            except TimeoutError:
                error = RetryableError(f"no answer within {policy.timeout_s:g}s")
            except RunnerError:
                raise
            except Exception as exc:  # a judge runner's bug costs one case, not the batch
                raise RunnerError(f"{type(exc).__name__}: {exc}") from None
            if attempts >= policy.max_attempts:
                raise RunnerError(f"{error} (gave up after {attempts} attempts)")
            delay = min(policy.max_backoff_s, policy.backoff_s * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
            if error.retry_after is not None:
                delay = max(delay, min(error.retry_after, policy.max_backoff_s))
            await asyncio.sleep(delay)

    async def _ask_all(self, jobs: dict[str, tuple[str, int, tuple[dict[str, str], ...]]]
                       ) -> dict[str, Response | RunnerError]:
        semaphore = asyncio.Semaphore(self.concurrency)
        results: dict[str, Response | RunnerError] = {}

        async def one(key: str, case_id: str, repeat: int, messages: tuple[dict[str, str], ...]) -> None:
            async with semaphore:
                try:
                    results[key] = await self._ask(case_id, repeat, messages)
                except RunnerError as exc:
                    results[key] = exc

        try:
            await asyncio.gather(*(one(k, *job) for k, job in jobs.items()))
        finally:
            await self.runner.aclose()  # the next batch runs on another loop
        return results

    # -- scoring -------------------------------------------------------------------------------------------

    def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        import jinja2

        rendered: list[tuple[tuple[dict[str, str], ...], list[str]] | Score] = []
        jobs: dict[str, tuple[str, int, tuple[dict[str, str], ...]]] = {}
        for sample in samples:
            try:
                messages = self.messages(sample)
            except jinja2.TemplateError as exc:
                rendered.append(Score(None, error=f"judge rubric: {getattr(exc, 'message', None) or exc}"))
                continue
            keys = [self.key(messages, r) for r in range(self.repeats)]
            for r, k in enumerate(keys):
                jobs.setdefault(k, (sample.case.id, r, messages))  # identical outputs are judged once
            rendered.append((messages, keys))

        replies: dict[str, Response | RunnerError] = {}
        cache = None
        if self.cache_path is not None and jobs:
            from ..cache import ResponseCache

            cache = ResponseCache(self.cache_path)
            replies.update({k: hit[0] for k, hit in cache.get_many(jobs).items()})
        try:
            missing = {k: job for k, job in jobs.items() if k not in replies}
            if missing:
                fresh = _run_sync(lambda: self._ask_all(missing))
                replies.update(fresh)
                if cache is not None:
                    cache.put_many([(k, r, None) for k, r in fresh.items() if isinstance(r, Response)
                                    and parse_judge_reply(r.text, self.scale).error is None])
        finally:
            if cache is not None:
                cache.close()
        return [item if isinstance(item, Score) else self._score(item[1], replies) for item in rendered]

    def _score(self, keys: list[str], replies: dict[str, Response | RunnerError]) -> Score:
        scores: list[float] = []
        reasons: list[str] = []
        for repeat, key in enumerate(keys):
            reply = replies[key]
            if isinstance(reply, RunnerError):
                return Score(None, explanation="", error=f"judge failed: {reply}",
                             details={"repeat": repeat, "scores": scores})
            parsed = parse_judge_reply(reply.text, self.scale)
            if parsed.error is not None:
                return Score(None, explanation=parsed.reason, error=parsed.error,
                             details={"raw": reply.text[:_RAW_CHARS], "repeat": repeat, "scores": scores})
            assert parsed.score is not None
            scores.append(parsed.score)
            reasons.append(parsed.reason)
        lo, hi = self.scale
        mean = math.fsum(scores) / len(scores)
        mad = math.fsum(abs(s - mean) for s in scores) / len(scores)
        value = (mean - lo) / (hi - lo) if self.normalize else mean
        passed = None if self.pass_score is None else mean >= self.pass_score
        reason = next((r for r in reasons if r), "")
        shown = f"{_fmt(round(mean, 3))}/{_fmt(hi)}"
        details: dict[str, Any] = {"score": mean, "scores": scores, "scale": [lo, hi], "reason": reason,
                                   "judge": self.label}
        if self.repeats > 1:
            details.update(agree=len(set(scores)) == 1, mad=mad)
        return Score(value, passed, _shorten(f"{shown}: {reason}" if reason else shown), details)

    def aggregate(self, scores: Sequence[Score]) -> Aggregate:
        """Mean value and pass rate (the base rule), plus the raw mean and the agreement between repeats."""
        base = super().aggregate(scores)
        ok = [s for s in scores if s.error is None and s.value is not None]
        details: dict[str, Any] = {"scale": list(self.scale), "repeats": self.repeats, "judge": self.label}
        if ok:
            details["mean_score"] = math.fsum(s.details["score"] for s in ok) / len(ok)
            if self.repeats > 1:
                details["agreement"] = sum(1 for s in ok if s.details["agree"]) / len(ok)
                details["mean_abs_deviation"] = math.fsum(s.details["mad"] for s in ok) / len(ok)
        return Aggregate(base.value, base.n, base.n_errors, base.pass_rate, details)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "judge": self.identity, "rubric": self.rubric_source,
                "scale": list(self.scale), "pass_score": self.pass_score, "repeats": self.repeats,
                "normalize": self.normalize}


def _run_sync(make: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, even if this thread already runs a loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


# --- the factory --------------------------------------------------------------------------------------------


def _inline_runner(config: dict[str, Any], concurrency: int, context: MetricContext) -> tuple[Runner, _Retry]:
    """Build ``judge_model`` exactly as a ``models:`` entry is built (common settings + the runner's own)."""
    import pydantic

    from ..plugins import get_runner
    from ..suite import ModelConfig, expand_env

    for own in ("repeats", "concurrency"):
        if own in config:
            raise ConfigError(f"judge_model: {own!r} is an option of the judge metric itself",
                              hint=f"move {own} up one level, next to rubric")
    try:
        settings = ModelConfig.model_validate(config)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"judge_model.{'.'.join(map(str, err['loc']))}: {err['msg']}",
                          hint="write it like an entry of models:, e.g. {runner: openai, base_url: …, model: …}"
                          ) from None
    try:
        factory = get_runner(settings.runner)
    except PluginError as exc:
        raise ConfigError(f"judge_model: {exc}") from None
    options = expand_env(settings.runner_options(), "judge_model")
    runner_context = RunnerContext(model_name="judge", suite_dir=context.suite_dir, timeout_s=settings.timeout_s,
                                   concurrency=concurrency)
    try:
        built = factory.build(options, runner_context)
    except pydantic.ValidationError as exc:
        # An unknown key first: "modle" also makes "model" missing, and the typo is the thing to fix.
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        name = ".".join(map(str, err["loc"]))
        if err["type"] == "extra_forbidden":
            known = ", ".join(["runner", *factory.options.model_fields])
            raise ConfigError(f"judge_model: unknown option '{name}' for runner '{settings.runner}'"
                              f"{did_you_mean(name, factory.options.model_fields)}", hint=f"options: {known}"
                              ) from None
        raise ConfigError(f"judge_model.{name}: {err['msg']}") from None
    built.check()
    fields = settings.model_fields_set
    retry = _Retry(max_attempts=settings.max_attempts if "max_attempts" in fields else 3,
                   timeout_s=settings.timeout_s, backoff_s=settings.backoff_s, max_backoff_s=settings.max_backoff_s)
    return built, retry


def _template(env: SandboxedEnvironment, source: str, option: str) -> jinja2.Template:
    import jinja2

    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{option}: template syntax error on line {exc.lineno}: {exc.message}") from None


@metric("judge", description="LLM-as-judge: a rubric scored by any configured runner on a numeric scale",
        family="judge")
def judge(
    *,
    rubric: str,
    judge: str | None = None,
    judge_model: dict[str, Any] | None = None,
    scale: tuple[float, float] = (1, 5),
    pass_score: float | None = None,
    repeats: int = 1,
    normalize: bool = True,
    concurrency: int = 8,
    cache: bool = True,
    system: str | None = None,
    context: MetricContext,
) -> JudgeMetric:
    """Ask a judge model to grade each output with ``rubric``.

    ``rubric`` is a Jinja2 template (variables ``input``, ``expected``, ``output``, the case's vars,
    ``scale_min``, ``scale_max``; an undefined one is an error for that case). The judge is ``judge_model`` (a
    runner config written like an entry of ``models:``, not evaluated itself) or ``judge`` (the name of a model
    in ``models:``, which is then also evaluated). ``scale`` is [min, max]; ``pass_score`` is in that scale;
    ``repeats`` asks the judge k times per case and reports their agreement; ``normalize`` maps the value to
    0–1. ``system`` replaces the default instructions (which ask for JSON); ``""`` sends no system message.
    """
    context = context if context is not None else MetricContext()
    lo, hi = (float(x) for x in scale)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"scale {list(scale)} must be [min, max] with min < max", hint="for example [1, 5]")
    if pass_score is not None and not lo <= pass_score <= hi:
        raise ConfigError(f"pass_score {pass_score:g} is outside the scale {_fmt(lo)}–{_fmt(hi)}")
    if repeats < 1 or concurrency < 1:
        raise ConfigError("repeats and concurrency must be at least 1")
    if (judge is None) == (judge_model is None):
        raise ConfigError("name the judge with exactly one of 'judge_model' (a runner config) or 'judge' "
                          "(a model of the suite)", hint="judge_model: {runner: openai, base_url: …, model: …}")

    import jinja2.meta
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    rubric_template = _template(env, rubric, "rubric")
    system_source = DEFAULT_SYSTEM if system is None else system
    system_template = _template(env, system_source, "system") if system_source else None
    used = jinja2.meta.find_undeclared_variables(env.parse(rubric + "\n" + system_source))
    if "output" not in used:
        raise ConfigError("the rubric never shows the judge the answer", hint="put {{ output }} in the rubric")

    if judge_model is not None:
        runner, retry = _inline_runner(judge_model, concurrency, context)
        label = f"{runner.kind}:{runner.identity().get('model', '')}".rstrip(":")
    else:
        assert judge is not None
        if judge not in context.runners:
            known = ", ".join(context.runners) or "none"
            raise ConfigError(f"judge {judge!r} is not a model of the suite{did_you_mean(judge, context.runners)}",
                              hint=f"models: {known}; or give judge_model: {{runner: …}}")
        runner, retry, label = copy.copy(context.runners[judge]), _Retry(), judge

    cache_path = Path(context.cache_dir) / CACHE_FILE if (cache and context.cache_dir is not None) else None
    return JudgeMetric(runner=runner, label=label, rubric=rubric_template, rubric_source=rubric,
                       system=system_template, scale=(lo, hi), pass_score=pass_score, repeats=repeats,
                       normalize=normalize, concurrency=concurrency, cache_path=cache_path, retry=retry,
                       suite_vars=dict(context.suite_vars))


@hookimpl
def register_metrics(register: Callable[[Any], None]) -> None:
    """Register the judge metric."""
    register(judge)
