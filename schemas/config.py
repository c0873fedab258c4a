"""Config dataclasses to command-line flags, each with a DRIVESTREAM_* environment twin.

A service declares a frozen ``kw_only`` dataclass whose fields carry attribute docstrings
via ``field(metadata={"help": ...})``; :func:`add_config_arguments` turns each field into
``--field-name`` (default read from ``DRIVESTREAM_FIELD_NAME``, shown in ``--help``) and
:func:`config_from_args` builds the dataclass back, turning bad values into ConfigError.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any, TypeVar

from schemas.errors import ConfigError

T = TypeVar("T")

ENV_PREFIX = "DRIVESTREAM_"


def setting(default: Any, help: str) -> Any:
    """A config field with its ``--help`` text: ``rate: float = setting(10.0, "frames/s")``."""
    return dataclasses.field(default=default, metadata={"help": help})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; ``tuple[float, ...]`` -> tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def _parse(tp: Any, raw: str, name: str) -> Any:
    base = _base_type(tp)
    try:
        if base is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if base is tuple:
            (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis} or {str}
            return tuple(_parse(item, part.strip(), name) for part in raw.split(",") if part)
        if base in (int, float, str):
            return base(raw)
    except ValueError as exc:
        raise ConfigError(f"--{name.replace('_', '-')}: cannot read {raw!r}: {exc}") from exc
    return raw


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per dataclass field; environment twins override the built-in default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        env = env_name(f.name)
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else f.default_factory()  # type: ignore[misc]
            if f.default_factory is not dataclasses.MISSING
            else None
        )
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{f.metadata.get('help', '')} [env {env}; default {shown}]".strip()
        if _base_type(hints[f.name]) is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text
            )
        parser.set_defaults(**{f"_type_{f.name}": hints[f.name]})


def config_from_args(cls: type[T], args: argparse.Namespace, **fixed: Any) -> T:
    """Build ``cls`` from flags, then environment twins, then the dataclass defaults."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.name in fixed:
            continue
        raw = getattr(args, f.name, None)
        if raw is None:
            raw = os.environ.get(env_name(f.name))
        if raw is None:
            continue
        values[f.name] = _parse(hints[f.name], raw, f.name) if isinstance(raw, str) else raw
    values.update(fixed)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc
