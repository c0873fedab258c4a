"""The one Kafka wrapper every stage uses: settings, producer, consumer, topic admin.

Latency-tuned defaults live here and only here. Clients connect lazily (on first use),
are context managers, copy the caller's config and flush on close — never per message.
Lives in ``schemas`` because every stage needs it and stages import nothing but schemas.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import confluent_kafka
import confluent_kafka.admin
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    AuthorizationError,
    KafkaError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
)

from schemas.config import env_name
from schemas.errors import ClusterAuthError, ClusterUnreachableError, ConfigError, ProduceError
from schemas.headers import UNREADABLE, Headers
from schemas.topics import TopicSpec

log = logging.getLogger(__name__)

BOOTSTRAP_ENV = "DRIVESTREAM_BOOTSTRAP"

#: Producer defaults (librdkafka names): send at once (no linger), no compression for
#: ~100-byte records, idempotent acks=all so nothing accepted is lost or duplicated by retries,
#: and Java's murmur2 key placement so every client puts a vehicle on the same partition.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 0,
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "none",
    "partitioner": "murmur2_random",
    "request.timeout.ms": 30_000,
    "message.timeout.ms": 120_000,
    "message.max.bytes": 64 * 1024 * 1024,
}

#: Consumer defaults (librdkafka names): the broker answers a fetch as soon as one byte is
#: there; fetch.wait.max.ms only bounds empty fetches. Offsets are committed explicitly.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "fetch.min.bytes": 1,
    "fetch.wait.max.ms": 20,
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "max.partition.fetch.bytes": 64 * 1024 * 1024,
    "fetch.max.bytes": 64 * 1024 * 1024,
    "receive.message.max.bytes": 64 * 1024 * 1024 + 512,
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 1_000,
}


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    """Where the cluster is and how to authenticate; every producer, consumer and topic
    admin gets the same security settings.

    From the environment (:meth:`from_env`): ``DRIVESTREAM_BOOTSTRAP``,
    ``DRIVESTREAM_SECURITY_PROTOCOL`` (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL),
    ``DRIVESTREAM_SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512),
    ``DRIVESTREAM_SASL_USERNAME``, ``DRIVESTREAM_SASL_PASSWORD``, ``DRIVESTREAM_SSL_CAFILE``
    (PEM CA bundle the broker certificate is checked against), and for mutual TLS
    ``DRIVESTREAM_SSL_CERTFILE``, ``DRIVESTREAM_SSL_KEYFILE`` (PEM client certificate and
    private key) and ``DRIVESTREAM_SSL_KEY_PASSWORD`` (if the key is encrypted).
    """

    bootstrap: str = "127.0.0.1:9092"
    client_id: str = "drivestream"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Any other librdkafka setting (``"socket.keepalive.enable": True``) for every producer
    and consumer; topic admin (kafka-python) gets only the connection and security ones."""

    def __post_init__(self) -> None:
        if not self.bootstrap or any(":" not in h for h in self.bootstrap.split(",")):
            raise ConfigError(f"bootstrap must be host:port[,host:port], got {self.bootstrap!r}")
        object.__setattr__(self, "security_protocol", self.security_protocol.upper())
        if self.sasl_mechanism is not None:
            object.__setattr__(self, "sasl_mechanism", self.sasl_mechanism.upper())
        for problem in self._problems():
            raise ConfigError(problem)

    def _problems(self) -> Iterable[str]:
        """What is wrong with the security settings, as messages naming the variable."""
        proto = self.security_protocol
        if proto not in SECURITY_PROTOCOLS:
            yield f"{env_name('security_protocol')} must be one of {SECURITY_PROTOCOLS}: {proto!r}"
        sasl = proto.startswith("SASL_")
        tls = proto in ("SSL", "SASL_SSL")
        sasl_set = [
            n for n in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(self, n)
        ]
        if sasl and len(sasl_set) < 3:
            yield (
                f"{env_name('security_protocol')}={proto} needs {env_name('sasl_mechanism')} "
                f"(one of {', '.join(SASL_MECHANISMS)}), {env_name('sasl_username')} and "
                f"{env_name('sasl_password')}"
            )
        if sasl_set and not sasl:
            yield (
                f"{', '.join(env_name(n) for n in sasl_set)} set but "
                f"{env_name('security_protocol')} is {proto}: use SASL_SSL (or SASL_PLAINTEXT)"
            )
        if self.sasl_mechanism and self.sasl_mechanism not in SASL_MECHANISMS:
            yield (
                f"{env_name('sasl_mechanism')} must be one of {', '.join(SASL_MECHANISMS)}, "
                f"got {self.sasl_mechanism!r}"
            )
        files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
        ssl_set = [n for n in (*files, "ssl_key_password") if getattr(self, n)]
        if ssl_set and not tls:
            yield (
                f"{', '.join(env_name(n) for n in ssl_set)} set but "
                f"{env_name('security_protocol')} is {proto}: use SSL or SASL_SSL"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            yield (
                f"mutual TLS needs both {env_name('ssl_certfile')} (client certificate) and "
                f"{env_name('ssl_keyfile')} (its private key)"
            )
        if self.ssl_key_password and not self.ssl_keyfile:
            yield f"{env_name('ssl_key_password')} set without {env_name('ssl_keyfile')}"
        for name in files:
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                yield f"{env_name(name)}={path}: no such file"

    @classmethod
    def from_env(cls, **overrides: Any) -> KafkaSettings:
        """Settings from DRIVESTREAM_BOOTSTRAP and the security variables (see the class
        docstring), then ``overrides`` (those not None)."""
        names = (
            "bootstrap",
            "security_protocol",
            "sasl_mechanism",
            "sasl_username",
            "sasl_password",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_key_password",
        )
        values: dict[str, Any] = {n: os.environ.get(env_name(n)) for n in names}
        values = {k: v for k, v in values.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def client_config(self) -> dict[str, Any]:
        """Connection and security settings for kafka-python (topic admin)."""
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,  # kafka-python's name for PLAIN and SCRAM
            "sasl_plain_password": self.sasl_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_password": self.ssl_key_password,
        }
        cfg.update({k: v for k, v in optional.items() if v is not None})
        return cfg

    def rdkafka_config(self) -> dict[str, Any]:
        """The same settings for librdkafka (confluent-kafka) clients."""
        cfg: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_cafile,
            "ssl.certificate.location": self.ssl_certfile,
            "ssl.key.location": self.ssl_keyfile,
            "ssl.key.password": self.ssl_key_password,
        }
        cfg.update({k: v for k, v in optional.items() if v is not None})
        cfg.update(self.extra)
        return cfg

    def check_hint(self) -> str:
        """Which settings decide whether the cluster can be reached, for an error message."""
        names = ["bootstrap", "security_protocol"]
        if self.security_protocol in ("SSL", "SASL_SSL"):
            names += ["ssl_cafile"] + (["ssl_certfile", "ssl_keyfile"] if self.ssl_certfile else [])
        if self.security_protocol.startswith("SASL_"):
            names += ["sasl_mechanism", "sasl_username", "sasl_password"]
        return ", ".join(env_name(n) for n in names)


