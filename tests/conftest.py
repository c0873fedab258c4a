"""Shared fixtures: a real Kafka broker for integration tests and uuid-named topics.

Broker, in order: ``DRIVESTREAM_BOOTSTRAP`` if set; else a testcontainers Kafka when a
Docker engine answers; else drivestream's local broker from Maven jars. If none can be had
the integration tests fail with the reason — they never skip silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.kafka import BOOTSTRAP_ENV, KafkaSettings, ensure_topics
from schemas.topics import TopicNames, default_topics

log = logging.getLogger(__name__)

TESTCONTAINERS_IMAGE = "apache/kafka:4.1.1"


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:  # any failure means "no engine here"
        return False


@contextlib.contextmanager
def _testcontainers_broker() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    container = KafkaContainer(TESTCONTAINERS_IMAGE).with_kraft()
    # as drivestream's local broker: serve's fault tests use session timeouts of ~1 s
    container = container.with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
    with container as kafka:
        yield kafka.get_bootstrap_server()


@contextlib.contextmanager
def _local_broker(data_dir: Path) -> Iterator[str]:
    from pipeline.broker import BrokerConfig, LocalBroker

    with LocalBroker(BrokerConfig(data_dir=data_dir, port=0)) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """A real broker for the whole session."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield KafkaSettings(bootstrap=external)
        return
    reasons = []
    if _docker_answers():
        try:
            with _testcontainers_broker() as bootstrap:
                yield KafkaSettings(bootstrap=bootstrap)
            return
        except Exception as exc:  # fall through to the local broker, keep the reason
            reasons.append(f"testcontainers: {exc}")
    try:
        with _local_broker(tmp_path_factory.mktemp("broker")) as bootstrap:
            yield KafkaSettings(bootstrap=bootstrap)
    except Exception as exc:
        reasons.append(f"local broker: {exc}")
        pytest.fail(
            "no Kafka broker for integration tests (set DRIVESTREAM_BOOTSTRAP, start Docker, "
            "or install Java 17+ and Maven): " + "; ".join(reasons),
            pytrace=False,
        )


@pytest.fixture
def topics(kafka_settings: KafkaSettings) -> TopicNames:
    """Every pipeline topic under a fresh uuid prefix, created on the real broker."""
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}-")
    ensure_topics(kafka_settings, default_topics(partitions=4, prefix=names.prefix))
    return names


@pytest.fixture
def topic_factory(kafka_settings: KafkaSettings):
    """Create one uuid-named topic: ``topic_factory(partitions=1, **configs) -> name``."""
    from schemas.topics import TopicSpec

    def make(partitions: int = 1, **configs: str) -> str:
        name = f"t{uuid.uuid4().hex[:10]}"
        ensure_topics(
            kafka_settings, [TopicSpec(name=name, partitions=partitions, configs=configs)]
        )
        return name

    return make
