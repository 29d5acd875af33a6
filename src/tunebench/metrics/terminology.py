"""Terminology metrics: does the answer use the domain's terms, and avoid forbidden or deprecated ones?

A glossary has three parts: ``required`` terms, ``forbidden`` terms and ``preferred`` terms, each preferred
term mapping to the deprecated alternatives it replaces (``policyholder: [customer, client]``). It comes
from a YAML or CSV file (the ``glossary`` option), from inline options, and per case from ``Case.vars``
(``required_terms``, ``forbidden_terms``); all sources are merged.

Invariants:
- matching is case-insensitive and Unicode-aware at word edges (``rent`` never matches inside ``parent`` or
  ``pärent``); words of a multi-word term may be separated by any whitespace or hyphens (``out-of-pocket
  maximum`` matches ``out of pocket maximum``; a hyphen in the term may also be absent: ``pre-existing``
  matches ``preexisting``); the last word may carry an English plural or possessive (``-s``, ``-es``,
  ``y`` → ``-ies``, ``'s``, ``s'``). Write terms in the singular: inflections are added, never removed.
- a suite-level required term applies to a case only when it occurs in that case's golden text
  (``only_if_in_expected``, on by default). Otherwise a glossary of 40 terms would demand all 40 in every
  answer. Per-case ``required_terms`` always apply: they were written for that case.
- the value is the share of applicable required terms found in the output, 1.0 when none apply. ``passed`` is
  False whenever a forbidden or deprecated term is used, whatever the value; otherwise it is the threshold
  check (``None`` without a threshold).
- a forbidden or deprecated term found only inside a required or preferred term does not count: with
  ``premium tax credit`` preferred over ``tax credit``, the text "premium tax credit" uses no deprecated term.
- a malformed glossary is a :class:`ConfigError` naming the file and line, raised when the metric is built.
"""

from __future__ import annotations

import csv
import functools
import io
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..factory import did_you_mean
from ..hookspecs import hookimpl
from ..records import Case, Sample, Score
from ._base import Metric, MetricContext, metric

__all__ = ["Glossary", "Terminology", "find_term", "load_glossary", "terminology"]

_HYPHENS = "\\-\u2010\u2011\u2012\u2013"  # hyphen-minus, hyphen, non-breaking hyphen, figure dash, en dash
_SEPARATOR = re.compile(rf"[\s{_HYPHENS}]+")
_WORD = re.compile(r"\w")
_SIBILANT_END = ("s", "x", "z", "ch", "sh")
_KINDS = ("required", "forbidden", "preferred")
_CASE_KEYS = ("required_terms", "forbidden_terms")


@dataclass(frozen=True)
class Glossary:
    """Required, forbidden and preferred terms (preferred term → the deprecated alternatives it replaces)."""

    required: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    preferred: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def merged(self, other: Glossary) -> Glossary:
        preferred = dict(self.preferred)
        for term, old in other.preferred.items():
            preferred[term] = _dedup([*preferred.get(term, ()), *old])
        return Glossary(
            _dedup([*self.required, *other.required]), _dedup([*self.forbidden, *other.forbidden]), preferred
        )


# -- matching ------------------------------------------------------------------------------------------------


def _key(term: str) -> str:
    """Identity of a term: ``Out-of-pocket  Maximum`` and ``out of pocket maximum`` are the same term."""
    return _SEPARATOR.sub(" ", unicodedata.normalize("NFC", term).casefold()).strip()


