"""tunebench's pytest plugin: every promotion gate of a suite becomes a pytest test.

Registered through the ``pytest11`` entry point ``tunebench`` (turn it off with ``-p no:tunebench``).
``pytest suites/`` collects the suites there; ``pytest --tunebench suites/insurance.yaml`` runs exactly that one.
Each gate is an item ``suites/insurance.yaml::rouge_floor`` (the gate's name with every run of characters other
than letters, digits, ``_``, ``.`` and ``-`` turned into ``_``, so ``-k`` accepts it); a suite without gates yields
one item, ``run``. The full reference is docs/ci.md.

Invariants:

- This module imports only pytest and the standard library. tunebench's pipeline (pydantic, DuckDB, metrics) is
  imported inside hooks, and only once a suite file is collected or a tunebench fixture is used: a project that
  does not use tunebench gets no items, no warnings, no files and no noticeable start-up cost.
- A ``.yaml``/``.yml`` file is a suite when it was named on the command line (or with ``--tunebench``), when it
  matches a ``tunebench_suites`` pattern, or, with no patterns configured, when it has the top-level keys
  ``models:``, ``cases:`` and ``metrics:`` (each at the start of a line) -- CI configs, compose files and
  Kubernetes manifests never do.
- A suite runs at most once per pytest session, however many of its gates are selected, also under pytest-xdist
  (see ``_session``). A failing gate is a test failure; a harness error (bad suite, endpoint down, store locked)
  is a test error, raised in the item's setup.
- Plugin state lives in ``config.stash``; nothing is kept in module globals.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["RUNS_KEY", "is_suite_file"]

RUNS_KEY = pytest.StashKey[Any]()
"""The session's :class:`~tunebench.pytest_plugin._session.Runs` (created on first use)."""
XDIST_UID_KEY = pytest.StashKey[str]()
"""pytest-xdist's test-run id, recorded by the controller (workers read it from ``workerinput``)."""
COLLECT_ERRORS_KEY = pytest.StashKey[dict[str, str]]()
"""Suite files that could not be collected: node id → message (for the summary)."""
RECORDS_KEY = pytest.StashKey[list[dict[str, Any]]]()
"""Every suite outcome of the session, gathered once at the end (controller or single process)."""

_SUFFIXES = (".yaml", ".yml")
_TOP_KEYS = ("models", "cases", "metrics")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tunebench", "tunebench: evaluate fine-tuned models; each suite gate is a test")
    group.addoption("--tunebench", action="append", default=[], metavar="SUITE", dest="tunebench_suite_args",
                    help="Run this suite YAML (repeatable). Without other paths only these suites are collected.")
    group.addoption("--tunebench-override", action="append", default=[], metavar="MODEL.SETTING=VALUE",
                    dest="tunebench_overrides",
                    help="Override a model setting, e.g. tuned.model=ft:abc or tuned.base_url=http://… "
                         "(repeatable; added to the tunebench_overrides ini lines).")
    group.addoption("--tunebench-baseline", metavar="REF", dest="tunebench_baseline",
                    help="Compare each suite's candidate with a stored run (run id, prefix, a tag such as "
                         "'production', or 'latest') instead of the suite's baseline model; '{suite}' in REF "
                         "becomes the suite's name (production-{suite}).")
    group.addoption("--tunebench-tag", metavar="TAG", dest="tunebench_tag",
                    help="Tag each suite's run with TAG (e.g. production-{suite}) when every gate passed.")
    group.addoption("--tunebench-db", metavar="PATH", dest="tunebench_db",
                    help="DuckDB store (default: ini tunebench_db, $TUNEBENCH_DB or reports/tunebench.duckdb).")
    group.addoption("--tunebench-summary", metavar="PATH", dest="tunebench_summary",
                    help="Write a Markdown summary of the runs here (it is also appended to "
                         "$GITHUB_STEP_SUMMARY when that variable is set).")
    group.addoption("--tunebench-no-cache", action="store_true", default=False, dest="tunebench_no_cache",
                    help="Send every request again instead of replaying cached responses.")
    group.addoption("--tunebench-no-report", action="store_true", default=False, dest="tunebench_no_report",
                    help="Do not write the HTML report of each run.")
    parser.addini("tunebench_suites", type="linelist", default=[],
                  help="Glob patterns (relative to rootdir) of suite files. Default: a YAML file with the "
                       "top-level keys models:, cases: and metrics: is a suite.")
    parser.addini("tunebench_overrides", type="linelist", default=[],
                  help="MODEL.SETTING=VALUE overrides applied to every suite, one per line.")
    parser.addini("tunebench_baseline", type="string", default="",
                  help="Stored run to compare candidates with (like --tunebench-baseline).")
    parser.addini("tunebench_tag", type="string", default="",
                  help="Tag each suite's run when every gate passed (like --tunebench-tag).")
    parser.addini("tunebench_db", type="string", default="",
                  help="DuckDB store, relative to the ini file (like --tunebench-db).")
    parser.addini("tunebench_summary", type="string", default="",
                  help="Markdown summary path, relative to the ini file (like --tunebench-summary).")
    parser.addini("tunebench_cache", type="bool", default=True,
                  help="Replay cached responses (false: like --tunebench-no-cache).")
    parser.addini("tunebench_report", type="bool", default=True,
                  help="Write each run's HTML report (false: like --tunebench-no-report).")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tunebench(suite): the test uses this suite's run (tunebench_run fixture); "
                   "every gate item of a suite carries it")
    _add_suite_args(config)


