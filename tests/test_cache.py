"""The response cache: batched commits, and the per-response journal that survives kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from tunebench.cache import ResponseCache
from tunebench.runners import Response


def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.endswith((".journal", ".tmp")))


def test_put_many_then_get(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    cache.put_many([("k1", Response("one", 1, 2, "stop"), 12.5), ("k2", Response("two"), None)])
    assert cache.get("k1") == (Response("one", 1, 2, "stop"), 12.5)
    assert cache.get_many(["k1", "k2", "k3"]).keys() == {"k1", "k2"}
    assert cache.get("k3") is None
    cache.close()


def test_put_survives_kill_minus_9_and_is_folded_in_by_the_next_open(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from tunebench.cache import ResponseCache
        from tunebench.runners import Response
        cache = ResponseCache(Path({str(tmp_path / "r.sqlite")!r}))
        for i in range(3):
            cache.put(f"k{{i}}", Response(f"answer {{i}}\\nline two", 3, 4, "stop"), 10.0 + i)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(leftovers(tmp_path)) == 1  # the dead process's journal
    cache = ResponseCache(tmp_path / "r.sqlite")
    assert [cache.get(f"k{i}") for i in range(3)] == [
        (Response(f"answer {i}\nline two", 3, 4, "stop"), 10.0 + i) for i in range(3)]
    assert leftovers(tmp_path) == []
    cache.close()


def test_a_live_process_journal_is_left_alone_and_folded_in_at_close(tmp_path):
    first = ResponseCache(tmp_path / "r.sqlite")
    first.put("k1", Response("one"), 1.0)
    first.put("k2", Response("two"), 2.0)
    first.put_many([("k2", Response("two"), 2.0)])  # committed: only k1 is outstanding
    second = ResponseCache(tmp_path / "r.sqlite")  # its recovery must not steal first's journal
    assert second.get("k1") is None and second.get("k2") is not None
    assert len(leftovers(tmp_path)) == 1
    first.close()
    assert second.get("k1") == (Response("one"), 1.0)
    assert leftovers(tmp_path) == []
    second.close()


def test_a_torn_last_line_is_skipped(tmp_path):
    good = json.dumps(["k1", "fine", 1, 2, "stop", 5.0]) + "\n"
    (tmp_path / "r.sqlite.123-abcd.journal").write_text(good + '["k2", "cut sho')
    (tmp_path / "r.sqlite.124-abcd.tmp").write_text("")
    cache = ResponseCache(tmp_path / "r.sqlite")
    assert cache.get("k1") == (Response("fine", 1, 2, "stop"), 5.0)
    assert cache.get("k2") is None
    assert leftovers(tmp_path) == []
    cache.close()


def test_journal_holds_no_more_than_the_responses(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    cache.put("k1", Response("text"), None)
    (journal,) = [p for p in tmp_path.iterdir() if p.name.endswith(".journal")]
    assert oct(journal.stat().st_mode & 0o777) == "0o600"
    assert [json.loads(line) for line in journal.read_text().splitlines()] == [["k1", "text", None, None, None, None]]
    cache.close()
    assert not journal.exists()
    assert os.listdir(tmp_path) == ["r.sqlite"]
