"""The one Kafka wrapper every stage uses: settings, producer, consumer, topic admin.

Latency-tuned defaults live in :mod:`.settings` and only there. Clients connect lazily (on
first use), are context managers, copy the caller's config and flush on close — never per
message. Lives in ``schemas`` because every stage needs it and stages import nothing but
schemas. Producers and consumers run on librdkafka (confluent-kafka); topic admin on
kafka-python.
"""

from schemas.errors import ProduceError
from schemas.kafka.admin import CONNECT_TIMEOUT_S, check_cluster, ensure_topics
from schemas.kafka.consumer import Consumer, RebalanceListener
from schemas.kafka.producer import FailureHandler, Producer
from schemas.kafka.records import Message, TopicPartition, headers_of
from schemas.kafka.settings import (
    BOOTSTRAP_ENV,
    CONSUMER_DEFAULTS,
    PRODUCER_DEFAULTS,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    KafkaSettings,
)

__all__ = [
    "BOOTSTRAP_ENV",
    "CONNECT_TIMEOUT_S",
    "CONSUMER_DEFAULTS",
    "PRODUCER_DEFAULTS",
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "Consumer",
    "FailureHandler",
    "KafkaSettings",
    "Message",
    "ProduceError",
    "Producer",
    "RebalanceListener",
    "TopicPartition",
    "check_cluster",
    "ensure_topics",
    "headers_of",
]
