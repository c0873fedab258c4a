"""Hot-swap: watch the compacted `models` topic, validate and warm new models off-thread.

The watcher thread builds a :class:`LoadedModel` and parks it in a one-slot mailbox; the
serving loop takes it between batches (a reference swap, no pause) and hands the old one
back to be released here, so tearing a session down never costs the serving thread. The
same thread judges the newest model against physics (:mod:`inference.gate`): before the
swap, then every ``GatePolicy.every_s``.

Before any of that an envelope must be signed by a trusted key and follow the lineage seen
(:class:`Lineage`); at start-up the topic's contents get the same checks as a live swap
(:meth:`ModelSwapper.start`), never a blind load of the newest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from inference.errors import ModelRejected
from inference.gate import PredictorGate
from inference.metrics import ServeMetrics
from inference.runtime import LoadedModel
from inference.validate import TrustPolicy, ValidationPolicy, check_trust, validate
from schemas import deadletter
from schemas.envelope import ModelEnvelope, check_envelope_headers, decode_envelope
from schemas.errors import ValidationError
from schemas.kafka import Consumer, KafkaSettings, Message, ProduceError, Producer

log = logging.getLogger(__name__)

TruthFn = Callable[[], tuple[np.ndarray, np.ndarray]]
DeadLetterFn = Callable[[Message, BaseException], None]
"""Sends a rejected `models` record to the dead-letter topic with the reason it failed."""


class Lineage:
    """The newest trusted version seen; a version far ahead of it breaks the lineage.

    A live server exports every few seconds, so consecutive versions are close; a jump of
    more than ``max_jump`` (a forged or runaway counter) would otherwise make every later
    legitimate export look stale. Until the first trusted envelope anchors it, any version
    is in line (after a restart the compacted topic holds only the newest).
    """

    def __init__(self, max_jump: int) -> None:
        self.max_jump = max_jump
        self.newest: int | None = None

    def check(self, env: ModelEnvelope) -> None:
        if env.parent_version > env.version or env.parent_version < 0:
            raise ModelRejected(
                "lineage", f"parent v{env.parent_version} is not older than v{env.version}"
            )
        if self.newest is not None and env.version > self.newest + self.max_jump:
            raise ModelRejected(
                "version_jump",
                f"v{env.version} is more than {self.max_jump} versions ahead of the newest "
                f"trusted v{self.newest} (serve --max-version-jump)",
            )
        self.newest = env.version if self.newest is None else max(self.newest, env.version)


class ModelSwapper:
    """Checks who published an envelope and whether it follows the lineage, validates it
    against the newest accepted model and hands winners over to the serving loop."""

    def __init__(
        self,
        policy: ValidationPolicy,
        truth: TruthFn,
        metrics: ServeMetrics,
        model_name: str = "",
        gate: PredictorGate | None = None,
        trust: TrustPolicy | None = None,
        dead_letter: DeadLetterFn | None = None,
    ) -> None:
        self.policy, self._truth, self.metrics, self.model_name = policy, truth, metrics, model_name
        self.gate = gate
        self.trust = trust or TrustPolicy()
        """Default: no key trusted, unsigned refused (nothing is accepted until configured)."""
        self.lineage = Lineage(self.trust.max_version_jump)
        self.dead_letter = dead_letter
        self._lock = threading.Lock()
        self._ready: LoadedModel | None = None
        self._accepted: LoadedModel | None = None
        self._retired: list[LoadedModel] = []
        self._pending: list[tuple[ModelEnvelope, Message | None]] = []
        """Start-up candidates (and their records), newest first, waiting for ground truth."""
        self.rejections: list[ModelRejected] = []
        self.builds_started = self.builds_finished = 0
        """Validations begun/ended; the serving loop uses them to time its gaps during one."""
        self.built_on: list[str] = []
        """Thread name of each accepted model's build (the watcher's, never the loop's)."""

    def configure_trust(self, trust: TrustPolicy) -> None:
        """Set whose envelopes are accepted; call before the watcher starts."""
        self.trust = trust
        self.lineage = Lineage(trust.max_version_jump)

    def offer(self, env: ModelEnvelope, source: Message | None = None) -> LoadedModel | None:
        """Check and validate one live envelope; on success park it and return it.

        ``source`` is the record it came in: a rejected one is dead-lettered."""
        if self.model_name and env.name != self.model_name:
            return None
        try:
            newest = max(self._accepted_version(), self.lineage.newest or -1)
            check_trust(env, self.trust)
            if env.version <= newest:  # also a replayed, legitimately signed old envelope
                raise ModelRejected("stale_version", f"v{env.version} is not newer than v{newest}")
            self.lineage.check(env)
        except ModelRejected as exc:
            self._rejected(env, exc, source)
            return None
        return self._build(env, source)

    def start(
        self, envs: list[ModelEnvelope], sources: list[Message | None] | None = None
    ) -> LoadedModel | None:
        """The restart path: what the topic held at start-up, checked like live envelopes.

        Trust and lineage are checked oldest first; then the newest candidate is validated,
        older ones only if it is rejected. With the never-worse gate on, validation waits
        for ground truth (physics answers meanwhile, as it would for an unproven model), so
        a newer but wrong model is rejected on accuracy instead of blocking an older good one.
        """
        admitted: list[tuple[ModelEnvelope, Message | None]] = []
        records = list(zip(envs, sources or [None] * len(envs), strict=True))
        for env, source in sorted(records, key=lambda r: r[0].version):
            if self.model_name and env.name != self.model_name:
                continue
            try:
                check_trust(env, self.trust)
                self.lineage.check(env)
            except ModelRejected as exc:
                self._rejected(env, exc, source)
                continue
            admitted.append((env, source))
        self._pending = admitted[::-1]
        return self._try_pending()

    def _try_pending(self) -> LoadedModel | None:
        if not self._pending:
            return None
        if self.gate is not None and len(self._truth()[0]) < self.policy.min_truth_samples:
            return None  # no truth yet: physics answers until the candidates can be judged
        pending, self._pending = self._pending, []
        for env, source in pending:
            if env.version <= self._accepted_version():
                continue  # a live export overtook it
            model = self._build(env, source)
            if model is not None:
                return model
        return None

    @property
    def waiting(self) -> int:
        """Start-up candidates still waiting for ground truth."""
        return len(self._pending)

    def _accepted_version(self) -> int:
        return self._accepted.version if self._accepted is not None else -1

    def _rejected(
        self, env: ModelEnvelope | None, exc: ModelRejected, source: Message | None
    ) -> None:
        log.warning(
            "%s %s; v%s keeps serving",
            f"{env.name} v{env.version}" if env is not None else "models record",
            exc,
            self._accepted.version if self._accepted else "none (fallback)",
        )
        self.metrics.swaps.labels(outcome="rejected", reason=exc.reason).inc()
        self.rejections = [*self.rejections[-99:], exc]
        if source is not None and self.dead_letter is not None:
            self.dead_letter(source, exc)

    def _build(self, env: ModelEnvelope, source: Message | None) -> LoadedModel | None:
        base = self._accepted
        self.builds_started += 1
        try:
            model = validate(env, self.policy, base, self._truth())
        except ModelRejected as exc:
            self._rejected(env, exc, source)
            return None
        finally:
            self.builds_finished += 1
        if self.gate is not None:
            self.gate.judge(model)  # the verdict is there before the loop takes the model
        with self._lock:
            if self._ready is not None:
                self._retired.append(self._ready)
            self._ready = model
            self._accepted = model
            self.built_on = [*self.built_on[-99:], threading.current_thread().name]
        self._pending = [(e, m) for e, m in self._pending if e.version > model.version]
        log.info(
            "%s v%d validated on %s, warm %s ms",
            env.name,
            env.version,
            model.provider,
            {b: round(ms, 2) for b, ms in model.warm_ms.items()},
        )
        return model

    def decode(self, msg: Message) -> ModelEnvelope | None:
        """The envelope in a `models` record; an undecodable one is rejected (None)."""
        try:
            check_envelope_headers(msg.headers)
            return decode_envelope(msg.value)
        except ValidationError as exc:
            self._rejected(None, ModelRejected("undecodable", str(exc)), msg)
            return None

    def offer_raw(self, msg: Message) -> LoadedModel | None:
        """Decode a `models` record and offer it."""
        env = self.decode(msg)
        return None if env is None else self.offer(env, msg)

    def tick(self) -> None:
        """Validate start-up candidates once truth exists; re-judge when the gate is due."""
        self._try_pending()
        if self.gate is not None and self.gate.due():
            self.gate.judge(self._accepted)

    def take_ready(self) -> LoadedModel | None:
        """Called by the serving loop between batches; cheap when nothing is waiting."""
        if self._ready is None:
            return None
        with self._lock:
            model, self._ready = self._ready, None
        return model

    def retire(self, model: LoadedModel) -> None:
        """Hand a replaced model back; it is released on the watcher thread."""
        with self._lock:
            self._retired.append(model)

    def release_retired(self) -> None:
        with self._lock:
            self._retired.clear()


