"""Read a log file as it is: Parquet by its magic bytes, else delimited text, sniffed."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from schemas.errors import ConfigError

_DELIMITERS = ",;\t|"


def read_source(path: str | Path) -> pa.Table:
    """A CSV/TSV (comma, semicolon, tab or bar separated) or Parquet file as a table.

    The content decides, not the suffix: ``log.txt`` may be Parquet, ``log.csv`` tab
    separated.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"log file {path} does not exist")
    with path.open("rb") as fh:
        head = fh.read(65536)
    try:
        if head[:4] == b"PAR1":
            return pq.read_table(path)
        delimiter = sniff_delimiter(head)
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def sniff_delimiter(head: bytes) -> str:
    """The field separator of delimited text, from its first lines."""
    fail = ConfigError(
        "unknown log format: not Parquet, and not text with a header of several columns "
        f"separated by one of {_DELIMITERS!r}; export the log as CSV, TSV or Parquet"
    )
    if b"\0" in head:
        raise fail
    text = head.decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines()[:20] if ln.strip()]
    if not lines:
        raise fail
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=_DELIMITERS).delimiter
    except csv.Error:
        counts = {d: lines[0].count(d) for d in _DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        if counts[best] == 0:
            raise fail from None
        return best
