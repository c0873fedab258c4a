"""Topic admin (kafka-python): create topics with their configs, check the cluster answers."""

from __future__ import annotations

import time
from collections.abc import Iterable

import confluent_kafka
import confluent_kafka.admin
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    AuthorizationError,
    KafkaError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
)

from schemas.errors import ClusterAuthError, ClusterUnreachableError, ConfigError
from schemas.kafka.settings import ErrorLog, KafkaSettings
from schemas.topics import TopicSpec

CONNECT_TIMEOUT_S = 10.0
"""How long topic admin tries to reach the cluster before it says why it cannot."""

REPLICAS = 3
"""Copies of each topic on a cluster of at least this many brokers; one on a smaller one."""
MIN_IN_SYNC = 2
"""Of those copies, how many must hold a record before an acks=all producer hears it was
written: a cluster of three loses no acknowledged record, and refuses no write, when one
broker goes."""


def ensure_topics(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec],
    timeout_s: float = 30,
    connect_timeout_s: float | None = None,
) -> list[str]:
    """Create missing topics with their configs; existing ones are left as they are.

    On a cluster of REPLICAS (3) or more brokers each topic gets REPLICAS replicas and
    ``min.insync.replicas`` MIN_IN_SYNC (unless its spec says otherwise); on a smaller one,
    one replica. The brokers are counted from the cluster's metadata, which lists only those
    up: topics created while one of three is down get one replica.

    Returns the names created. Idempotent: running it twice creates nothing the second time.
    A cluster that does not answer within ``connect_timeout_s`` (default CONNECT_TIMEOUT_S) is
    a ClusterUnreachableError, one that refuses the credentials a ClusterAuthError (see
    :func:`check_cluster`).
    """
    specs = list(specs)
    connect_timeout_s = CONNECT_TIMEOUT_S if connect_timeout_s is None else connect_timeout_s
    check_cluster(settings, connect_timeout_s)  # says why in one line, and fast if refused
    admin = _admin(settings, connect_timeout_s, timeout_s)
    try:
        existing = set(admin.list_topics())
        todo = [s for s in specs if s.name not in existing]
        replicas, configs = replication(len(admin.describe_cluster()["brokers"]) if todo else 1)
        created: list[str] = []
        for spec in todo:
            topic = NewTopic(
                spec.name, spec.partitions, replicas, topic_configs={**configs, **spec.configs}
            )
            try:
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            _wait_for_metadata(admin, created, timeout_s)
        return created
    except KafkaError as exc:
        if isinstance(exc, (SaslAuthenticationFailedError, AuthorizationError)):
            raise ClusterAuthError(
                f"{settings.bootstrap} refused topic admin ({exc}): check the ACLs of "
                f"{settings.sasl_username or 'this client'} and {settings.check_hint()}"
            ) from exc
        raise ConfigError(f"cannot create topics on {settings.bootstrap}: {exc}") from exc
    finally:
        admin.close()


def replication(brokers: int) -> tuple[int, dict[str, str]]:
    """Replication factor and topic configs for new topics on a cluster of ``brokers``."""
    if brokers >= REPLICAS:
        return REPLICAS, {"min.insync.replicas": str(MIN_IN_SYNC)}
    return 1, {}


def check_cluster(settings: KafkaSettings, timeout_s: float | None = None) -> None:
    """Return once the cluster answers a metadata request over librdkafka (the client every
    service uses) with these settings; else ClusterAuthError at the first refused login, or
    ClusterUnreachableError after ``timeout_s`` (default CONNECT_TIMEOUT_S), with
    librdkafka's reason and the settings to check, in one line."""
    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    errors = ErrorLog(quiet=True)
    cfg = {**settings.rdkafka_config(), "error_cb": errors, "log_level": 0}
    try:
        client = confluent_kafka.admin.AdminClient(cfg)
    except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"bad Kafka client settings: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.list_topics(timeout=max(0.05, min(0.5, deadline - time.monotonic())))
            return
        except confluent_kafka.KafkaException:
            client.poll(0)  # serves error_cb
            if errors.refused or time.monotonic() >= deadline:
                raise errors.failure(settings, f"no answer within {timeout_s:g}s") from None


def _admin(settings: KafkaSettings, connect_timeout_s: float, timeout_s: float) -> KafkaAdminClient:
    """A connected kafka-python admin client, or ClusterUnreachableError."""
    try:
        return KafkaAdminClient(
            **settings.client_config(),
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(connect_timeout_s * 1000),
        )
    except KafkaError as exc:
        raise ClusterUnreachableError(
            f"topic admin (kafka-python) could not bootstrap from {settings.bootstrap} within "
            f"{connect_timeout_s:g}s ({exc}): check {settings.check_hint()}"
        ) from exc


def _wait_for_metadata(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = admin.describe_topics(names)
        if all(t.get("error_code", 0) == 0 and t.get("partitions") for t in described):
            return
        time.sleep(0.05)
    raise ConfigError(f"topics {names} created but not visible after {timeout_s}s")
