"""Cluster settings (where, and how to authenticate) and the latency-tuned client defaults:
the only place either is written. Also the pieces every librdkafka client shares."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka

from schemas.config import env_name
from schemas.errors import ClusterAuthError, ClusterUnreachableError, ConfigError

log = logging.getLogger(__name__)


class RepeatFilter(logging.Filter):
    """Lets a message through once per ``every_s``; the next one says how many like it were
    held back. "Like it" ignores numbers, so a broker that is down for minutes costs a line
    per interval per kind of error, not one per reconnect attempt of every client."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{_DIGITS.sub('#', record.getMessage())}"
        last, held = self._seen.get(key, (-float("inf"), 0))
        if record.created - last < self.every_s:
            self._seen[key] = (last, held + 1)
            return False
        if held:
            record.msg = f"{record.getMessage()} ({held} more like it in {self.every_s:.0f} s)"
            record.args = None
        self._seen[key] = (record.created, 0)
        return True


_DIGITS = re.compile(r"\d+")
_REPEATS = RepeatFilter()
for _name in ("librdkafka", __name__):
    logging.getLogger(_name).addFilter(_REPEATS)


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
    # a rebalance moves only the partitions that change owner: the others keep being
    # served, with their vehicles' history, while it runs (KIP-429)
    "partition.assignment.strategy": "cooperative-sticky",
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


def librdkafka_config(
    defaults: dict[str, Any], settings: KafkaSettings, overrides: dict[str, Any], errors: ErrorLog
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


def topic_partitions(client: Any, topic: str, timeout_s: float) -> set[int]:
    """A topic's partitions from a producer's or consumer's metadata; empty if it is missing
    or the cluster does not answer now (the client's error callback has the reason)."""
    try:
        meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except confluent_kafka.KafkaException as exc:
        log.debug("no metadata for %r: %s", topic, exc)
        return set()
    if meta is None or meta.error is not None:
        return set()
    return set(meta.partitions)


class ErrorLog:
    """librdkafka's error_cb: keeps the last client-level error (an authentication
    failure, all brokers down) so a failed connect can say why in one line."""

    def __init__(self, quiet: bool = False) -> None:
        self.last: confluent_kafka.KafkaError | None = None
        self.refused: confluent_kafka.KafkaError | None = None
        """The last authentication or authorization failure."""
        self._quiet = quiet

    def __call__(self, err: confluent_kafka.KafkaError) -> None:
        if err.code() in AUTH_CODES:
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


AUTH_CODES = {
    confluent_kafka.KafkaError._AUTHENTICATION,
    confluent_kafka.KafkaError.SASL_AUTHENTICATION_FAILED,
    confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED,
    confluent_kafka.KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}