class Message(NamedTuple):
    """One consumed record with where it came from (a tuple: cheap to make per record)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: Headers


_IDEMP_ASSIGNED = re.compile(r'"idemp_state":\s*"Assigned"')


def _rdkafka(
    defaults: dict[str, Any], settings: KafkaSettings, overrides: dict[str, Any], errors: _ErrorLog
) -> dict[str, Any]:
    """A librdkafka client's config: defaults, then the cluster settings, then the caller's
    overrides (librdkafka names with dots as underscores); logs go to Python logging."""
    return {
        **defaults,
        "error_cb": errors,
        **settings.rdkafka_config(),
        **{k.replace("_", "."): v for k, v in overrides.items()},
        "logger": logging.getLogger("librdkafka"),
    }


def _partitions(client: Any, topic: str, timeout_s: float) -> set[int]:
    """A topic's partitions from a producer's or consumer's metadata; empty if it is missing."""
    meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        return set()
    return set(meta.partitions)


class _ErrorLog:
    """librdkafka's error_cb: keeps the last client-level error (an authentication
    failure, all brokers down) so a failed connect can say why in one line."""

    def __init__(self, quiet: bool = False) -> None:
        self.last: confluent_kafka.KafkaError | None = None
        self.refused: confluent_kafka.KafkaError | None = None
        """The last authentication or authorization failure."""
        self._quiet = quiet

    def __call__(self, err: confluent_kafka.KafkaError) -> None:
        if err.code() in _AUTH_CODES:
            self.refused = err
        if err.code() != confluent_kafka.KafkaError._ALL_BROKERS_DOWN or self.last is None:
            self.last = err  # keep the reason, not the "1/1 brokers are down" that follows
        if not self._quiet:
            log.warning("kafka: %s", err.str())

    def failure(self, settings: KafkaSettings, what: str) -> ConfigError:
        """The typed error for ``what`` not happening, naming the settings to check."""
        if self.refused is not None:
            return ClusterAuthError(
                f"{settings.bootstrap} refused this client ({self.refused.str()}): check "
                f"{settings.check_hint()}"
            )
        err = self.last
        detail = f" (last error: {err.str()})" if err is not None else ""
        return ClusterUnreachableError(
            f"{what} from {settings.bootstrap}{detail}: is the broker up? check "
            f"{settings.check_hint()}"
        )


