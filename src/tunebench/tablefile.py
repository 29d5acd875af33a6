"""Golden cases from CSV/TSV (optionally gzipped) and Parquet files, read through an in-memory DuckDB.

Part of the store layer (one of the three modules allowed to import duckdb). Invariants: rows stream, never the
whole file in memory; CSV values stay strings (an id ``007`` is not the number 7); every problem is a
ConfigError naming the file, and the line for CSV.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .storeformat import _duckdb, _first_line

__all__ = ["read_table_file"]


# ---------------------------------------------------------------------------------------------- golden files

_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table_file(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream the rows of a CSV/TSV (optionally ``.gz``) or Parquet file as ``(number, {column: value})``.

    For CSV the number is the file line the row starts on (the header is line 1, so the first row is line 2;
    rows that span lines through quoted newlines are counted); for Parquet it is the row number from 1. CSV
    values are strings (``None`` for an empty field): CSV has no types, and sniffing would turn an id such as
    ``007`` into the number 7. Any problem raises :class:`ConfigError` naming the file (and line, for CSV).
    """
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    gzipped = suffixes[-1:] == [".gz"]
    base = (suffixes[-2] if len(suffixes) == 2 else "") if gzipped else (suffixes[-1] if suffixes else "")
    if base not in _CSV_DELIMITERS and (gzipped or base not in _PARQUET_SUFFIXES):
        raise ConfigError("unsupported table file type", path=str(path),
                          hint="use .csv, .tsv, .csv.gz, .tsv.gz or .parquet")
    if not path.is_file():
        raise ConfigError("file not found", path=str(path), hint="check the path")
    if base in _CSV_DELIMITERS:
        return _read_csv(path, _CSV_DELIMITERS[base])
    return _read_parquet(path)


def _csv_header(path: Path, delimiter: str) -> tuple[list[str], int]:
    """The header's column names and the number of lines it spans (checked: non-empty and unique)."""
    import csv
    import gzip

    raw, lines = b"", 0
    try:
        # Bytes, line by line: decoding the whole buffer would blame the header for a bad byte further down.
        with gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb") as fh:
            for chunk in fh:
                raw, lines = raw + chunk, lines + 1
                if raw.count(b'"') % 2 == 0:  # not inside a quoted name that spans lines
                    break
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError("the header is not UTF-8 text", path=str(path), line=1,
                          hint="save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc}", path=str(path)) from None
    header = next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter), None) if text.strip() else None
    if not header:
        raise ConfigError("the file is empty; the first line must name the columns", path=str(path), line=1)
    for i, name in enumerate(header, start=1):
        if not name.strip():
            raise ConfigError(f"column {i} of the header has no name", path=str(path), line=1,
                              hint="name every column in the first line")
        if header.index(name) != i - 1:
            raise ConfigError(f"column {name!r} appears twice in the header", path=str(path), line=1)
    return header, lines


def _csv_error(path: Path, exc: Exception) -> ConfigError:
    text = str(exc)
    line = re.search(r"CSV Error on Line: (\d+)", text)
    at = int(line.group(1)) if line else None
    counts = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", text)
    if counts:
        return ConfigError(f"this row has {counts.group(2)} fields but the header has {counts.group(1)}",
                           path=str(path), line=at, hint="quote fields that contain the delimiter")
    if "unterminated quote" in text:
        return ConfigError("a quoted field is never closed", path=str(path), line=at,
                           hint='close the quote; write a quote inside a quoted field as ""')
    if "not utf-8" in text.lower() or "invalid unicode" in text.lower():
        return ConfigError("this line is not UTF-8 text", path=str(path), line=at, hint="save the file as UTF-8")
    # Anything else: DuckDB's reason, without its "Possible fixes" (strict_mode, ignore_errors), which are
    # DuckDB options, not something a golden file can set.
    head = re.split(r"\n\s*Possible (?:fix|Solution)", text.removeprefix("Invalid Input Error: "))[0]
    reasons = [ln.strip() for ln in head.splitlines() if ln.strip() and not ln.startswith(("CSV Error", "Original"))]
    return ConfigError(reasons[-1] if reasons else _first_line(exc), path=str(path), line=at)


def _read_csv(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    header, header_lines = _csv_header(path, delimiter)  # here, not in the generator: errors surface at once
    return _iter_csv(path, delimiter, header, header_lines)


def _iter_csv(path: Path, delimiter: str, header: list[str], header_lines: int
              ) -> Iterator[tuple[int, dict[str, Any]]]:
    duckdb = _duckdb()
    # auto_detect off: the sniffer may silently skip leading rows when one row has an extra field.
    sql = ("SELECT * FROM read_csv($path, header = true, auto_detect = false, skip = 0, delim = $delim, "
           "quote = '\"', escape = '\"', strict_mode = true, columns = $columns)")
    conn = duckdb.connect(":memory:")
    try:
        try:
            cursor = conn.execute(sql, {"path": str(path), "delim": delimiter,
                                        "columns": dict.fromkeys(header, "VARCHAR")})
        except duckdb.Error as exc:
            raise _csv_error(path, exc) from None
        line = header_lines + 1
        while True:
            try:
                rows = cursor.fetchmany(1000)
            except duckdb.Error as exc:
                raise _csv_error(path, exc) from None
            if not rows:
                return
            for row in rows:
                yield line, dict(zip(header, row, strict=True))
                line += 1 + sum(v.count("\n") for v in row if v)
    finally:
        conn.close()


def _read_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    duckdb = _duckdb()
    conn = duckdb.connect(":memory:")
    conn.execute("SET TimeZone = 'UTC'")
    try:
        try:
            cursor = conn.execute("SELECT * FROM read_parquet($1)", [str(path)])
            names = [d[0] for d in cursor.description]
            number = 0
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    number += 1
                    yield number, dict(zip(names, row, strict=True))
        except duckdb.Error as exc:
            detail = _first_line(exc)
            if "magic bytes" in detail or "not a parquet file" in detail.lower():
                raise ConfigError("not a Parquet file (or a damaged one)", path=str(path),
                                  hint="write it again with a Parquet writer, or use CSV/JSONL") from None
            raise ConfigError(f"cannot read the Parquet file: {detail}", path=str(path)) from None
    finally:
        conn.close()
