"""The command line: a thin shell over :mod:`tunebench.api`.

Exit codes: 0 done and no gate failed; 1 a gate failed; 2 bad input or configuration; 3 the run could not
complete (e.g. every request failed); 130 interrupted (resume with ``--resume``). Errors print one message,
never a traceback. Heavy modules are imported inside commands so ``tunebench --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import TunebenchError

__all__ = ["cli", "main"]


def db_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--db", type=click.Path(path_type=Path), default=None,
                        help="DuckDB store (default: $TUNEBENCH_DB or reports/tunebench.duckdb).")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tunebench")
def cli() -> None:
    """Evaluate fine-tuned LLMs against their base model on golden cases."""


@cli.command("run")
@click.argument("suite", type=click.Path(path_type=Path))
@db_option
@click.option("--report", type=click.Path(path_type=Path), help="Where to write the HTML report.")
@click.option("--no-report", is_flag=True, help="Do not write the HTML report.")
@click.option("--limit", type=click.IntRange(min=1), help="Run at most N cases.")
@click.option("--filter", "filters", multiple=True, metavar="TAG",
              help="Only cases with this tag (repeatable; !TAG excludes).")
@click.option("--sample", type=click.IntRange(min=1), help="A deterministic random sample of N cases.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --sample.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="MODEL.SETTING=VALUE",
              help="Override a model setting, e.g. -o tuned.model=ft:abc (repeatable; recorded with the run).")
@click.option("--no-cache", is_flag=True, help="Send every request again (answers are still cached).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Response cache directory.")
@click.option("--resume", is_flag=True, help="Continue the latest unfinished run of this suite.")
@click.option("--baseline", metavar="RUN|TAG|latest",
              help="Compare the candidate with a stored run of this suite (e.g. the one tagged production).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def run_command(suite: Path, db: Path | None, report: Path | None, no_report: bool, limit: int | None,
                filters: tuple[str, ...], sample: int | None, seed: int, overrides: tuple[str, ...],
                no_cache: bool, cache_dir: Path | None, resume: bool, baseline: str | None, as_json: bool) -> None:
    """Run SUITE: query every model on the golden cases, score, store and report."""
    from . import api
    from .cases import Selection
    from .progress import Progress

    progress = Progress(enabled=not as_json)
    config = api.RunConfig(
        suite=suite, db=db, report=report, write_report=not no_report,
        selection=Selection(filters=filters, limit=limit, sample=sample, seed=seed), overrides=overrides,
        cache=not no_cache, cache_dir=cache_dir, resume=resume, baseline=baseline, progress=progress.update)
    try:
        result = api.run(config)
    except KeyboardInterrupt:
        progress.close()
        click.echo("interrupted: finished cases are saved; run again with --resume to continue", err=True)
        raise click.exceptions.Exit(130) from None
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        from .terminal import print_summary

        print_summary(result.summary, report=result.report, db=result.db, stats=result.requests, gates=result.gates)
    raise click.exceptions.Exit(result.exit_code)


@cli.command("compare")
@click.argument("baseline")
@click.argument("candidate")
@db_option
@click.option("--suite", help="Resolve tags and 'latest' among this suite's runs.")
@click.option("--baseline-model", help="Model of the baseline run (default: its candidate).")
@click.option("--candidate-model", help="Model of the candidate run (default: its candidate).")
@click.option("--report", type=click.Path(path_type=Path), help="Where to write the HTML comparison report.")
@click.option("--no-report", is_flag=True, help="Do not write the HTML report.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable comparison.")
def compare_command(baseline: str, candidate: str, db: Path | None, suite: str | None, baseline_model: str | None,
                    candidate_model: str | None, report: Path | None, no_report: bool, as_json: bool) -> None:
    """Compare two stored runs case by case (ids, tags like 'production', or 'latest')."""
    from . import api

    result = api.compare_runs(api.CompareConfig(baseline, candidate, db=db, suite=suite, baseline_model=baseline_model,
                                                candidate_model=candidate_model, report=report,
                                                write_report=not no_report))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
        return
    from .terminal import print_comparison

    print_comparison(result.comparison, report=result.report)


@cli.command("report")
@click.argument("run", default="latest")
@db_option
@click.option("--suite", help="Resolve tags and 'latest' among this suite's runs.")
@click.option("--report", "out", type=click.Path(path_type=Path),
              help="Where to write the HTML report (default: where the run wrote it, next to the store).")
def report_command(run: str, db: Path | None, suite: str | None, out: Path | None) -> None:
    """Write the report of a stored RUN again (id, prefix, tag or 'latest'), from the store alone."""
    from . import api

    click.echo(f"report: {api.report_run(api.ReportConfig(run, db=db, suite=suite, report=out))}")


@cli.command("tag")
@click.argument("run")
@click.argument("tag")
@db_option
def tag_command(run: str, tag: str, db: Path | None) -> None:
    """Tag RUN (id, prefix or 'latest') as TAG, e.g. 'production'; a tag points at one run at a time."""
    from .api import default_db
    from .store import Store

    with Store.open(db or default_db()) as store:
        run_id = store.resolve_run(run)
        store.tag_run(run_id, tag)
    click.echo(f"tagged {run_id} as {tag}")


@cli.command("history")
@db_option
@click.option("--suite", help="Only runs of this suite.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history_command(db: Path | None, suite: str | None, limit: int, as_json: bool) -> None:
    """List runs: suite, time, models, headline metrics, gate status."""
    from .api import history

    rows = history(db, suite=suite, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from .terminal import print_history

    print_history(rows)


@cli.command("weekly")
@db_option
@click.option("--since", metavar="SPAN|DATE", default="7d", show_default=True,
              help="Start of the period: a span back from --to (24h, 7d, 2w) or a date.")
@click.option("--from", "from_", metavar="DATE", help="Start of the period as a date or time (overrides --since).")
@click.option("--to", metavar="DATE", help="End of the period, not included (default: now).")
@click.option("--suite", help="Only this suite (default: every suite with runs in the period).")
@click.option("--out", type=click.Path(path_type=Path),
              help="HTML file to write (default: reports/weekly/weekly-<end date>.html).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def weekly_command(db: Path | None, since: str, from_: str | None, to: str | None, suite: str | None,
                   out: Path | None, as_json: bool) -> None:
    """Write the weekly quality report: trends, promotions, newly failing and unstable cases."""
    from datetime import UTC, datetime

    from .api import default_db
    from .weekly import WeeklyConfig, parse_when, weekly_report

    until = parse_when(to, option="--to") if to else datetime.now(UTC)
    start = parse_when(from_, option="--from") if from_ else parse_when(since, now=until, option="--since")
    out = out or Path("reports/weekly") / f"weekly-{until:%Y-%m-%d}.html"
    result = weekly_report(WeeklyConfig(db=db or default_db(), since=start, until=until, suite=suite, out=out))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    if result.message:
        click.echo(result.message)
    click.echo(f"weekly report: {result.path} ({result.runs} runs in {len(result.suites)} suites, "
               f"{result.newly_failing} newly failing cases)")


@cli.command("sweep")
@click.argument("suite", type=click.Path(path_type=Path))
@click.argument("checkpoints", nargs=-1, required=True, metavar="CHECKPOINT...")
@db_option
@click.option("--model", default="tuned", show_default=True, help="The suite's model that gets each checkpoint.")
@click.option("--setting", default="adapter", show_default=True,
              help="The model setting to override: adapter (LoRA) or checkpoint (full fine-tune).")
@click.option("--step", "steps", type=int, multiple=True,
              help="Training step of each CHECKPOINT, in order (default: the last number in its name).")
@click.option("--retention", multiple=True, metavar="METRIC",
              help="A metric that must not fall below the baseline by more than --retention-delta (repeatable).")
@click.option("--retention-delta", type=float, default=0.0, show_default=True,
              help="Largest allowed loss on a retention metric, in the metric's units.")
@click.option("--best-metric", metavar="METRIC", help="The metric that picks the best checkpoint (default: the first).")
@click.option("--report", type=click.Path(path_type=Path), help="Where to write the sweep report.")
@click.option("--run-reports", is_flag=True, help="Also write each checkpoint run's own HTML report.")
@click.option("--limit", type=click.IntRange(min=1), help="Run at most N cases per checkpoint.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Response cache directory.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def sweep_command(suite: Path, checkpoints: tuple[str, ...], db: Path | None, model: str, setting: str,
                  steps: tuple[int, ...], retention: tuple[str, ...], retention_delta: float,
                  best_metric: str | None, report: Path | None, run_reports: bool, limit: int | None,
                  cache_dir: Path | None, as_json: bool) -> None:
    """Evaluate every CHECKPOINT of a training run against SUITE and its baseline; plot metrics by step.

    CHECKPOINT is a directory, or a quoted glob such as 'runs/exp1/checkpoint-*'.
    """
    from .cases import Selection
    from .sweep import Checkpoint, SweepConfig, checkpoints_from_glob, run_sweep, step_from_name

    if steps and len(steps) != len(checkpoints):
        raise click.UsageError("give one --step per CHECKPOINT, or none")
    found: list[Checkpoint] = []
    for i, arg in enumerate(checkpoints):
        if any(ch in arg for ch in "*?["):
            if steps:
                raise click.UsageError("--step cannot be combined with a glob")
            found += checkpoints_from_glob(arg)
        else:
            found.append(Checkpoint(Path(arg), steps[i] if steps else step_from_name(Path(arg))))

    def progress(i: int, n: int, c: Checkpoint) -> None:
        click.echo(f"[{i + 1}/{n}] step {c.step}: {c.path}", err=True)

    result = run_sweep(SweepConfig(
        suite=suite, checkpoints=tuple(found), model=model, setting=setting, db=db, cache_dir=cache_dir,
        report=report, write_run_reports=run_reports, selection=Selection(limit=limit), retention=retention,
        retention_delta=retention_delta, best_metric=best_metric, progress=None if as_json else progress))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        for p in result.points:
            status = ("error: " + p.error) if p.error else ("retention failed: " + "; ".join(p.retention_failures)
                                                            if p.retention_failures else "ok")
            values = "  ".join(f"{m}={v:.4g}" for m, v in p.values.items() if v is not None)
            click.echo(f"step {p.checkpoint.step:>7}  {p.run_id or '-':<24} {values}  {status}")
        best = f"step {result.best.checkpoint.step}" if result.best else "none (every checkpoint failed)"
        click.echo(f"best by {result.best_metric}: {best}\nreport: {result.report}")
    raise click.exceptions.Exit(0 if result.best is not None else 1)


@cli.command("validate")
@click.argument("suites", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate_command(suites: tuple[Path, ...]) -> None:
    """Check SUITES and the files they reference, without calling any model."""
    from . import api

    for path, n_cases, n_metrics in api.validate(list(suites)):
        click.echo(f"ok  {path}: {_count(n_cases, 'case')}, {_count(n_metrics, 'metric')}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_command(as_json: bool) -> None:
    """List every registered runner and metric with the plugin it came from."""
    from .plugins import list_metrics, list_runners

    rows = [{"type": "runner", "name": f.kind, "plugin": f.plugin, "description": f.description}
            for f in list_runners().values()]
    rows += [{"type": "metric", "name": f.kind, "plugin": f.plugin, "family": f.family,
              "description": f.description} for f in list_metrics().values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['type']:<7} {r['name']:<22} {r['plugin']:<34} {r['description']}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: TunebenchError → message and exit code, no traceback."""
    code = _dispatch(argv)
    # Every store, cache and report is closed by now: skip the interpreter's teardown of DuckDB, numpy and the
    # rest, ~0.1 s -- a tenth of a short run. Only the output streams (and logging) still need flushing.
    if "logging" in sys.modules:
        import logging

        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (tunebench … | head): nothing to say
            stream.flush()
    os._exit(code)


def _dispatch(argv: list[str] | None) -> int:
    try:
        # Not standalone: click returns a command's exit code (click.exceptions.Exit) instead of exiting.
        code = cli.main(args=argv, prog_name="tunebench", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except TunebenchError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) else 0
