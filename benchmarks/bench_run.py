"""Whole-process benchmark of ``tunebench run`` against the loopback fake OpenAI server.

Each measurement starts ``tunebench run SUITE --no-report --no-cache --json --db TMP --cache-dir TMP`` as a
child process and measures it from the outside: wall time around the child, its CPU time and peak RSS from
``wait4`` (``ru_maxrss``), and the request counts from its ``--json`` summary (a row whose requests did not
all succeed is marked). The fake server (``tests/fakeserver.py``) runs in its own process, so it does not
share the client's GIL -- but it does share the machine's cores, as it would on a CI runner; its CPU time is
reported too.

Concurrency: the suite sets ``concurrency: C`` on each of its two models and both models run at the same
time, so ``2 × C`` requests are in flight. The latency bound is the time the requests need if every slot is
always busy and the client costs nothing::

    bound = cases × models × latency ÷ in-flight  =  cases × latency ÷ C      (in-flight = models × C)

The issue's "16 requests in flight (and 64)" are the rows with C = 8 and C = 32; C = 16 and C = 64 are 16 and
64 per model. Start-up is measured separately: ``tunebench --help``, ``import tunebench``, and a one-case run
(the fixed cost of any run: imports, suite, plugins, the DuckDB file, summary, comparison and exit); "net"
ratios subtract it. So is the floor the fixture sets: at each latency above 0, the same number of requests with
the same number in flight, sent by the least client there is -- raw HTTP/1.1 on asyncio streams over keep-alive
connections, reading each answer by its Content-Length and nothing more (``floor_client.py``), in a child
process measured the same way -- and the time to import the libraries a run needs (DuckDB, numpy, pydantic,
PyYAML, Jinja2, asyncio).

    python benchmarks/bench_run.py                  # the full matrix, RSS flatness and start-up (~8 min)
    python benchmarks/bench_run.py --quick          # 1 repeat, no flatness series
    python benchmarks/bench_run.py --only 50:16     # one LATENCY:CONCURRENCY cell

The package's modules are compiled to bytecode first, as a wheel install has them. Cases cycle through the real
golden inputs of ``../shared/data/*.jsonl`` with synthetic ids (synthetic text when that folder is absent); the
fake server answers ``[model] <input>`` and the cheap ``exact_match`` metric scores every output (``--metric``
names another).
Other processes on the machine skew the figures: the load average is printed.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "fakeserver.py"
FLOOR_CLIENT = Path(__file__).with_name("floor_client.py")
DATA = ROOT.parent / "shared" / "data"
MODELS = ("base", "tuned")


@dataclass
class Measurement:
    wall_s: float
    cpu_s: float
    """User + system CPU of the tunebench process."""
    rss_mb: float
    sent: int
    errors: int
    rc: int
    server_cpu_s: float = 0.0


def golden_rows(n: int) -> Iterator[dict[str, str]]:
    """``n`` cases: the shared golden inputs and outputs, cycled, with unique ids -- one at a time: every run is a
    child of this process, and a child's peak RSS as ``wait4`` reports it is at least this process's at the fork
    (holding 128,000 cases here put 191 MB on every row measured after them)."""
    source: list[tuple[str, str]] = []
    for path in sorted(DATA.glob("*.jsonl")) if DATA.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                source.append((str(row["input"]), str(row["expected"])))
    if not source:
        source = [(f"synthetic question {i} about the deductible", f"answer {i}") for i in range(500)]
    for i in range(n):
        yield {"id": f"case-{i:05d}", "input": source[i % len(source)][0], "expected": source[i % len(source)][1]}


def write_suite(where: Path, base_url: str, cases: int, concurrency: int,
                metric: str = "exact_match: {}") -> Path:
    golden = where / f"golden-{cases}.jsonl"
    if not golden.exists():
        with golden.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in golden_rows(cases))
    models = "".join(
        f"  {name}:\n    runner: openai\n    base_url: {base_url}\n    model: {name}-model\n"
        f"    concurrency: {concurrency}\n    timeout_s: 30\n" for name in MODELS)
    suite = where / f"bench-{cases}-{concurrency}.yaml"
    suite.write_text(
        f"name: bench\ndescription: bench_run.py\nmodels:\n{models}"
        f"prompt:\n  system: You are a helpful assistant.\n  template: '{{{{ input }}}}'\n"
        f"cases:\n  path: {golden.name}\nmetrics:\n  {metric}\n", encoding="utf-8")
    return suite


class Server:
    """``tests/fakeserver.py`` in its own process."""

    def __init__(self, latency_ms: float) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SERVER), "--latency-ms", str(latency_ms), "--by-model"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.proc.kill()
            raise SystemExit(f"the fake server did not start (printed {self.url!r})")

    def cpu_s(self) -> float:
        """User + system CPU seconds the server has used so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def measure(argv: list[str], cwd: Path) -> tuple[float, float, float, int, str]:
    """Run a child: wall seconds, CPU seconds, peak RSS in MB, exit code, stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode not in (0, 1):
        sys.stderr.write(stderr[-2000:])
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, proc.returncode, stdout


def run_suite(suite: Path, work: Path, server: Server, limit: int | None = None) -> Measurement:
    db = work / f"run-{time.monotonic_ns()}.duckdb"
    argv = [sys.executable, "-m", "tunebench", "run", str(suite), "--no-report", "--no-cache", "--json",
            "--db", str(db), "--cache-dir", str(work / "cache")]
    if limit is not None:
        argv += ["--limit", str(limit)]
    server_before = server.cpu_s()
    wall, cpu, rss, rc, stdout = measure(argv, work)
    sent = errors = -1
    try:
        requests = json.loads(stdout)["requests"]
        sent, errors = requests["sent"], requests["errors"]
    except (ValueError, KeyError, TypeError):
        pass
    for path in (db, db.with_suffix(".duckdb.wal")):
        path.unlink(missing_ok=True)
    return Measurement(wall, cpu, rss, sent, errors, rc, server.cpu_s() - server_before)


def median_of(runs: list[Measurement]) -> Measurement:
    """The run with the median wall time; the highest RSS and error count of all."""
    mid = sorted(runs, key=lambda m: m.wall_s)[len(runs) // 2]
    return Measurement(mid.wall_s, mid.cpu_s, max(m.rss_mb for m in runs), mid.sent, max(m.errors for m in runs),
                       max(m.rc for m in runs), mid.server_cpu_s)


_LIBRARIES = "import duckdb, numpy, pydantic, yaml, jinja2, asyncio"


def startup(work: Path, repeats: int) -> tuple[float, float, float, float]:
    """Median wall of ``tunebench --help``, ``python -c 'import tunebench'``, ``python -c pass`` and
    ``python -c`` importing the libraries a run needs."""
    def median_wall(argv: list[str]) -> float:
        return statistics.median(measure(argv, work)[0] for _ in range(repeats))

    return (median_wall([sys.executable, "-m", "tunebench", "--help"]),
            median_wall([sys.executable, "-c", "import tunebench"]),
            median_wall([sys.executable, "-c", "pass"]), median_wall([sys.executable, "-c", _LIBRARIES]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--latencies", default="0,50", help="milliseconds, comma-separated")
    parser.add_argument("--concurrency", default="8,16,32,64", help="per model, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the median wall is reported")
    parser.add_argument("--flatness", default="1000,4000,8000,16000,32000",
                        help="case counts for the RSS series at 0 ms")
    parser.add_argument("--only", help="one LATENCY:CONCURRENCY cell, e.g. 50:16")
    parser.add_argument("--quick", action="store_true", help="1 repeat, no flatness series")
    parser.add_argument("--metric", default="exact_match: {}",
                        help="the suite's one metric, as a YAML line: NAME: {OPTIONS}, e.g. 'rougeL: {type: rouge}'")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    if args.only:
        lat, conc = args.only.split(":")
        cells = [(float(lat), int(conc))]
    else:
        cells = [(float(lat), int(c)) for lat in args.latencies.split(",") for c in args.concurrency.split(",")]
    flatness = [] if args.quick or args.only else [int(n) for n in args.flatness.split(",")]
    # Measure the package as an install from a wheel runs it: compiled. An editable checkout under
    # PYTHONDONTWRITEBYTECODE (set on this project's machines) would otherwise recompile every module in every
    # run, ~100 ms that no user pays.
    compileall.compile_dir(str(ROOT / "src" / "tunebench"), quiet=1)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="tunebench-bench-") as tmp:
        work = Path(tmp)
        times = startup(work, max(3, repeats))
        rows: list[tuple[float, int, Measurement]] = []
        floors: dict[tuple[float, int], float] = {}
        flat: list[tuple[int, Measurement]] = []
        one: Measurement | None = None
        for latency in sorted({lat for lat, _ in cells} | {0.0}):  # 0 ms first: it also gives the fixed cost
            server = Server(latency)
            try:
                if one is None:
                    suite = write_suite(work, server.url, args.cases, 16, args.metric)
                    run_suite(suite, work, server, limit=50)  # warm the OS file cache and the server
                    one = median_of([run_suite(suite, work, server, limit=1) for _ in range(max(3, repeats))])
                for lat, conc in cells:
                    if lat == latency:
                        suite = write_suite(work, server.url, args.cases, conc, args.metric)
                        m = median_of([run_suite(suite, work, server) for _ in range(repeats)])
                        rows.append((lat, conc, m))
                        print(f"  {lat:g} ms, {conc}/model: {m.wall_s:.2f} s, {m.rss_mb:.0f} MB", file=sys.stderr)
                        if lat > 0:
                            floor = [sys.executable, str(FLOOR_CLIENT), server.url,
                                     str(args.cases * len(MODELS)), str(conc * len(MODELS))]
                            floors[lat, conc] = statistics.median(measure(floor, work)[0] for _ in range(repeats))
                if latency == 0.0:
                    for n in flatness:
                        suite = write_suite(work, server.url, n, 16, args.metric)
                        m = median_of([run_suite(suite, work, server) for _ in range(max(1, repeats - 1))])
                        flat.append((n, m))
                        print(f"  flatness {n}: {m.wall_s:.2f} s, {m.rss_mb:.0f} MB", file=sys.stderr)
            finally:
                server.stop()
    assert one is not None
    report(args.cases, times, one, rows, floors, flat, load_before)


def report(cases: int, times: tuple[float, float, float, float], one: Measurement,
           rows: list[tuple[float, int, Measurement]], floors: dict[tuple[float, int], float],
           flat: list[tuple[int, Measurement]], load_before: float) -> None:
    requests = cases * len(MODELS)
    help_s, import_s, python_s, libraries_s = times
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after.\n")
    print(f"Start-up: `tunebench --help` {help_s * 1000:.0f} ms; `import tunebench` {import_s * 1000:.0f} ms; "
          f"a one-case run (the fixed cost of any run) {one.wall_s * 1000:.0f} ms wall, "
          f"{one.cpu_s * 1000:.0f} ms CPU, {one.rss_mb:.0f} MB. `python -c pass` {python_s * 1000:.0f} ms; "
          f"`python -c '{_LIBRARIES}'` {libraries_s * 1000:.0f} ms.\n")
    print("bound = cases × models × latency ÷ in-flight, in-flight = models × per-model concurrency; "
          "net = (wall − one-case run) ÷ bound; floor = the least client's wall ÷ bound (same server, requests "
          "and in-flight).\n")
    print("| latency ms | per model | in flight | requests | wall s | requests/s | bound s | wall/bound "
          "| net/bound | floor | client CPU s | server CPU s | peak RSS MB | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lat, conc, m in rows:
        in_flight = conc * len(MODELS)
        bound = requests * lat / 1000.0 / in_flight
        ratio = f"{m.wall_s / bound:.2f}" if bound else "–"
        net = f"{(m.wall_s - one.wall_s) / bound:.2f}" if bound else "–"
        floor = f"{floors[lat, conc] / bound:.2f}" if (lat, conc) in floors else "–"
        bad = "" if m.sent == requests and m.errors == 0 and m.rc in (0, 1) else f" (sent {m.sent}, rc {m.rc})"
        print(f"| {lat:g} | {conc} | {in_flight} | {requests:,} | {m.wall_s:.2f} | {requests / m.wall_s:,.0f} | "
              f"{bound:.2f} | {ratio} | {net} | {floor} | {m.cpu_s:.2f} | {m.server_cpu_s:.2f} | "
              f"{m.rss_mb:.0f} | {max(m.errors, 0)}{bad} |")
    if flat:
        print("\nRSS as the number of cases grows (0 ms, 16 per model):\n")
        print("| cases | requests | wall s | requests/s | peak RSS MB |")
        print("|---:|---:|---:|---:|---:|")
        for n, m in flat:
            print(f"| {n:,} | {2 * n:,} | {m.wall_s:.2f} | {2 * n / m.wall_s:,.0f} | {m.rss_mb:.0f} |")


if __name__ == "__main__":
    main()
