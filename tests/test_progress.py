"""The plain progress lines (what CI logs show): counts, errors in the singular and plural, no made-up rate."""

from __future__ import annotations

from tunebench.progress import Progress
from tunebench.records import Output


def lines(capsys, outputs: list[Output]) -> list[str]:
    progress = Progress()
    for done, output in enumerate(outputs, 1):
        progress.update(done, len(outputs), output)
    progress.close()
    return capsys.readouterr().err.splitlines()


def test_a_line_every_tenth_with_the_errors_counted(capsys):
    outputs = [Output(f"c{i}", "base", 0, "text", error="HTTP 500" if i in (3, 11) else None) for i in range(20)]
    got = lines(capsys, outputs)
    assert len(got) == 10
    assert got[0] == "2/20 outputs (10%), 0 errors"
    assert got[3] == "8/20 outputs (40%), 1 error"
    assert got[-1] == "20/20 outputs (100%), 2 errors"


def test_outputs_that_arrive_at_once_get_no_rate(capsys):
    # Start-up before the first output (imports, cases, metrics) used to count: 332 recorded outputs read in a
    # millisecond after two seconds of start-up showed as "17/s".
    got = lines(capsys, [Output(f"c{i}", "base", 0, "text") for i in range(332)])
    assert got[-1] == "332/332 outputs (100%), 0 errors"
    assert not any("/s" in line for line in got)
