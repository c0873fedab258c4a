"""Topic names and configs: the one place that says what each topic is."""

from __future__ import annotations

from dataclasses import dataclass, field

SENSORS = "sensors"
PREDICTIONS = "predictions"
MODELS = "models"
DEADLETTER = "deadletter"
PS_UPDATES = "ps-updates"
PS_WEIGHTS = "ps-weights"

MODEL_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class TopicSpec:
    """A topic to create: partitions and broker-side configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)

    def renamed(self, name: str) -> TopicSpec:
        return TopicSpec(name=name, partitions=self.partitions, configs=dict(self.configs))


def default_topics(partitions: int = 4, prefix: str = "") -> list[TopicSpec]:
    """Every topic of the pipeline; ``prefix`` namespaces them (tests use a uuid)."""
    hour_ms = 3600 * 1000
    return [
        TopicSpec(
            name=prefix + SENSORS,
            partitions=partitions,
            configs={"retention.ms": str(24 * hour_ms)},
        ),
        TopicSpec(
            name=prefix + PREDICTIONS,
            partitions=partitions,
            configs={"retention.ms": str(24 * hour_ms)},
        ),
        TopicSpec(
            name=prefix + MODELS,
            partitions=1,
            configs={
                "cleanup.policy": "compact",
                "max.message.bytes": str(MODEL_MAX_BYTES),
                "min.compaction.lag.ms": "60000",
            },
        ),
        TopicSpec(
            name=prefix + DEADLETTER,
            partitions=1,
            configs={"retention.ms": str(7 * 24 * hour_ms)},
        ),
        TopicSpec(
            name=prefix + PS_UPDATES,
            partitions=1,
            configs={"retention.ms": str(24 * hour_ms), "max.message.bytes": str(MODEL_MAX_BYTES)},
        ),
        TopicSpec(
            name=prefix + PS_WEIGHTS,
            partitions=1,
            configs={"cleanup.policy": "compact", "max.message.bytes": str(MODEL_MAX_BYTES)},
        ),
    ]


@dataclass(frozen=True)
class TopicNames:
    """The concrete topic names a deployment uses (``prefix`` + the default names)."""

    prefix: str = ""

    @property
    def sensors(self) -> str:
        return self.prefix + SENSORS

    @property
    def predictions(self) -> str:
        return self.prefix + PREDICTIONS

    @property
    def models(self) -> str:
        return self.prefix + MODELS

    @property
    def deadletter(self) -> str:
        return self.prefix + DEADLETTER

    @property
    def ps_updates(self) -> str:
        return self.prefix + PS_UPDATES

    @property
    def ps_weights(self) -> str:
        return self.prefix + PS_WEIGHTS
