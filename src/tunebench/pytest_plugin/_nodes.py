"""The collection tree: a suite file (``SuiteFile``) → one item per gate (``GateItem``), or ``run`` without gates.

Invariants: collecting a suite parses and validates it (no model is called, nothing is written); running the
suite happens in the setup of the first selected item that needs it, so a harness error is a test *error*; an
item's call phase only reads the suite's outcome and fails when its gate failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["GateFailed", "GateItem", "HarnessError", "SuiteFile", "harness_error", "item_name"]


def item_name(gate_name: str) -> str:
    """A gate name as a test name that ``-k`` accepts: ``rouge floor`` → ``rouge_floor``."""
    return re.sub(r"[^\w.-]+", "_", gate_name).strip("_") or "gate"


class GateFailed(Exception):
    """A gate did not pass (the failure text is built by ``GateItem.repr_failure``)."""

    def __init__(self, gate: dict[str, Any], record: dict[str, Any]) -> None:
        super().__init__(gate["message"])
        self.gate, self.record = gate, record


class HarnessError(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """A suite could not be run: raised in an item's setup, so pytest reports an error, shown without traceback."""

    __module__ = "builtins"  # pytest prints "<class name>: message", as for its own outcome exceptions

    def __init__(self, message: str) -> None:
        super().__init__(message, pytrace=False)


def harness_error(kind: str | None, message: str) -> HarnessError:
    """A HarnessError whose class name is tunebench's error type (``RunIncompleteError: every request …``)."""
    if kind and kind.isidentifier() and kind != "HarnessError":
        return type(kind, (HarnessError,), {"__module__": "builtins"})(message)
    return HarnessError(message)


class SuiteFile(pytest.File):
    """A tunebench suite YAML file."""

    def collect(self) -> Iterator[pytest.Item]:
        from tunebench.errors import TunebenchError
        from tunebench.suite import load_suite

        try:
            loaded = load_suite(self.path)
        except TunebenchError as exc:
            from ._session import get_runs

            get_runs(self.config).load_error(self.path, str(exc))
            raise self.CollectError(str(exc)) from None
        suite = loaded.suite
        marks = [pytest.mark.tunebench(str(self.path))]
        if self.config.pluginmanager.hasplugin("xdist"):  # keeps a suite's gates together under --dist loadgroup
            marks.append(pytest.mark.xdist_group(f"tunebench:{self.path}"))
        if not suite.gates:
            yield self._item("run", None, None, suite.name, loaded.located.position(()), marks)
            return
        used: set[str] = set()
        for i, gate in enumerate(suite.gates):
            name = base = item_name(gate.name)
            n = 1
            while name in used:  # "a b" and "a-b" slug alike: keep node ids unique
                n += 1
                name = f"{base}-{n}"
            used.add(name)
            yield self._item(name, gate.name, gate.kind, suite.name, loaded.located.position(("gates", i)), marks)

    def _item(self, name: str, gate: str | None, kind: str | None, suite_name: str,
              position: tuple[int | None, int | None], marks: list[Any]) -> GateItem:
        item = GateItem.from_parent(self, name=name, gate=gate, kind=kind, suite_name=suite_name,
                                    line=(position[0] or 1) - 1)
        for mark in marks:
            item.add_marker(mark)
        item.extra_keyword_matches.update({suite_name, *([kind] if kind else [])})
        return item


class GateItem(pytest.Item):
    """One gate of a suite (``gate`` is None for the ``run`` item of a suite without gates)."""

    def __init__(self, *, gate: str | None, kind: str | None, suite_name: str, line: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate, self.kind, self.suite_name, self.line = gate, kind, suite_name, line
        self.outcome: Any = None

    def setup(self) -> None:
        from ._session import get_runs

        self.outcome = get_runs(self.config).outcome(Path(self.path))
        if self.outcome.error:
            raise harness_error(self.outcome.record.get("error_type"), self.outcome.error)

    def runtest(self) -> None:
        record = self.outcome.record
        self.user_properties.extend([("suite", record["suite"]), ("run_id", record["run_id"])])
        if self.gate is None:
            return
        gate = self.outcome.gate(self.gate)
        from ._report import gate_properties

        self.user_properties.extend(gate_properties(gate))
        if not gate["passed"]:
            raise GateFailed(gate, record)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str | Any:
        if isinstance(excinfo.value, GateFailed):
            from ._report import failure_text

            return failure_text(excinfo.value.gate, excinfo.value.record)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line, f"{self.suite_name}: {self.gate or 'run'}"
