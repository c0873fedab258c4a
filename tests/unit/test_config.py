"""Config dataclasses as CLI flags with DRIVESTREAM_* environment twins."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from schemas.config import add_config_arguments, config_from_args
from schemas.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    rate: float = field(default=10.0, metadata={"help": "frames per second"})
    name: str = "demo"
    horizons_s: tuple[float, ...] = (0.5, 1.0)
    live: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")


def parse(argv: list[str]) -> DemoConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, DemoConfig)
    return config_from_args(DemoConfig, parser.parse_args(argv))


def test_defaults_env_and_flags_in_that_order(monkeypatch):
    assert parse([]) == DemoConfig()
    monkeypatch.setenv("DRIVESTREAM_RATE", "20")
    monkeypatch.setenv("DRIVESTREAM_LIVE", "true")
    monkeypatch.setenv("DRIVESTREAM_HORIZONS_S", "1,2,3")
    assert parse([]) == DemoConfig(rate=20.0, live=True, horizons_s=(1.0, 2.0, 3.0))
    assert parse(["--rate", "5", "--no-live", "--limit", "7"]) == DemoConfig(
        rate=5.0, live=False, horizons_s=(1.0, 2.0, 3.0), limit=7
    )


def test_help_names_the_environment_twin(capsys):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, DemoConfig)
    parser.print_help()
    out = capsys.readouterr().out
    assert "DRIVESTREAM_RATE" in out and "frames per second" in out and "DRIVESTREAM_LIVE" in out


def test_bad_values_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="--rate"):
        parse(["--rate", "fast"])
    with pytest.raises(ConfigError, match="rate must be > 0"):
        parse(["--rate", "-1"])
    monkeypatch.setenv("DRIVESTREAM_LIVE", "maybe")
    with pytest.raises(ConfigError, match="--live"):
        parse([])