class ModelDeadLetters:
    """Dead-letters rejected `models` records from the watcher thread, on a producer of its
    own (the serving loop's is polled on the serving thread only), each acknowledged before
    the next: rejections are rare, and one that cannot be sent is logged, never fatal.

    Every serve instance judges every model, so each sends its own dead letter of a rejected
    record (and again after a restart): Connect's topic/partition/offset headers tell them
    apart from distinct records."""

    def __init__(
        self, settings: KafkaSettings, topic: str, max_bytes: int, metrics: ServeMetrics
    ) -> None:
        self.topic, self.max_bytes, self.metrics = topic, max_bytes, metrics
        self._producer = Producer(settings)

    def __call__(self, msg: Message, error: BaseException) -> None:
        d = deadletter.of_record(
            msg.topic, msg.partition, msg.offset, msg.value, msg.headers, str(error),
            "inference", error,
        )  # fmt: skip

        def send(record: deadletter.DeadLetterRecord) -> None:
            self._producer.send_and_wait(
                self.topic, record.value, record.key, headers=record.headers, timeout_s=10
            )

        try:
            deadletter.send_dead_letter(send, d, msg.key, self.max_bytes)
        except ProduceError as exc:
            log.error("could not dead-letter models record at offset %d: %s", msg.offset, exc)
            return
        self.metrics.deadletters.inc()

    def close(self) -> None:
        self._producer.close()


