"""Cost metric: what each answer cost, from the token usage the runner recorded and a price table.

Invariants:
- prices come from the ``prices`` option, else the suite variable ``prices``: model name (as named in the suite,
  ``Output.model``) → ``{input_per_1k, output_per_1k}`` or ``{input_per_million, output_per_million}``, in
  ``currency`` units. A malformed table is a ConfigError when the metric is built, naming the model and key.
- the value is the nominal cost of the answer -- prompt tokens × input price + completion tokens × output
  price -- also for answers served from the response cache (``details["cached"]`` says so; the aggregate
  reports ``total_uncached`` separately), so a cached rerun reports the same cost as the run that paid.
- an output without token usage, or from a model missing from the table, is an error Score saying what to fix;
  never a zero cost.
- lower is better; with a ``threshold`` a case passes when it costs at most that much.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..factory import did_you_mean
from ..hookspecs import hookimpl
from ..records import Aggregate, Sample, Score
from ._base import Metric, MetricContext, metric

__all__ = ["Cost", "cost", "parse_prices"]

_UNITS = {"per_1k": 1_000, "per_million": 1_000_000}
_KEYS = tuple(f"{side}_{unit}" for side in ("input", "output") for unit in _UNITS)


def parse_prices(table: Any, where: str) -> dict[str, tuple[float, float]]:
    """Model → (price per input token, price per output token); ConfigError on any malformed entry."""
    hint = "write prices: {MODEL: {input_per_1k: 0.5, output_per_1k: 1.5}} (or input/output_per_million)"
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where}: the price table must map model names to prices", hint=hint)
    out: dict[str, tuple[float, float]] = {}
    for model, entry in table.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: prices for model {model!r} must be a mapping", hint=hint)
        for key in entry:
            if key not in _KEYS:
                raise ConfigError(f"{where}: unknown price key {key!r} for model {model!r}"
                                  f"{did_you_mean(str(key), _KEYS)}", hint="allowed: " + ", ".join(_KEYS))
        per_token: list[float] = []
        for side in ("input", "output"):
            given = [(k, entry[k]) for k in (f"{side}_{u}" for u in _UNITS) if k in entry]
            if len(given) != 1:
                raise ConfigError(f"{where}: model {model!r} needs exactly one {side} price "
                                  f"({side}_per_1k or {side}_per_million), got {len(given)}", hint=hint)
            key, price = given[0]
            if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) \
                    or price < 0:
                raise ConfigError(f"{where}: {key} for model {model!r} must be a number ≥ 0, got {price!r}")
            per_token.append(float(price) / _UNITS[key.split("_", 1)[1]])
        out[str(model)] = (per_token[0], per_token[1])
    return out


class Cost(Metric):
    """Cost of one answer in ``currency`` units."""

    kind = "cost"
    higher_is_better = False

    def __init__(self, *, prices: dict[str, tuple[float, float]], currency: str, threshold: float | None) -> None:
        super().__init__(threshold=threshold)
        self.prices, self.currency = prices, currency

    def score(self, sample: Sample) -> Score:
        out = sample.output
        if out.error is not None:
            return Score(value=None, error=f"model output failed: {out.error}")
        if out.prompt_tokens is None or out.completion_tokens is None:
            return Score(value=None, error="no token usage recorded (the runner did not report prompt and "
                         "completion tokens), so the cost is unknown")
        if out.model not in self.prices:
            return Score(value=None, error=(
                f"model {out.model!r} has no entry in the cost price table"
                f"{did_you_mean(out.model, self.prices)}; add prices: {{{out.model}: {{input_per_1k: …, "
                "output_per_1k: …}} to the metric options or the suite vars"))
        input_price, output_price = self.prices[out.model]
        input_cost = out.prompt_tokens * input_price
        output_cost = out.completion_tokens * output_price
        value = input_cost + output_cost
        details = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                   "input_cost": input_cost, "output_cost": output_cost, "currency": self.currency,
                   "cached": out.cached}
        return Score(value=value, passed=self.passes(value),
                     explanation=f"{value:.6g} {self.currency} ({out.prompt_tokens} in + {out.completion_tokens} "
                     "out tokens)", details=details)

    def aggregate(self, scores: Sequence[Score]) -> Aggregate:
        base = super().aggregate(scores)
        ok = [s for s in scores if s.error is None and s.value is not None]
        if not ok:
            return base
        total = math.fsum(s.value for s in ok)  # type: ignore[misc]
        details = {
            "currency": self.currency,
            "total_cost": total,
            "mean_cost": total / len(ok),
            "total_uncached": math.fsum(s.value for s in ok if not s.details.get("cached")),  # type: ignore[misc]
            "total_prompt_tokens": sum(s.details["prompt_tokens"] for s in ok),
            "total_completion_tokens": sum(s.details["completion_tokens"] for s in ok),
        }
        return Aggregate(value=base.value, n=base.n, n_errors=base.n_errors, pass_rate=base.pass_rate,
                         details=details)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "currency": self.currency,
                "prices_per_1k": {m: [p[0] * 1000, p[1] * 1000] for m, p in sorted(self.prices.items())}}


@metric("cost", description="cost of each answer from recorded token usage and a per-model price table "
        "(lower is better)", family="cost")
def cost(
    *,
    prices: dict[str, dict[str, float]] | None = None,
    currency: str = "USD",
    threshold: float | None = None,
    context: MetricContext | None = None,
) -> Cost:
    """``prices`` maps each model name to ``input_per_1k``/``output_per_1k`` (or ``…_per_million``) prices;
    unset, the suite variable ``prices`` is used. ``threshold`` is the most one answer may cost."""
    where = "metric 'cost' option 'prices'"
    if not prices:
        prices = context.suite_vars.get("prices") if context is not None else None
        where = "suite variable 'prices'"
        if not prices:
            raise ConfigError("metric 'cost' needs a price table",
                              hint="set the metric option prices: {MODEL: {input_per_1k: …, output_per_1k: …}} "
                              "or the suite variable prices")
    return Cost(prices=parse_prices(prices, where), currency=currency, threshold=threshold)


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    """Register the cost metric."""
    register(cost)
