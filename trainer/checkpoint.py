"""Atomic checkpoint files: write a temp file, fsync it, rename over, fsync the directory.

A reader sees either the previous checkpoint or the new one, never a torn file, even
after ``kill -9`` or a power cut in the middle of a write.
"""

from __future__ import annotations

import os
from pathlib import Path

from schemas.errors import CheckpointError


def write_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_if_exists(path: str | Path) -> bytes | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