def _dedup(terms: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for term in terms:
        seen.setdefault(_key(term), term)
    return tuple(seen.values())


def _last_word_forms(word: str) -> list[str]:
    """The word with the English plural / possessive endings it may carry."""
    if not word[-1].isalpha():
        return [word]
    lower = word.casefold()
    stems = [word]
    if lower.endswith(_SIBILANT_END):
        stems.append(word + "es")
    elif len(lower) > 1 and lower.endswith("y") and lower[-2] not in "aeiou":
        stems.append(word[:-1] + "ies")
    else:
        stems.append(word + "s")
    forms = [word + "'s"]
    for stem in stems[1:]:
        forms += [stem, stem + "'"]
    return [word, *forms]


def _escape(text: str) -> str:
    # Typographic apostrophes are as common as ASCII ones in model output.
    return re.escape(text).replace("'", "['’]")


@functools.lru_cache(maxsize=8192)
def term_regex(term: str) -> re.Pattern[str]:
    """The compiled pattern of one glossary term (see the module docstring for what it matches)."""
    term = unicodedata.normalize("NFC", term).strip().strip(_HYPHENS.replace("\\", ""))
    pieces = re.split(rf"([\s{_HYPHENS}]+)", term)
    words, separators = pieces[0::2], pieces[1::2]
    out = [r"(?<!\w)"]
    for i, word in enumerate(words):
        if i:
            hyphenated = any(not ch.isspace() for ch in separators[i - 1])
            out.append(rf"[\s{_HYPHENS}]*" if hyphenated else rf"[\s{_HYPHENS}]+")
        if i == len(words) - 1:
            forms = sorted(_last_word_forms(word), key=len, reverse=True)
            out.append("(?:" + "|".join(_escape(f) for f in forms) + ")")
        else:
            out.append(_escape(word))
    out.append(r"(?!\w)")
    return re.compile("".join(out), re.IGNORECASE)


def find_term(term: str, text: str) -> list[tuple[int, int]]:
    """Spans where ``term`` occurs in ``text`` (``text`` should be NFC-normalised)."""
    return [m.span() for m in term_regex(term).finditer(text)]


def _used(term: str, text: str, protectors: Iterable[str]) -> bool:
    """``term`` occurs in ``text`` outside every occurrence of a protecting (required/preferred) term."""
    spans = find_term(term, text)
    if not spans:
        return False
    key = _key(term)
    shields = [s for p in protectors if _key(p) != key for s in find_term(p, text)]
    return any(not any(a <= start and end <= b for a, b in shields) for start, end in spans)


# -- glossary files ------------------------------------------------------------------------------------------


def _check_term(term: str, path: str | None, line: int | None, where: str) -> str:
    term = term.strip()
    if not _WORD.search(term):
        raise ConfigError(
            f"{where}: {term!r} is not a term (it has no letters or digits)",
            path=path,
            line=line,
            hint="remove the entry or write the term out",
        )
    return term


def load_glossary(path: Path) -> Glossary:
    """Read a ``.yaml``/``.yml`` or ``.csv`` glossary; any problem is a ConfigError naming file:line."""
    shown = str(path)
    if not path.is_file():
        raise ConfigError(
            "glossary file not found" if not path.exists() else "glossary path is not a file",
            path=shown,
            hint="fix the 'glossary' option; a relative path resolves against the directory of the suite file",
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"glossary is not UTF-8 text (byte {exc.start})", path=shown, hint="save the file as UTF-8"
        ) from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _load_yaml(text, shown)
    if suffix == ".csv":
        return _load_csv(text, shown)
    raise ConfigError(
        f"unsupported glossary format {suffix or '(no extension)'!r}",
        path=shown,
        hint="use a .yaml/.yml file (required/forbidden/preferred) or a .csv file (columns term,kind,replaces)",
    )


def _load_yaml(text: str, path: str) -> Glossary:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"glossary is not valid YAML: {getattr(exc, 'problem', None) or exc}",
            path=path,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
            hint="fix the YAML syntax",
        ) from None
    shape = "a mapping with 'required: [..]', 'forbidden: [..]' and/or 'preferred: {term: [deprecated, ..]}'"
    if root is None:
        raise ConfigError("glossary file is empty", path=path, hint=f"write {shape}")
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            "a glossary must be a mapping", path=path, line=root.start_mark.line + 1, hint=f"write {shape}"
        )

    def line(node: yaml.Node) -> int:
        return node.start_mark.line + 1

    def terms(node: yaml.Node, where: str) -> list[str]:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return []
        if isinstance(node, yaml.ScalarNode):
            node = yaml.SequenceNode("tag:yaml.org,2002:seq", [node], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.SequenceNode):
            raise ConfigError(
                f"{where} must be a list of terms",
                path=path,
                line=line(node),
                hint=f"write '{where}: [term, ...]'",
            )
        out = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode) or item.tag.endswith(":null"):
                raise ConfigError(
                    f"{where}: each entry must be a term (a plain string)",
                    path=path,
                    line=line(item),
                    hint="write one term per '- ' line",
                )
            out.append(_check_term(item.value, path, line(item), where))
        return out

    parts: dict[str, Any] = {}
    for key_node, value_node in root.value:
        key = key_node.value
        if key not in _KINDS:
            raise ConfigError(
                f"unknown glossary key {key!r}{did_you_mean(str(key), _KINDS)}",
                path=path,
                line=line(key_node),
                hint=f"write {shape}",
            )
        if key in parts:
            raise ConfigError(
                f"{key!r} appears twice", path=path, line=line(key_node), hint="merge the two lists into one"
            )
        if key != "preferred":
            parts[key] = terms(value_node, key)
            continue
        if isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null"):
            parts[key] = {}
            continue
        if not isinstance(value_node, yaml.MappingNode):
            raise ConfigError(
                "preferred must map each preferred term to its deprecated alternatives",
                path=path,
                line=line(value_node),
                hint="write 'preferred: {policyholder: [customer, client]}'",
            )
        preferred: dict[str, tuple[str, ...]] = {}
        for term_node, old_node in value_node.value:
            if not isinstance(term_node, yaml.ScalarNode):
                raise ConfigError("preferred: each key must be a term", path=path, line=line(term_node))
            term = _check_term(term_node.value, path, line(term_node), "preferred")
            old = terms(old_node, f"preferred.{term}")
            if not old:
                raise ConfigError(
                    f"preferred term {term!r} lists no deprecated alternatives",
                    path=path,
                    line=line(term_node),
                    hint=f"write '{term}: [old term, ...]' or list it under required",
                )
            preferred[term] = tuple(old)
        parts[key] = preferred
    return Glossary(tuple(parts.get("required", ())), tuple(parts.get("forbidden", ())), parts.get("preferred", {}))


