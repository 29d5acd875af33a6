"""A third-party package adds a metric and a runner through the ``tunebench`` entry-point group.

The package is written to a temporary directory, built and pip-installed (no index, no build isolation, no
dependencies: nothing is downloaded) into a fresh virtual environment that sees the system's packages, so
tunebench and its dependencies come from this checkout while the plugin exists only in that environment. The
CLI then runs in a subprocess with the environment's Python -- exactly what a user who pip-installs a plugin
gets. Also: an unknown metric or runner name in a suite fails ``tunebench validate`` with "did you mean …".
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''\
"""tb_shout: a tunebench plugin with a ``shout`` metric and a ``reverse`` runner."""

import tunebench


class Shout(tunebench.Metric):
    kind = "shout"

    def __init__(self, *, min_ratio):
        super().__init__(threshold=min_ratio)

    def score(self, sample):
        letters = [c for c in sample.text if c.isalpha()]
        if not letters:
            return tunebench.Score(value=None, error="no letters to judge")
        value = sum(c.isupper() for c in letters) / len(letters)
        return tunebench.Score(value=value, passed=self.passes(value), explanation=f"{value:.0%} upper case",
                               details={"letters": len(letters)})


@tunebench.metric("shout", description="Share of letters in upper case", family="style")
def shout(*, min_ratio: float = 0.5):
    return Shout(min_ratio=min_ratio)


class Reverse(tunebench.Runner):
    kind = "reverse"

    def __init__(self, upper):
        self.upper = upper

    def identity(self):
        return {"kind": self.kind, "upper": self.upper}

    async def generate(self, request):
        text = request.messages[-1]["content"][::-1]
        return tunebench.Response(text.upper() if self.upper else text)


@tunebench.runner("reverse", description="Answers with the prompt reversed")
def reverse(*, upper: bool = False, context: tunebench.RunnerContext):
    return Reverse(upper)


@tunebench.hookimpl
def register_metrics(register):
    register(shout)


@tunebench.hookimpl
def register_runners(register):
    register(reverse)
'''

PYPROJECT = '''\
[build-system]
requires = ["{backend}"]
build-backend = "{build_backend}"

[project]
name = "tb-shout"
version = "0.1.0"
dependencies = ["tunebench"]

[project.entry-points.tunebench]
myplugin = "tb_shout"
{layout}
'''

# setuptools is part of most Python installs; hatchling is tunebench's own build backend. Either builds the
# package offline with --no-build-isolation.
BACKENDS = {
    "setuptools": ("setuptools>=61", "setuptools.build_meta", '\n[tool.setuptools]\npy-modules = ["tb_shout"]\n'),
    "hatchling": ("hatchling", "hatchling.build", '\n[tool.hatch.build.targets.wheel]\ninclude = ["tb_shout.py"]\n'),
}

SUITE = """\
name: shouting
models:
  base: {runner: reverse}
  tuned: {runner: reverse, upper: true}
cases:
  - {id: c1, input: "hello world", expected: "DLROW OLLEH"}
  - {id: c2, input: "Quiet please", expected: "ESAELP TEIUQ"}
  - {id: c3, input: "ABC def", expected: "FED CBA"}
metrics:
  loud: {type: shout, min_ratio: 0.9}
  exact: {type: exact_match, ignore_case: false}
"""


def _backend() -> str:
    for name in BACKENDS:
        if importlib.util.find_spec(name.split(">")[0]) is not None:
            return name
    raise AssertionError("building the test plugin needs setuptools or hatchling installed (test dependency)")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtual environment with tb-shout installed in it, and only in it; returns its python."""
    root = tmp_path_factory.mktemp("plugin")
    package = root / "tb-shout"
    package.mkdir()
    backend = _backend()
    requires, build_backend, layout = BACKENDS[backend]
    (package / "pyproject.toml").write_text(PYPROJECT.format(backend=requires, build_backend=build_backend,
                                                             layout=layout))
    (package / "tb_shout.py").write_text(PLUGIN)
    env_dir = root / "venv"
    # --without-pip: pip itself is visible through --system-site-packages and installs into sys.prefix, i.e.
    # into this environment; skipping ensurepip saves seconds.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(env_dir)],
                   check=True, timeout=60)
    python = env_dir / "bin" / "python"
    # When the tests themselves run in a virtualenv, --system-site-packages shows the *base* interpreter's
    # packages, not that virtualenv's: a .pth file adds the running interpreter's site directories as well.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "outer-site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--quiet", str(package)],
        capture_output=True, text=True, timeout=120, env=_env(root))
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def _env(root: Path) -> dict[str, str]:
    # This checkout's tunebench first on the path; a private HOME and pip cache keep the machine's untouched.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(REPO / "src"), HOME=str(root), PIP_NO_CACHE_DIR="1", PIP_NO_INPUT="1",
               HF_HUB_OFFLINE="1")
    return env


