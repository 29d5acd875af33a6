"""Word-level diff of a model output against the golden text, in a compact form for the HTML report.

Invariants:
- ``tokenize(text)`` splits into word, whitespace and punctuation tokens whose concatenation is ``text``.
- ``word_diff(golden, output)`` returns ops ``[op, text]`` with ``op`` one of ``EQUAL`` (0), ``INSERT`` (1, text
  only in the output) and ``DELETE`` (-1, text only in the golden). Concatenating the ``EQUAL``+``DELETE`` texts
  gives back ``golden`` and the ``EQUAL``+``INSERT`` texts give back ``output``, exactly. No op is empty and no
  two neighbouring ops share a kind.
- Pure Python (``difflib``; a shortest edit script where difflib pairs repeated words wrongly), deterministic,
  no I/O.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

__all__ = ["DELETE", "EQUAL", "INSERT", "MAX_DIFF_UNITS", "reconstruct", "tokenize", "word_diff"]

EQUAL = 0
INSERT = 1
DELETE = -1

# A token is a run of word characters, a run of whitespace, or one other character: punctuation is its own
# token so that "cat." against "cat" is a one-character change, not a changed word. Every character matches
# exactly one branch, so the tokens always rebuild the text.
_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")

# What difflib compares is a "unit": one word or punctuation token together with the whitespace after it
# (plus one leading-whitespace unit at the very start). Matching whitespace as separate tokens is exact but
# ~10x slower, because " " is in every other position and difflib scans every occurrence of it; a 10,000-case
# report with three models would take minutes. Whitespace still counts: inside matched units it is compared
# separately, so "cat " against "cat\n" is an equal "cat" plus a whitespace change.
_UNIT = re.compile(r"(\w+|[^\w\s])(\s*)|(\s+)")

# difflib is quadratic in the worst case; above this many units (both sides together) the diff degrades to
# "all deleted, all inserted", which is still exact and keeps huge outputs from stalling a render.
MAX_DIFF_UNITS = 20000


def tokenize(text: str) -> list[str]:
    """Split ``text`` into word, whitespace and single punctuation tokens (``"".join(...) == text``)."""
    return _TOKEN.findall(text)


def _units(text: str) -> tuple[list[str], list[str]]:
    units = _UNIT.findall(text)
    words = [word for word, _, _ in units]
    # A whitespace-only unit (third group) occurs only at the start of the text; its "word" is empty.
    spaces = [space or lead for _, space, lead in units]
    return words, spaces


def word_diff(golden: str, output: str) -> list[list]:
    """Ops that turn ``golden`` into ``output`` at word granularity (see the module docstring)."""
    if golden == output:
        return [[EQUAL, golden]] if golden else []
    if not golden:
        return [[INSERT, output]]
    if not output:
        return [[DELETE, golden]]
    a_words, a_spaces = _units(golden)
    b_words, b_spaces = _units(output)
    if len(a_words) + len(b_words) > MAX_DIFF_UNITS:
        return [[DELETE, golden], [INSERT, output]]
    ops: list[list] = []
    for tag, i1, i2, j1, j2 in _opcodes(a_words, b_words):
        if tag != "equal":
            deleted = "".join(w + s for w, s in zip(a_words[i1:i2], a_spaces[i1:i2], strict=True))
            inserted = "".join(w + s for w, s in zip(b_words[j1:j2], b_spaces[j1:j2], strict=True))
            # "cat " -> "dog ": the shared trailing space is not part of the change.
            shared = a_spaces[i2 - 1] if i2 > i1 and j2 > j1 and a_spaces[i2 - 1] == b_spaces[j2 - 1] else ""
            if shared:
                deleted, inserted = deleted[: -len(shared)], inserted[: -len(shared)]
            if deleted:
                _push(ops, DELETE, deleted)
            if inserted:
                _push(ops, INSERT, inserted)
            if shared:
                _push(ops, EQUAL, shared)
            continue
        if a_spaces[i1:i2] == b_spaces[j1:j2]:  # the usual case: the whole block is identical
            _push(ops, EQUAL, "".join(w + s for w, s in zip(a_words[i1:i2], a_spaces[i1:i2], strict=True)))
            continue
        for k in range(i2 - i1):
            word, space_a, space_b = a_words[i1 + k], a_spaces[i1 + k], b_spaces[j1 + k]
            if word:
                _push(ops, EQUAL, word)
            if space_a == space_b:
                if space_a:
                    _push(ops, EQUAL, space_a)
                continue
            if space_a:
                _push(ops, DELETE, space_a)
            if space_b:
                _push(ops, INSERT, space_b)
    return ops


def _opcodes(a: list[str], b: list[str]) -> list[tuple[str, int, int, int, int]]:
    """Opcodes (difflib's form) from ``a`` to ``b``: fewest words inserted and deleted when they differ by few.

    difflib matches the longest common block first, and with repeated words that block can pair words that are
    not each other's: "the the the" against "the cat the the" paired the last two words of the output with the
    first two of the golden, and showed a "the" deleted and another inserted for one inserted word. So the
    words shared at both ends are matched first, and when difflib's answer still deletes a word that it also
    inserts (the sign of a wrong pairing), a shortest edit script (Myers' algorithm) replaces it if one with
    fewer edits exists within ``_MYERS_MAX_EDITS`` -- the usual case of a few words changed, where a wrong
    pairing shows most. Otherwise difflib's answer stands: a shortest script costs ~(words × edits), and
    searching for one on every pair made a report's diffs 2.5 × slower.
    """
    n, m = len(a), len(b)
    start = 0
    while start < min(n, m) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(n, m) - start and a[n - 1 - end] == b[m - 1 - end]:
        end += 1
    a_mid, b_mid = a[start:n - end], b[start:m - end]
    # autojunk off: with it, words such as "the" in texts over 200 units are treated as junk and the diff
    # turns into noise.
    middle = SequenceMatcher(None, a_mid, b_mid, autojunk=False).get_opcodes()
    changed = [(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in middle if tag != "equal"]
    edits = sum(i2 - i1 + j2 - j1 for i1, i2, j1, j2 in changed)
    # A wrong pairing shows as a word both deleted and inserted; without one, difflib's answer stands.
    if abs(len(a_mid) - len(b_mid)) < edits <= 2 * _MYERS_MAX_EDITS and not {
            w for i1, i2, _, _ in changed for w in a_mid[i1:i2]}.isdisjoint(
            w for _, _, j1, j2 in changed for w in b_mid[j1:j2]):
        middle = _shortest(a_mid, b_mid, min(edits - 1, _MYERS_MAX_EDITS)) or middle
    codes = [("equal", 0, start, 0, start)] if start else []
    codes += [(tag, i1 + start, i2 + start, j1 + start, j2 + start) for tag, i1, i2, j1, j2 in middle
              if i2 > i1 or j2 > j1]
    if end:
        codes.append(("equal", n - end, n, m - end, m))
    return codes


_MYERS_MAX_EDITS = 16


def _shortest(a: list[str], b: list[str], max_edits: int) -> list[tuple[str, int, int, int, int]] | None:
    """A shortest edit script from ``a`` to ``b`` as opcodes (Myers 1986, the greedy forward search), or None
    when every script needs more than ``max_edits`` insertions and deletions."""
    n, m = len(a), len(b)
    reach = {1: 0}  # diagonal k = x - y -> furthest x reached on it
    trace = []
    for d in range(max_edits + 1):
        trace.append(dict(reach))
        for k in range(-d, d + 1, 2):
            x = reach[k + 1] if k == -d or (k != d and reach[k - 1] < reach[k + 1]) else reach[k - 1] + 1
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x, y = x + 1, y + 1
            reach[k] = x
            if x >= n and y >= m:
                return _script(trace, n, m)
    return None


def _script(trace: list[dict[int, int]], n: int, m: int) -> list[tuple[str, int, int, int, int]]:
    """Walk the search back from (n, m) and group its steps into opcodes."""
    steps: list[tuple[bool, int, int]] = []  # (a match?, x, y) where each step starts, last step first
    x, y = n, m
    for d in range(len(trace) - 1, -1, -1):
        reach, k = trace[d], x - y
        prev_k = k + 1 if k == -d or (k != d and reach[k - 1] < reach[k + 1]) else k - 1
        prev_x = reach[prev_k]
        prev_y = prev_x - prev_k
        while x > prev_x and y > prev_y:  # the matches that followed this edit
            x, y = x - 1, y - 1
            steps.append((True, x, y))
        if d:
            steps.append((False, prev_x, prev_y))  # the edit: one word deleted (x moves) or inserted (y moves)
        x, y = prev_x, prev_y
    steps.reverse()
    codes: list[tuple[str, int, int, int, int]] = []
    for i, (match, sx, sy) in enumerate(steps):
        ex, ey = steps[i + 1][1:] if i + 1 < len(steps) else (n, m)
        tag = "equal" if match else "replace"
        if codes and codes[-1][0] == tag:
            codes[-1] = (tag, codes[-1][1], ex, codes[-1][3], ey)
        else:
            codes.append((tag, sx, ex, sy, ey))
    return codes


def _push(ops: list[list], op: int, text: str) -> None:
    if ops and ops[-1][0] == op:
        ops[-1][1] += text
    else:
        ops.append([op, text])


def reconstruct(ops: list[list]) -> tuple[str, str]:
    """``(golden, output)`` rebuilt from ``word_diff`` ops: the inverse the report's JavaScript applies too."""
    golden = "".join(text for op, text in ops if op != INSERT)
    output = "".join(text for op, text in ops if op != DELETE)
    return golden, output
