"""Serving configuration: one frozen dataclass, every field a CLI flag with an env twin."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from schemas import deadletter, prediction, topics
from schemas.config import setting
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from inference.validate import TrustPolicy

DEVICES = ("auto", "cpu", "cuda")
GUARANTEES = ("at-least-once", "exactly-once")
_MAX_DEADLETTER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How `drivestream serve` consumes, batches, infers, falls back and publishes.

    The widest frame gap a model window may span is not here: it is the serving model's
    ``InputSpec.max_gap_s`` (the trainer's limit), so the two can never disagree.
    """

    bootstrap: str = setting("127.0.0.1:9092", "Kafka bootstrap host:port")
    topic_prefix: str = setting("", "prefix of every topic name")
    group_id: str = setting("drivestream-inference", "consumer group shared by instances")
    session_timeout_ms: int = setting(
        6000,
        "an instance silent this long is out of the group and its partitions move to the "
        "others (the broker's group.min.session.timeout.ms bounds it: 6000 by default, 1000 "
        "on drivestream's local broker)",
    )
    instance_id: str = setting(
        "",
        "a stable name for this instance ('' = none): static group membership (restarted "
        "within the session timeout, it takes its partitions back without a rebalance) and, "
        "with exactly-once, a transactional id that fences its previous run at once",
    )
    model_name: str = setting("", "serve only this model name ('' = any)")
    max_batch: int = setting(64, "largest micro-batch across vehicles")
    max_wait_us: int = setting(
        0,
        "longest a frame waits for its batch to fill, microseconds (only while waits pay); "
        "0: a batch is what arrived while the previous one ran, the lowest latency. A wait "
        "saves model runs (CPU, GPU launches) at the cost of the frames that wait",
    )
    budget_ms: float = setting(50.0, "latency budget per frame after its t_produce_ns")
    linger_ms: float = setting(
        0.0,
        "how long the producer holds a prediction for more to join its request (librdkafka "
        "linger.ms); with max_in_flight 1 requests fill by themselves at high rates",
    )
    max_in_flight: int = setting(
        1,
        "produce requests in flight per broker (1..5): with 1 a prediction leaves at once "
        "when none is in flight, else joins the next request, which leaves on the previous "
        "one's acknowledgement, so requests grow with the rate; raise it (and linger_ms) "
        "for a broker many milliseconds away",
    )
    sched_slice_us: int = setting(
        100,
        "scheduler slice the serving threads ask Linux 6.12+ for, microseconds (100..100000; "
        "0: the kernel's default): a short one lets a frame's wake-up preempt batch work "
        "sharing the cores (a trainer, a broker) sooner, without a larger share of the CPU",
    )
    safety_margin_ms: float = setting(3.0, "time kept back for publishing when judging the budget")
    device: str = setting("auto", "auto | cpu | cuda")
    intra_op_threads: int = setting(1, "ONNX Runtime intra-op threads (CPU)")
    metrics_port: int = setting(0, "Prometheus /metrics + /healthz port, 0=off")
    metrics_host: str = setting(
        "127.0.0.1", "address the metrics server binds (0.0.0.0 = every interface)"
    )
    max_deadletter_bytes: int = setting(
        deadletter.MAX_BYTES, "largest dead letter; a larger bad record is cut (sha256 kept)"
    )
    predictions_format: str = setting(
        "binary",
        "value layout of predictions: binary (compact, fastest) or json (schema tag "
        "prediction+json/1, for standard Kafka tooling; see docs/WIRE.md)",
    )
    commit_interval_ms: int = setting(
        1000,
        "how often to commit offsets: once every prediction sent is delivered, or, when "
        "that has not happened within another interval, after flushing the producer",
    )
    guarantee: str = setting(
        "at-least-once",
        "at-least-once (lowest latency; a restart may answer a frame twice, same vehicle_id "
        "and seq) or exactly-once (Kafka transactions: predictions and input offsets commit "
        "together, read_committed consumers see each frame answered once)",
    )
    transaction_ms: int = setting(
        25, "exactly-once: how often the open transaction commits (answers become visible then)"
    )
    max_poll_records: int = setting(500, "records taken per consumer poll")
    accuracy_tolerance: float = setting(
        0.1, "reject a model > this fraction worse than the serving one (or physics)"
    )
    min_truth_samples: int = setting(16, "ground-truth windows needed before comparing accuracy")
    truth_capacity: int = setting(
        4096, "recent ground-truth windows kept (at most this many per gate_window_s are made)"
    )
    truth_every: int = setting(2, "keep every N-th window of a vehicle as ground truth")
    gate: bool = setting(
        True,
        "never worse than physics: the model answers only while it beats CV/CTRV on recent "
        "truth (off: any validated model answers; for tests and benchmarks of the serving path)",
    )
    gate_window_s: float = setting(30.0, "never-worse gate: judge on truth of the last N seconds")
    gate_min_samples: int = setting(20, "never-worse gate: truth windows before a model answers")
    gate_rejoin_margin: float = setting(
        0.1, "never-worse gate: a model must beat physics by this fraction to (re)join"
    )
    trusted_key_files: tuple[str, ...] = setting(
        (),
        "files of Ed25519 public keys whose signed models serve accepts (the parameter "
        "server writes its key to <checkpoint-dir>/ps-<model>.pub), comma-separated",
    )
    trusted_keys: tuple[str, ...] = setting(
        (), "Ed25519 public keys as base64 (the line of a .pub file), comma-separated"
    )
    allow_unsigned: bool = setting(
        False, "also accept unsigned models (hand-made ones; anyone who can write `models`)"
    )
    max_version_jump: int = setting(
        10_000, "refuse a model this many versions ahead of the newest trusted one seen"
    )
    cv_yaw_eps: float = setting(1e-3, "|yaw rate| below this uses constant velocity, rad/s")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")

    def __post_init__(self) -> None:
        checks = [
            (self.max_batch >= 1, f"max_batch must be >= 1, got {self.max_batch}"),
            (
                self.predictions_format in prediction.FORMATS,
                f"predictions_format must be one of {prediction.FORMATS}, "
                f"got {self.predictions_format!r}",
            ),
            (self.max_wait_us >= 0, f"max_wait_us must be >= 0, got {self.max_wait_us}"),
            (0 <= self.linger_ms <= 1000, f"linger_ms must be in 0..1000, got {self.linger_ms}"),
            (
                1 <= self.max_in_flight <= 5,
                f"max_in_flight must be in 1..5, got {self.max_in_flight}",
            ),
            (self.budget_ms > 0, f"budget_ms must be > 0, got {self.budget_ms}"),
            (
                self.sched_slice_us == 0 or 100 <= self.sched_slice_us <= 100_000,
                f"sched_slice_us must be 0 or 100..100000, got {self.sched_slice_us}",
            ),
            (self.safety_margin_ms >= 0, "safety_margin_ms must be >= 0"),
            (self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}"),
            (self.intra_op_threads >= 1, "intra_op_threads must be >= 1"),
            (0 <= self.metrics_port < 65536, f"metrics_port must be 0..65535: {self.metrics_port}"),
            (self.commit_interval_ms >= 1, "commit_interval_ms must be >= 1"),
            (
                self.guarantee in GUARANTEES,
                f"guarantee must be one of {GUARANTEES}, got {self.guarantee!r}",
            ),
            (self.transaction_ms >= 1, "transaction_ms must be >= 1"),
            (self.session_timeout_ms >= 500, "session_timeout_ms must be >= 500"),
            (self.max_poll_records >= 1, "max_poll_records must be >= 1"),
            (self.accuracy_tolerance >= 0, "accuracy_tolerance must be >= 0"),
            (self.min_truth_samples >= 1, "min_truth_samples must be >= 1"),
            (self.truth_every >= 1, "truth_every must be >= 1"),
            (self.gate_window_s > 0, "gate_window_s must be > 0"),
            (self.gate_min_samples >= 1, "gate_min_samples must be >= 1"),
            (0 <= self.gate_rejoin_margin < 1, "gate_rejoin_margin must be in [0, 1)"),
            (self.truth_capacity >= self.min_truth_samples, "truth_capacity < min_truth_samples"),
            (self.cv_yaw_eps >= 0, "cv_yaw_eps must be >= 0"),
            (self.max_version_jump >= 1, "max_version_jump must be >= 1"),
            (
                deadletter.MIN_BYTES <= self.max_deadletter_bytes <= _MAX_DEADLETTER_BYTES,
                f"max_deadletter_bytes must be {deadletter.MIN_BYTES}..{_MAX_DEADLETTER_BYTES} "
                f"(and below the deadletter topic's max.message.bytes): "
                f"{self.max_deadletter_bytes}",
            ),
            (bool(self.group_id), "group_id must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def trust(self) -> TrustPolicy:
        """Read the trusted keys (ConfigError when unreadable, or when none and signed
        models are required: serve would then refuse every model)."""
        from inference.validate import TrustPolicy  # onnx and ORT: not at flag parsing
        from schemas.signing import TrustedKeys, parse_public_key, read_public_keys

        keys = [k for path in self.trusted_key_files for k in read_public_keys(path)]
        keys += [parse_public_key(text) for text in self.trusted_keys]
        if not keys and not self.allow_unsigned:
            raise ConfigError(
                "serve trusts no model signing key: pass --trusted-key-files with the "
                "parameter server's <checkpoint-dir>/ps-<model>.pub (env "
                "DRIVESTREAM_TRUSTED_KEY_FILES), or --allow-unsigned to accept any model"
            )
        return TrustPolicy(
            keys=TrustedKeys(keys),
            allow_unsigned=self.allow_unsigned,
            max_version_jump=self.max_version_jump,
        )

    @property
    def sensors_topic(self) -> str:
        return self.topic_prefix + topics.SENSORS

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"

    @property
    def commit_every_s(self) -> float:
        """How often the loop commits: each transaction in exactly-once mode."""
        return (self.transaction_ms if self.exactly_once else self.commit_interval_ms) / 1000

    @property
    def predictions_topic(self) -> str:
        return self.topic_prefix + topics.PREDICTIONS

    @property
    def models_topic(self) -> str:
        return self.topic_prefix + topics.MODELS

    @property
    def deadletter_topic(self) -> str:
        return self.topic_prefix + topics.DEADLETTER

    @cached_property
    def batch_shapes(self) -> tuple[int, ...]:
        """Batch sizes the model runs at: powers of two up to max_batch, and max_batch."""
        shapes = [1]
        while shapes[-1] * 2 < self.max_batch:
            shapes.append(shapes[-1] * 2)
        if shapes[-1] != self.max_batch:
            shapes.append(self.max_batch)
        return tuple(shapes)

    def padded(self, n: int) -> int:
        """The warmed batch shape that holds ``n`` rows (called per frame: a table lookup)."""
        table = self._padded
        if 0 <= n < len(table):
            return table[n]
        return self.max_batch

    @cached_property
    def _padded(self) -> tuple[int, ...]:
        return tuple(self._pad(n) for n in range(self.max_batch + 1))

    def _pad(self, n: int) -> int:
        for s in self.batch_shapes:
            if s >= n:
                return s
        return self.max_batch