def tunebench(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "tunebench", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=_env(cwd))


def test_plugin_is_installed_only_in_its_environment(venv):
    inside = subprocess.run([str(venv), "-c", "import tb_shout, tunebench; print(tunebench.__file__)"],
                            capture_output=True, text=True, env=_env(venv.parent))
    assert inside.returncode == 0, inside.stderr
    assert Path(inside.stdout.strip()).is_relative_to(REPO / "src")
    assert importlib.util.find_spec("tb_shout") is None  # not in the interpreter running the tests


def test_plugins_lists_the_third_party_metric_and_runner(venv, tmp_path):
    result = tunebench(venv, "plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {(r["type"], r["name"]): r for r in json.loads(result.stdout)}
    shout, reverse = rows[("metric", "shout")], rows[("runner", "reverse")]
    for row in (shout, reverse):
        assert "tb_shout" in row["plugin"].replace("-", "_")
    assert shout["family"] == "style" and shout["description"] == "Share of letters in upper case"
    assert reverse["description"] == "Answers with the prompt reversed"
    # the built-ins are still there, from tunebench
    assert rows[("metric", "exact_match")]["plugin"].startswith("tunebench")
    assert rows[("runner", "openai")]["plugin"].startswith("tunebench")


def test_a_suite_runs_with_the_plugin_runner_and_metric(venv, tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    result = tunebench(venv, "run", "suite.yaml", "--db", str(tmp_path / "store.duckdb"), "--cache-dir",
                       str(tmp_path / "cache"), "--no-report", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    loud = summary["metrics"]["loud"]["values"]

    def ratio(text: str) -> float:
        letters = [c for c in text if c.isalpha()]
        return sum(c.isupper() for c in letters) / len(letters)

    inputs = ["hello world", "Quiet please", "ABC def"]
    base = [ratio(t[::-1]) for t in inputs]
    assert loud["base"]["value"] == pytest.approx(sum(base) / 3)
    assert loud["base"]["pass_rate"] == pytest.approx(sum(r >= 0.9 for r in base) / 3)
    assert (loud["tuned"]["value"], loud["tuned"]["pass_rate"], loud["tuned"]["n"]) == (1.0, 1.0, 3)
    assert summary["metrics"]["exact"]["values"]["tuned"]["value"] == 1.0  # the runner's outputs were scored

    from tunebench.store import Store

    with Store.open(tmp_path / "store.duckdb", read_only=True) as store:
        scores = store.get_scores(summary["run_id"], model="tuned", metric="loud")
    assert [(cid, s.explanation, s.details) for cid, _, _, _, s in scores] == [
        ("c1", "100% upper case", {"letters": 10}), ("c2", "100% upper case", {"letters": 11}),
        ("c3", "100% upper case", {"letters": 6})]


@pytest.mark.parametrize(("old", "new", "typo", "suggestion"), [
    ("type: shout,", "type: shuot,", "unknown metric 'shuot'", "did you mean 'shout'?"),
    ("{runner: reverse, upper", "{runner: revers, upper", "unknown runner 'revers'", "did you mean 'reverse'?"),
    ("type: exact_match,", "type: exact_mach,", "unknown metric 'exact_mach'", "did you mean 'exact_match'?"),
])
def test_unknown_names_fail_validation_with_a_suggestion_and_the_line(venv, tmp_path, old, new, typo, suggestion):
    text = SUITE.replace(old, new)
    assert text != SUITE
    (tmp_path / "suite.yaml").write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if new in row)
    result = tunebench(venv, "validate", "suite.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert typo in message and suggestion in message, message
    assert f"suite.yaml:{line}" in message, message
    assert "Traceback" not in result.stderr


def test_valid_suite_passes_validation(venv, tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    result = tunebench(venv, "validate", "suite.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok  suite.yaml: 3 cases, 2 metrics")


def test_the_documented_example_is_the_tested_one():
    docs = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    blocks = re.findall(r"`tb_shout.py`:\n\n```python\n(.*?)```", docs, re.S)
    assert blocks == [PLUGIN]
