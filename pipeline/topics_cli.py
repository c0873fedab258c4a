"""``drivestream topics``: create every pipeline topic (idempotent)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from schemas.config import add_config_arguments, config_from_args, setting
from schemas.errors import ConfigError
from schemas.kafka import KafkaSettings, ensure_topics
from schemas.topics import default_topics


@dataclass(frozen=True, kw_only=True)
class TopicsConfig:
    """Where to create the topics and how wide."""

    bootstrap: str = setting("127.0.0.1:9092", "Kafka host:port list")
    topic_prefix: str = setting("", "prefix of every topic name")
    partitions: int = setting(4, "partitions of sensors/predictions")

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ConfigError(f"partitions must be >= 1, got {self.partitions}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TopicsConfig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(TopicsConfig, args)
    settings = KafkaSettings.from_env(bootstrap=config.bootstrap)
    specs = default_topics(partitions=config.partitions, prefix=config.topic_prefix)
    created = ensure_topics(settings, specs)
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        print(f"{spec.name:30s} {spec.partitions:3d} partitions  {state}")
    return 0