def _load_csv(text: str, path: str) -> Glossary:
    reader = csv.reader(io.StringIO(text))
    required: list[str] = []
    forbidden: list[str] = []
    preferred: dict[str, tuple[str, ...]] = {}
    columns: list[str] | None = None
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
                continue
            if columns is None:
                columns = [cell.strip().lower() for cell in row]
                if columns not in (["term", "kind"], ["term", "kind", "replaces"]):
                    raise ConfigError(
                        f"glossary CSV header is {','.join(row)!r}",
                        path=path,
                        line=line,
                        hint="the first line must be 'term,kind,replaces'",
                    )
                continue
            if len(row) > len(columns) or len(row) < 2:
                raise ConfigError(
                    f"expected {len(columns)} columns ({','.join(columns)}), found {len(row)}",
                    path=path,
                    line=line,
                    hint="quote a term that contains a comma",
                )
            term = _check_term(row[0], path, line, "term")
            kind = row[1].strip().lower()
            replaces = [r.strip() for r in (row[2] if len(row) > 2 else "").split(";") if r.strip()]
            if kind not in _KINDS:
                raise ConfigError(
                    f"unknown kind {row[1].strip()!r}{did_you_mean(kind, _KINDS)}",
                    path=path,
                    line=line,
                    hint="kind is one of required, forbidden, preferred",
                )
            if kind == "preferred":
                if not replaces:
                    raise ConfigError(
                        f"preferred term {term!r} replaces nothing",
                        path=path,
                        line=line,
                        hint="list the deprecated alternatives in 'replaces', separated by ';'",
                    )
                old = tuple(_check_term(r, path, line, "replaces") for r in replaces)
                preferred[term] = _dedup([*preferred.get(term, ()), *old])
                continue
            if replaces:
                raise ConfigError(
                    f"'replaces' is only for kind 'preferred', not {kind!r}",
                    path=path,
                    line=line,
                    hint="empty the 'replaces' cell or change the kind",
                )
            (required if kind == "required" else forbidden).append(term)
    except csv.Error as exc:
        raise ConfigError(
            f"glossary is not valid CSV: {exc}", path=path, line=reader.line_num, hint="check the quoting"
        ) from None
    if columns is None:
        raise ConfigError("glossary file is empty", path=path, hint="write a 'term,kind,replaces' header and rows")
    return Glossary(tuple(required), tuple(forbidden), preferred)


def _validate(glossary: Glossary, source: str | None) -> Glossary:
    """Reject contradictions: a term both required and forbidden, or both preferred and deprecated."""
    glossary = Glossary(
        _dedup(glossary.required),
        _dedup(glossary.forbidden),
        {t: _dedup(old) for t, old in glossary.preferred.items()},
    )
    forbidden = {_key(t) for t in glossary.forbidden}
    deprecated = {_key(o): t for t, old in glossary.preferred.items() for o in old}
    for term in glossary.required:
        if _key(term) in forbidden:
            raise ConfigError(
                f"terminology: {term!r} is both required and forbidden",
                path=source,
                hint="keep it in one list",
            )
        if _key(term) in deprecated:
            raise ConfigError(
                f"terminology: {term!r} is required but deprecated in favour of {deprecated[_key(term)]!r}",
                path=source,
                hint="keep it in one list",
            )
    for term in glossary.preferred:
        if _key(term) in forbidden or _key(term) in deprecated:
            raise ConfigError(
                f"terminology: preferred term {term!r} is also forbidden or deprecated",
                path=source,
                hint="keep it in one list",
            )
    return glossary


# -- the metric ----------------------------------------------------------------------------------------------


