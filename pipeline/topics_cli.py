"""``drivestream topics``: create every pipeline topic (idempotent)."""

from __future__ import annotations

import argparse
import os

from schemas.kafka import KafkaSettings, ensure_topics
from schemas.topics import default_topics


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    """--bootstrap and --topic-prefix, shared by every verb that talks to Kafka."""
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("DRIVESTREAM_BOOTSTRAP", "127.0.0.1:9092"),
        help="Kafka bootstrap servers [env DRIVESTREAM_BOOTSTRAP; default %(default)s]",
    )
    parser.add_argument(
        "--topic-prefix",
        default=os.environ.get("DRIVESTREAM_TOPIC_PREFIX", ""),
        help="prefix of every topic name [env DRIVESTREAM_TOPIC_PREFIX; default '']",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap_arguments(parser)
    parser.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("DRIVESTREAM_PARTITIONS", "4")),
        help="partitions of sensors/predictions [env DRIVESTREAM_PARTITIONS; default %(default)s]",
    )


def run(args: argparse.Namespace) -> int:
    settings = KafkaSettings.from_env(bootstrap=args.bootstrap)
    specs = default_topics(partitions=args.partitions, prefix=args.topic_prefix)
    created = ensure_topics(settings, specs)
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        print(f"{spec.name:30s} {spec.partitions:3d} partitions  {state}")
    return 0
