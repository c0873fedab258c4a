"""Hot-swap: watch the compacted `models` topic, validate and warm new models off-thread.

The watcher thread builds a :class:`LoadedModel` and parks it in a one-slot mailbox; the
serving loop takes it between batches (a reference swap, no pause) and hands the old one
back to be released here, so tearing a session down never costs the serving thread. The
same thread judges the newest model against physics (:mod:`inference.gate`): before the
swap, then every ``GatePolicy.every_s``.
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
from inference.validate import ValidationPolicy, validate
from schemas.envelope import ModelEnvelope, check_envelope_headers, decode_envelope
from schemas.errors import ValidationError
from schemas.kafka import Consumer, KafkaSettings, Message

log = logging.getLogger(__name__)

TruthFn = Callable[[], tuple[np.ndarray, np.ndarray]]


class ModelSwapper:
    """Validates envelopes against the newest accepted model and hands winners over."""

    def __init__(
        self,
        policy: ValidationPolicy,
        truth: TruthFn,
        metrics: ServeMetrics,
        model_name: str = "",
        gate: PredictorGate | None = None,
    ) -> None:
        self.policy, self._truth, self.metrics, self.model_name = policy, truth, metrics, model_name
        self.gate = gate
        self._lock = threading.Lock()
        self._ready: LoadedModel | None = None
        self._accepted: LoadedModel | None = None
        self._retired: list[LoadedModel] = []
        self.rejections: list[ModelRejected] = []
        self.builds_started = self.builds_finished = 0
        """Validations begun/ended; the serving loop uses them to time its gaps during one."""
        self.built_on: list[str] = []
        """Thread name of each accepted model's build (the watcher's, never the loop's)."""

    def offer(self, env: ModelEnvelope) -> LoadedModel | None:
        """Validate one envelope; on success park it for the serving loop and return it."""
        if self.model_name and env.name != self.model_name:
            return None
        base = self._accepted
        try:
            if base is not None and env.version <= base.version:
                raise ModelRejected(
                    "stale_version", f"v{env.version} is not newer than v{base.version}"
                )
            self.builds_started += 1
            try:
                model = validate(env, self.policy, base, self._truth())
            finally:
                self.builds_finished += 1
        except ModelRejected as exc:
            log.warning(
                "%s v%d %s; v%s keeps serving",
                env.name,
                env.version,
                exc,
                base.version if base else "none (fallback)",
            )
            self.metrics.swaps.labels(outcome="rejected", reason=exc.reason).inc()
            self.rejections = [*self.rejections[-99:], exc]
            return None
        if self.gate is not None:
            self.gate.judge(model)  # the verdict is there before the loop takes the model
        with self._lock:
            if self._ready is not None:
                self._retired.append(self._ready)
            self._ready = model
            self._accepted = model
            self.built_on = [*self.built_on[-99:], threading.current_thread().name]
        log.info(
            "%s v%d validated on %s, warm %s ms",
            env.name,
            env.version,
            model.provider,
            {b: round(ms, 2) for b, ms in model.warm_ms.items()},
        )
        return model

    def offer_raw(self, msg: Message) -> LoadedModel | None:
        """Decode a `models` record and offer it; undecodable records are rejected."""
        try:
            check_envelope_headers(msg.headers)
            env = decode_envelope(msg.value)
        except ValidationError as exc:
            log.warning("models record at offset %d rejected: %s", msg.offset, exc)
            self.metrics.swaps.labels(outcome="rejected", reason="undecodable").inc()
            return None
        return self.offer(env)

    def tick(self) -> None:
        """Re-judge the newest accepted model (or physics alone) when the gate is due."""
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


class ModelWatcher(threading.Thread):
    """Reads the `models` topic from the start; newest first at start-up, then in order."""

    def __init__(self, settings: KafkaSettings, topic: str, swapper: ModelSwapper) -> None:
        super().__init__(name="model-watcher", daemon=True)
        self.settings, self.topic, self.swapper = settings, topic, swapper
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
        """On start, try the newest version first and older ones only if it is rejected."""
        envs: list[ModelEnvelope] = []
        for msg in backlog:
            try:
                check_envelope_headers(msg.headers)
                envs.append(decode_envelope(msg.value))
            except ValidationError as exc:
                log.warning("models record at offset %d rejected: %s", msg.offset, exc)
        for env in sorted(envs, key=lambda e: e.version, reverse=True):
            if self.swapper.offer(env) is not None:
                return