class Terminology(Metric):
    """Share of applicable required terms used; fails on any forbidden or deprecated term."""

    kind = "terminology"

    def __init__(
        self,
        *,
        glossary: Glossary,
        source: str | None,
        use_case_vars: bool,
        only_if_in_expected: bool,
        threshold: float | None,
    ) -> None:
        super().__init__(threshold=threshold)
        self.glossary, self.source = glossary, source
        self.use_case_vars, self.only_if_in_expected = use_case_vars, only_if_in_expected

    def score(self, sample: Sample) -> Score:
        text = unicodedata.normalize("NFC", sample.output.text)
        expected = unicodedata.normalize("NFC", sample.case.expected)
        case_required, case_forbidden = self._case_terms(sample.case)
        suite_required = [t for t in self.glossary.required if not self.only_if_in_expected or find_term(t, expected)]
        required = _dedup([*suite_required, *case_required])
        protectors = [*self.glossary.required, *case_required, *self.glossary.preferred]
        missing = [t for t in required if not find_term(t, text)]
        forbidden_used = [t for t in _dedup([*self.glossary.forbidden, *case_forbidden]) if _used(t, text, protectors)]
        deprecated_used = {
            old: term for term, olds in self.glossary.preferred.items() for old in olds if _used(old, text, protectors)
        }
        value = (len(required) - len(missing)) / len(required) if required else 1.0
        passed = False if forbidden_used or deprecated_used else self.passes(value)

        parts = []
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if forbidden_used:
            parts.append("forbidden: " + ", ".join(forbidden_used))
        if deprecated_used:
            parts.append("deprecated: " + ", ".join(f"{o} (use {t})" for o, t in deprecated_used.items()))
        if not parts:
            parts.append(f"all {len(required)} required terms present" if required else "no required terms apply")
        details = {
            "required": list(required),
            "missing": missing,
            "forbidden_used": forbidden_used,
            "deprecated_used": deprecated_used,
        }
        return Score(value=value, passed=passed, explanation="; ".join(parts), details=details)

    def _case_terms(self, case: Case) -> tuple[list[str], list[str]]:
        if not self.use_case_vars:
            return [], []
        out: list[list[str]] = []
        for key in _CASE_KEYS:
            raw = case.vars.get(key)
            if raw is None:
                out.append([])
                continue
            items = [raw] if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(t, str) for t in items):
                raise ConfigError(
                    f"case {case.id!r}: vars.{key} must be a list of strings, got {type(raw).__name__}",
                    path=case.source,
                    hint=f"write '{key}: [term, ...]'",
                )
            out.append([_check_term(t, case.source, None, f"case {case.id!r}: vars.{key}") for t in items])
        return out[0], out[1]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "options": {
                "glossary": self.source,
                "required": list(self.glossary.required),
                "forbidden": list(self.glossary.forbidden),
                "preferred": {t: list(o) for t, o in self.glossary.preferred.items()},
                "use_case_vars": self.use_case_vars,
                "only_if_in_expected": self.only_if_in_expected,
            },
        }


@metric(
    "terminology",
    description="required / forbidden / preferred domain terms from a glossary",
    family="terminology",
)
def terminology(
    *,
    glossary: str | None = None,
    required: list[str] = [],  # noqa: B006 -- pydantic copies defaults; the list is never mutated
    forbidden: list[str] = [],  # noqa: B006
    preferred: dict[str, list[str]] = {},  # noqa: B006
    use_case_vars: bool = True,
    only_if_in_expected: bool = True,
    threshold: float | None = 1.0,
    context: MetricContext | None = None,
) -> Terminology:
    """Terminology check.

    ``glossary`` is a YAML or CSV file relative to the suite directory; ``required``, ``forbidden`` and
    ``preferred`` add inline terms. ``only_if_in_expected`` applies a suite-level required term to a case only
    when the case's golden text contains it. ``use_case_vars`` also reads ``required_terms`` and
    ``forbidden_terms`` from each case's vars.
    """
    inline = Glossary(
        tuple(_check_term(t, None, None, "terminology: required") for t in required),
        tuple(_check_term(t, None, None, "terminology: forbidden") for t in forbidden),
        {
            _check_term(t, None, None, "terminology: preferred"): tuple(
                _check_term(o, None, None, f"terminology: preferred.{t}") for o in old
            )
            for t, old in preferred.items()
        },
    )
    for term, old in preferred.items():
        if not old:
            raise ConfigError(
                f"terminology: preferred term {term!r} lists no deprecated alternatives",
                hint=f"write 'preferred: {{{term}: [old term, ...]}}' or list it under required",
            )
    source = None
    if glossary is not None:
        path = Path(glossary).expanduser()
        if not path.is_absolute():
            path = (context.suite_dir if context is not None else Path.cwd()) / path
        source = str(path)
        inline = load_glossary(path).merged(inline)
    merged = _validate(inline, source)
    if not (merged.required or merged.forbidden or merged.preferred or use_case_vars):
        raise ConfigError(
            "terminology: no terms to check",
            path=source,
            hint="set 'glossary', 'required', 'forbidden' or 'preferred', or enable use_case_vars",
        )
    return Terminology(
        glossary=merged,
        source=source,
        use_case_vars=use_case_vars,
        only_if_in_expected=only_if_in_expected,
        threshold=threshold,
    )


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    """Register the terminology metrics."""
    register(terminology)
