"""Canonical sensor logs on disk: Parquet with ``schemas.sensor.ARROW_SCHEMA``."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.errors import ConfigError
from schemas.sensor import ARROW_SCHEMA


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write atomically (temp file, then rename) so a reader never sees half a log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path


def read_log(path: str | Path) -> pa.Table:
    """Read a canonical sensor log; raise ConfigError if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sensor log {path} does not exist; make one with `drivestream simulate`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(
            f"{path} is not a Parquet file ({exc}); import it with import-log"
        ) from exc
    missing = [f.name for f in ARROW_SCHEMA if not f.nullable and f.name not in table.column_names]
    if missing:
        raise ConfigError(
            f"{path} is not a canonical sensor log (missing {', '.join(missing)}); "
            "convert it with `drivestream import-log`"
        )
    for f in ARROW_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    try:
        return table.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigError(f"{path}: columns do not match the sensor schema: {exc}") from exc
