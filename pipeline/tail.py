"""``drivestream tail TOPIC``: decoded records of any drivestream topic as JSON lines.

Like ``kcat -C -J``: one JSON object per record with its partition, offset, timestamp,
key, headers and decoded value (``pipeline.tail_render``). Reads by assignment, so it
joins no consumer group and commits nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import TextIO

from pipeline.tail_render import render, to_line
from schemas.config import add_config_arguments, config_from_args, setting
from schemas.errors import ConfigError
from schemas.kafka import Consumer, KafkaSettings


@dataclass(frozen=True, kw_only=True)
class TailConfig:
    """Which topic to read, from where, and when to stop."""

    topic: str = field(default="", metadata={"cli": False})
    """Topic name without the prefix: sensors, predictions, models, deadletter..."""
    bootstrap: str = setting("127.0.0.1:9092", "Kafka host:port list")
    topic_prefix: str = setting("", "prefix of every topic name")
    from_beginning: bool = setting(
        False, "start at the first retained record (default: only records produced from now)"
    )
    count: int = setting(0, "exit after this many records (0 = no limit)")
    follow: bool = setting(
        False,
        "with --from-beginning, keep waiting for new records at the end instead of exiting "
        "(without --from-beginning tail always follows)",
    )

    def __post_init__(self) -> None:
        if not self.topic:
            raise ConfigError("tail needs a TOPIC: sensors, predictions, models, deadletter...")
        if self.count < 0:
            raise ConfigError(f"count must be >= 0, got {self.count}")

    @property
    def topic_name(self) -> str:
        return self.topic_prefix + self.topic

    @property
    def stops_at_end(self) -> bool:
        return self.from_beginning and not self.follow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "topic", metavar="TOPIC", help="topic name without --topic-prefix (e.g. predictions)"
    )
    add_config_arguments(parser, TailConfig)


def tail(consumer: Consumer, config: TailConfig, out: TextIO, stop: threading.Event) -> int:
    """Print records of ``config.topic_name`` to ``out`` until done; returns how many."""
    topic = config.topic_name
    parts = sorted(consumer.wait_partitions(topic, timeout_s=10))
    marks = {p: consumer.watermarks(topic, p) for p in parts}
    consumer.assign(
        topic, parts, {p: lo if config.from_beginning else hi for p, (lo, hi) in marks.items()}
    )
    ends = {(topic, p): hi for p, (_, hi) in marks.items()}
    printed = 0
    while not stop.is_set():
        if config.stops_at_end and consumer.reached(ends):
            break
        for m in consumer.poll(timeout_ms=200, max_records=500):
            if config.stops_at_end and m.offset >= ends[(m.topic, m.partition)]:
                continue  # produced after tail started
            out.write(to_line(render(m, config.topic_prefix)) + "\n")
            printed += 1
            if config.count and printed >= config.count:
                out.flush()
                return printed
        out.flush()
    return printed


def run(args: argparse.Namespace) -> int:
    config = config_from_args(TailConfig, args, topic=args.topic)
    settings = KafkaSettings.from_env(bootstrap=config.bootstrap, client_id="drivestream-tail")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with Consumer(settings) as consumer:
            tail(consumer, config, sys.stdout, stop)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