def _add_suite_args(config: pytest.Config) -> None:
    """``--tunebench SUITE`` adds SUITE to the paths to collect; alone, it replaces testpaths."""
    suites = config.getoption("tunebench_suite_args", None) or []
    if not suites:
        return
    given = list(config.args) if config.args_source == pytest.Config.ArgsSource.ARGS else []
    base = config.invocation_params.dir
    seen = {(base / a.split("::", 1)[0]).resolve() for a in given}
    for suite in suites:
        if (base / suite).resolve() not in seen:
            given.append(suite)
            seen.add((base / suite).resolve())
    config.args[:] = given


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist (controller): remember the test-run id that names the workers' shared folder."""
    node.config.stash[XDIST_UID_KEY] = node.workerinput["testrunuid"]


def is_suite_file(file_path: Path, config: pytest.Config, *, explicit: bool = False) -> bool:
    """Whether a YAML file is collected as a suite (the rule in the module docstring)."""
    if file_path.suffix not in _SUFFIXES:
        return False
    if explicit:
        return True
    patterns = config.getini("tunebench_suites")
    if patterns:
        try:
            rel = file_path.relative_to(config.rootpath).as_posix()
        except ValueError:
            rel = file_path.as_posix()
        # a pattern without '/' matches the file name, one with '/' the path from rootdir ('*' also matches '/')
        return any(fnmatch.fnmatch(rel if "/" in p else file_path.name, p) for p in patterns)
    try:
        text = file_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return all(re.search(rf"^{key}:", text, re.MULTILINE) for key in _TOP_KEYS)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in _SUFFIXES:  # the common case: one string comparison per file
        return None
    if not is_suite_file(file_path, parent.config, explicit=parent.session.isinitpath(file_path)):
        return None
    from ._nodes import SuiteFile

    return SuiteFile.from_parent(parent, path=file_path)


def _used(config: pytest.Config) -> bool:
    """Whether this session (or, for the xdist controller, one of its workers) touched a suite."""
    if RUNS_KEY in config.stash:
        return True
    uid = config.stash.get(XDIST_UID_KEY, None)
    return uid is not None and _shared_dir(uid).is_dir()


def _shared_dir(uid: str) -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"tunebench-pytest-{uid}"


def _records(config: pytest.Config) -> list[dict[str, Any]]:
    if RECORDS_KEY not in config.stash:
        from ._session import gather_records

        config.stash[RECORDS_KEY] = gather_records(config)
    return config.stash[RECORDS_KEY]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") or not _used(config):
        return
    from ._report import write_summaries

    write_summaries(config, _records(config))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not _used(config):
        return
    from ._report import terminal_lines

    lines = terminal_lines(_records(config), config)
    if lines:
        terminalreporter.section("tunebench")
        for line in lines:
            terminalreporter.line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    uid = config.stash.get(XDIST_UID_KEY, None)
    if uid is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_shared_dir(uid), ignore_errors=True)


@pytest.fixture(scope="session")
def tunebench_run_suite(pytestconfig: pytest.Config) -> Callable[[str | os.PathLike[str]], Any]:
    """``tunebench_run_suite("suites/insurance.yaml")`` → that suite's ``RunResult`` (run once per session).

    A relative path is taken from pytest's rootdir. A harness error fails the caller with tunebench's message.
    """
    from ._session import get_runs

    return get_runs(pytestconfig).result


@pytest.fixture
def tunebench_run(request: pytest.FixtureRequest, tunebench_run_suite: Callable[[str], Any]) -> Any:
    """The ``RunResult`` of the suite named by ``@pytest.mark.tunebench("suites/x.yaml")`` (or by the only
    ``--tunebench`` suite): ``tunebench_run.metric("tuned", "rougeL").value``, ``tunebench_run.flips(…)``."""
    marker = request.node.get_closest_marker("tunebench")
    if marker is not None and (marker.args or "suite" in marker.kwargs):
        suite = marker.args[0] if marker.args else marker.kwargs["suite"]
    else:
        given = request.config.getoption("tunebench_suite_args", None) or []
        if len(given) != 1:
            pytest.fail("tunebench_run needs a suite: mark the test with @pytest.mark.tunebench('suites/x.yaml')"
                        + (f" (--tunebench named {len(given)} suites)" if given else " or pass --tunebench SUITE"),
                        pytrace=False)
        suite = str(request.config.invocation_params.dir / given[0])
    return tunebench_run_suite(suite)