class ModelWatcher(threading.Thread):
    """Reads the `models` topic from the start; newest first at start-up, then in order.
    Records it rejects go to ``dead_letters`` (when given)."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        swapper: ModelSwapper,
        dead_letters: ModelDeadLetters | None = None,
    ) -> None:
        super().__init__(name="model-watcher", daemon=True)
        self.settings, self.topic, self.swapper = settings, topic, swapper
        self.dead_letters = dead_letters
        if dead_letters is not None:
            swapper.dead_letter = dead_letters  # called only on this thread
        self._halt = threading.Event()
        self.caught_up = threading.Event()
        """Set once every record present at start-up was considered."""
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        consumer = Consumer(self.settings, group_id=None, fetch_wait_max_ms=200)
        try:
            parts = self._partitions(consumer)
            consumer.assign(self.topic, sorted(parts))
            end = consumer.end_offsets()
            backlog: list[Message] = []
            while not self._halt.is_set():
                msgs = consumer.poll(timeout_ms=200, max_records=64)
                self.swapper.release_retired()
                self.swapper.tick()
                if not self.caught_up.is_set():
                    backlog.extend(msgs)
                    if consumer.reached(end):
                        self._start_with_newest(backlog)
                        backlog.clear()
                        self.caught_up.set()
                    continue
                for msg in msgs:
                    self.swapper.offer_raw(msg)
        except BaseException as exc:  # a dead watcher must show in /healthz, not vanish
            log.exception("model watcher stopped")
            self.error = exc
        finally:
            consumer.close()
            self.swapper.release_retired()
            if self.dead_letters is not None:
                self.dead_letters.close()

    def _partitions(self, consumer: Consumer) -> set[int]:
        """Partitions of the models topic; metadata can lag topic creation, so retry."""
        warned = False
        while not self._halt.is_set():
            parts = consumer.partitions_for(self.topic)
            if parts:
                return parts
            if not warned:
                log.warning("models topic %s not found yet; serving from fallback", self.topic)
                warned = True
            self._halt.wait(0.5)
        return set()

    def _start_with_newest(self, backlog: list[Message]) -> None:
        """Hand what the topic held at start-up to :meth:`ModelSwapper.start`."""
        decoded = [(self.swapper.decode(msg), msg) for msg in backlog]
        records = [(env, msg) for env, msg in decoded if env is not None]
        self.swapper.start([env for env, _ in records], [msg for _, msg in records])