_AUTH_CODES = {
    confluent_kafka.KafkaError._AUTHENTICATION,
    confluent_kafka.KafkaError.SASL_AUTHENTICATION_FAILED,
    confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED,
    confluent_kafka.KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}


def _produce_error(err: Any, topic: str = "") -> ProduceError:
    """A ProduceError from a librdkafka KafkaError (or whatever KafkaException carried)."""
    if isinstance(err, confluent_kafka.KafkaError):
        where = f" (topic {topic!r})" if topic else ""
        return ProduceError(f"{err.name()}: {err.str()}{where}", code=err.name())
    return ProduceError(str(err))


FailureHandler = Callable[[ProduceError, "Message"], bool]
"""Sees a failed delivery (the error, the record) first; True when it dealt with it."""


class Producer:
    """Lazy, flush-on-close producer of raw bytes on librdkafka; ``send`` never flushes.

    librdkafka's C client costs ~6 µs per record where kafka-python's costs ~37 µs
    (BENCHMARKS.md), which is most of a serving instance's budget per frame at 5,000/s.
    Delivery failures are counted in ``failures`` (and logged): a caller that commits input
    offsets after a flush compares the count before and after, so a lost record is never
    committed past. ``on_failure`` sees each failure first (on the thread that polls or
    flushes) and may deal with it instead, e.g. by sending a smaller record. Overrides are
    librdkafka settings with dots as underscores (``linger_ms=5``).
    """

    def __init__(
        self, settings: KafkaSettings, *, on_failure: FailureHandler | None = None, **overrides: Any
    ) -> None:
        self._settings = settings
        self._on_failure = on_failure
        self._in_callback = False
        """Set while on_failure runs inside poll()/flush(): sends from there must not poll."""
        self._errors = _ErrorLog()
        self._config = _rdkafka(PRODUCER_DEFAULTS, settings, overrides, self._errors)
        self._producer: confluent_kafka.Producer | None = None
        self._ready = str(self._config.get("enable.idempotence")).lower() not in ("true", "1")
        self.failures = 0
        self.last_error: ProduceError | None = None

    @property
    def client(self) -> confluent_kafka.Producer:
        if self._producer is None:
            try:
                self._producer = confluent_kafka.Producer(self._config)
            except confluent_kafka.KafkaException as exc:
                raise ConfigError(f"bad producer settings: {exc}") from exc
        return self._producer

    @property
    def ready(self) -> bool:
        """True once records are sent at once (an idempotent producer has its id)."""
        return self._ready

    def _on_stats(self, stats: str) -> None:
        if not self._ready:
            self._ready = _IDEMP_ASSIGNED.search(stats) is not None

    def connect(self, timeout_s: float = 10.0) -> Producer:
        """Start the client and wait until it can send at once; call before the first send.

        An idempotent librdkafka producer gets its producer id only ~0.5 s after it is
        created, and holds every record until then: a latency-critical sender calls this
        before its first timed record. Readiness comes from librdkafka's statistics, which a
        connected producer then reports every 100 ms: its owner must send or :meth:`poll`
        regularly (the serving loop polls every step). Raises ConfigError if the cluster
        does not answer (ClusterAuthError if it refused the credentials).
        """
        if self._producer is not None:
            raise RuntimeError("connect() starts the client: call it before the first send")
        if not self._ready:
            self._config = {
                **self._config,
                "statistics.interval.ms": 100,
                "stats_cb": self._on_stats,
            }
        client = self.client
        deadline = time.monotonic() + timeout_s
        while not self._ready:
            if time.monotonic() > deadline or self._errors.refused is not None:
                raise self._errors.failure(self._settings, f"no producer id within {timeout_s}s")
            client.poll(0.02)
        return self

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record (waiting while librdkafka's queue is full); errors are counted.

        Raises ProduceError if librdkafka refuses the record at once (larger than its
        ``message.max.bytes``, say).
        """
        self._produce(topic, value, key, headers, partition, self._on_delivery)

    def send_and_wait(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        *,
        headers: Headers | None = None,
        partition: int | None = None,
        timeout_s: float = 30.0,
    ) -> int:
        """Send one record and wait for the broker's acknowledgement; returns its offset.

        Raises :class:`ProduceError` when it fails or is not acknowledged in time.
        """
        result: list[Any] = []

        def done(err: Any, msg: Any) -> None:
            self._on_delivery(err, msg)
            result.append(err or msg.offset())

        self._produce(topic, value, key, headers, partition, done)
        self.client.flush(timeout_s)
        if not result:
            raise ProduceError(f"no acknowledgement from {topic!r} within {timeout_s}s")
        if not isinstance(result[0], int):
            raise _produce_error(result[0], topic)
        return result[0]

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None,
        headers: Headers | None,
        partition: int | None,
        on_delivery: Callable[[Any, Any], None],
    ) -> None:
        client = self.client
        while True:
            try:
                client.produce(
                    topic,
                    value,
                    key,
                    -1 if partition is None else partition,
                    on_delivery,
                    headers=headers,  # type: ignore[arg-type]  # None values are fine
                )
                break
            except BufferError as exc:  # local queue full: serve deliveries, then retry
                if self._in_callback:
                    raise ProduceError("librdkafka's queue is full", "_QUEUE_FULL") from exc
                client.poll(0.05)
            except confluent_kafka.KafkaException as exc:  # refused at once (size, topic name)
                raise _produce_error(exc.args[0], topic) from exc
        if not self._in_callback:  # a poll nested in a callback's poll aborts confluent-kafka
            client.poll(0)

    def poll(self) -> None:
        """Serve what librdkafka reported (delivery failures, statistics) without waiting."""
        if self._producer is not None:
            self._producer.poll(0)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            return
        if self._on_failure is not None and self._handled(_produce_error(err), msg):
            return
        self.failures += 1
        self.last_error = _produce_error(err)
        log.error("send to %s failed: %s", msg.topic(), self.last_error)

    def _handled(self, exc: ProduceError, msg: Any) -> bool:
        """Ask ``on_failure``; one that raises has not dealt with it (and must not raise out
        of librdkafka's delivery callback)."""
        assert self._on_failure is not None
        record = Message(
            msg.topic(), msg.partition(), -1, 0, msg.key(), msg.value() or b"", _headers_of(msg)
        )
        self._in_callback = True
        try:
            return bool(self._on_failure(exc, record))
        except Exception:
            log.exception("on_failure raised; counting the failed delivery")
            return False
        finally:
            self._in_callback = False

    def partitions_for(self, topic: str, timeout_s: float = 10.0) -> set[int]:
        """The topic's partitions, or an empty set when the cluster does not have it."""
        return _partitions(self.client, topic, timeout_s)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is delivered or failed; ProduceError on timeout."""
        if self._producer is None:
            return
        left = self._producer.flush(-1 if timeout_s is None else timeout_s)
        if left:
            raise ProduceError(f"{left} records still undelivered after {timeout_s}s")

    def close(self, timeout_s: float = 10.0) -> None:
        if self._producer is not None:
            try:
                self.flush(timeout_s)
            finally:
                self._producer = None

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Key = tuple[str, int]
"""(topic, partition)."""


class RebalanceListener(Protocol):
    """Called on the polling thread, inside ``poll()`` or ``close()``, with (topic, partition)
    keys; ``on_revoked`` may still commit through the consumer."""

    def on_assigned(self, keys: set[Key]) -> None: ...

    def on_revoked(self, keys: set[Key]) -> None: ...

    def on_lost(self, keys: set[Key]) -> None: ...


_HEADERS = operator.methodcaller("headers")
"""``m.headers()`` through a call path that checks for a pending error: on a key that is not
UTF-8, confluent-kafka returns a list *and* sets an error, which CPython's specialised
method call in a hot loop does not check, so it would surface later, anywhere."""


def _headers_of(m: confluent_kafka.Message) -> Headers:
    """A record's headers; if the client cannot read them (confluent-kafka fails on a key
    that is not UTF-8), one UNREADABLE header saying why, which check_schema rejects."""
    try:
        return _HEADERS(m) or []  # type: ignore[no-any-return]  # (str, bytes | None) pairs
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc.__cause__ or exc}"[:200]
        return [(UNREADABLE, why.encode("utf-8", "replace"))]


class Consumer:
    """Lazy consumer on librdkafka returning :class:`Message` lists; by group or assign.

    librdkafka fetches ahead on its own threads (no GIL) and hands over parsed records for
    ~3 µs each, against ~11 µs in kafka-python. Overrides are librdkafka settings with dots
    as underscores (``fetch_wait_max_ms=200``). A consumer with no group id only assigns.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Sequence[str] = (),
        group_id: str | None = None,
        **overrides: Any,
    ) -> None:
        # librdkafka wants a group id even to assign; an assign-only one never joins it
        group = group_id or f"drivestream-assign-{uuid.uuid4().hex}"
        self._settings = settings
        self._errors = _ErrorLog()
        self._config = _rdkafka(
            {**CONSUMER_DEFAULTS, "group.id": group}, settings, overrides, self._errors
        )
        self._topics = list(topics)
        self._default_start = (  # a throwaway group has nothing committed: skip the lookup
            confluent_kafka.OFFSET_STORED if group_id else confluent_kafka.OFFSET_BEGINNING
        )
        self._listener: RebalanceListener | None = None
        self._consumer: confluent_kafka.Consumer | None = None
        self._starts: dict[Key, int] = {}
        """Explicit start offsets given to assign()."""

    @property
    def client(self) -> confluent_kafka.Consumer:
        if self._consumer is None:
            try:
                self._consumer = confluent_kafka.Consumer(self._config)
            except (confluent_kafka.KafkaException, ValueError) as exc:
                raise ConfigError(f"bad consumer settings: {exc}") from exc
            if self._topics:
                self._consumer.subscribe(
                    self._topics,
                    on_assign=self._assigned,
                    on_revoke=self._revoked,
                    on_lost=self._lost,
                )
        return self._consumer

    def on_rebalance(self, listener: RebalanceListener) -> Consumer:
        """Set the rebalance listener before the first poll."""
        if self._consumer is not None:
            raise RuntimeError("set the rebalance listener before the consumer connects")
        self._listener = listener
        return self

    def _assigned(self, _: Any, tps: list[confluent_kafka.TopicPartition]) -> None:
        if self._listener is not None:
            self._listener.on_assigned({(tp.topic, tp.partition) for tp in tps})

    def _revoked(self, _: Any, tps: list[confluent_kafka.TopicPartition]) -> None:
        if self._listener is not None:
            self._listener.on_revoked({(tp.topic, tp.partition) for tp in tps})

    def _lost(self, _: Any, tps: list[confluent_kafka.TopicPartition]) -> None:
        if self._listener is not None:
            self._listener.on_lost({(tp.topic, tp.partition) for tp in tps})

    def assign(
        self, topic: str, partitions: Iterable[int], offsets: dict[int, int] | None = None
    ) -> None:
        """Read ``partitions`` from ``offsets[p]``, else from the group's committed offset
        (none without a group id), else from the beginning."""
        start, default = offsets or {}, self._default_start
        tps = [confluent_kafka.TopicPartition(topic, p, start.get(p, default)) for p in partitions]
        self.client.assign(tps)
        self._starts.update({(topic, p): o for p, o in start.items()})

    def assignment(self) -> set[Key]:
        return {(tp.topic, tp.partition) for tp in self.client.assignment()}

    def partitions_for(self, topic: str, timeout_s: float = 10.0) -> set[int]:
        """The topic's partitions, or an empty set when the cluster does not have it."""
        return _partitions(self.client, topic, timeout_s)

    def wait_partitions(self, topic: str, timeout_s: float = 30.0) -> set[int]:
        """The topic's partitions once the cluster metadata knows them.

        Services call it first so that a missing topic is a clear ConfigError, not a
        consumer group that waits for partitions forever.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            parts = self.partitions_for(topic)
            if parts:
                return parts
            if time.monotonic() > deadline:
                if self._errors.last is not None:  # no metadata at all: not a missing topic
                    raise self._errors.failure(self._settings, f"no metadata for {topic!r}")
                raise ConfigError(
                    f"topic {topic!r} not found on {self._config['bootstrap.servers']}; "
                    "create it first (drivestream topics)"
                )
            time.sleep(0.2)

    def watermarks(self, topic: str, partition: int, timeout_s: float = 10.0) -> tuple[int, int]:
        """(first offset, end offset) of a partition, asked of the broker now."""
        tp = confluent_kafka.TopicPartition(topic, partition)
        marks = self.client.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
        if marks is None:
            raise ConfigError(
                f"no offsets for {topic}[{partition}] from {self._config['bootstrap.servers']} "
                f"within {timeout_s}s: is the broker up?"
            )
        return marks

    def end_offsets(self) -> dict[Key, int]:
        """End offset (next to be written) of every assigned partition."""
        return {k: self.watermarks(*k)[1] for k in self.assignment()}

    def position(self, topic: str, partition: int) -> int | None:
        """Offset of the next record this consumer returns; None before the first one."""
        (tp,) = self.client.position([confluent_kafka.TopicPartition(topic, partition)])
        return tp.offset if tp.offset >= 0 else None

    def reached(self, ends: dict[Key, int]) -> bool:
        """True once every partition of ``ends`` was read up to its end offset there (an
        empty partition, with nothing to read, counts as read)."""
        for (topic, p), end in ends.items():
            pos = self.position(topic, p)
            if pos is None:  # nothing returned yet: done only if there is nothing to read
                pos = self._starts.get((topic, p))
                if pos is None:
                    pos = self.watermarks(topic, p)[0]
            if pos < end:
                return False
        return True

    def lag(self, topic: str, partition: int) -> int | None:
        """Records not yet returned, from the end offset of the last fetch (no request)."""
        tp = confluent_kafka.TopicPartition(topic, partition)
        marks = self.client.get_watermark_offsets(tp, cached=True)
        pos = self.position(topic, partition)
        return None if marks is None or marks[1] < 0 or pos is None else max(0, marks[1] - pos)

    def committed(self, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        """The group's committed offset per partition (None where nothing was committed)."""
        tps = [confluent_kafka.TopicPartition(topic, p) for p in partitions]
        return {
            tp.partition: tp.offset if tp.offset >= 0 else None
            for tp in self.client.committed(tps, timeout=10)
        }

    def poll(self, timeout_ms: int = 100, max_records: int | None = None) -> list[Message]:
        """Wait up to ``timeout_ms`` for a record, then take what else is already here."""
        client = self.client
        first = client.poll(timeout_ms / 1000)
        if first is None:
            return []
        batch = [first]
        if max_records is None or max_records > 1:
            batch += client.consume((max_records or 10_000) - 1, 0)
        out: list[Message] = []
        for m in batch:
            err = m.error()
            if err is not None:
                self._on_error(err)
                continue
            out.append(
                Message(
                    m.topic(),  # type: ignore[arg-type]  # set on every record without error
                    m.partition(),  # type: ignore[arg-type]
                    m.offset(),  # type: ignore[arg-type]
                    m.timestamp()[1],
                    m.key(),
                    m.value() or b"",  # a tombstone (no value) reads as empty
                    _headers_of(m),
                )
            )
        return out

    def _on_error(self, err: confluent_kafka.KafkaError) -> None:
        if err.fatal():
            raise confluent_kafka.KafkaException(err)
        log.warning("consumer: %s", err)

    def commit(self, offsets: dict[Key, int]) -> None:
        """Commit explicit ``{(topic, partition): next_offset}`` and wait for the broker."""
        done = self.client.commit(
            offsets=[confluent_kafka.TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            asynchronous=False,
        )
        failed = [tp for tp in done or [] if tp.error is not None]
        if failed:  # a synchronous commit reports per-partition errors instead of raising
            raise confluent_kafka.KafkaException(
                f"commit failed for {[(tp.topic, tp.partition, str(tp.error)) for tp in failed]}"
            )

    def close(self) -> None:
        """Leave the group (revoke callbacks run here) and close; safe to call twice."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            finally:
                self._consumer = None

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


CONNECT_TIMEOUT_S = 10.0
"""How long topic admin tries to reach the cluster before it says why it cannot."""


def ensure_topics(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec],
    timeout_s: float = 30,
    connect_timeout_s: float | None = None,
) -> list[str]:
    """Create missing topics with their configs; existing ones are left as they are.

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
        created: list[str] = []
        for spec in todo:
            topic = NewTopic(spec.name, spec.partitions, 1, topic_configs=dict(spec.configs))
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


def check_cluster(settings: KafkaSettings, timeout_s: float | None = None) -> None:
    """Return once the cluster answers a metadata request over librdkafka (the client every
    service uses) with these settings; else ClusterAuthError at the first refused login, or
    ClusterUnreachableError after ``timeout_s`` (default CONNECT_TIMEOUT_S), with
    librdkafka's reason and the settings to check, in one line."""
    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    errors = _ErrorLog(quiet=True)
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
