"""The serving loop: consume frames, batch, infer or fall back, publish, commit.

Delivery is at-least-once: offsets are committed only after the predictions of every
frame below them were sent, the producer flushed and reported no failed delivery (on the
commit interval, on revoke and on a normal close). A failed delivery stops the service with
:class:`DeliveryError` and commits nothing more: the simplest safe choice, since a restart
resumes from the last commit and answers those frames again. A crash between publish and
commit also re-answers frames after restart, so a consumer of `predictions` may see a
(vehicle_id, seq) twice and should keep the last. A rebalance does not: the revoked
partitions are drained and committed inside the listener (see inference.rebalance).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
from kafka import TopicPartition

from inference import fallback
from inference.batching import MicroBatcher, Pending
from inference.config import ServeConfig
from inference.errors import DeliveryError
from inference.history import HistoryStore
from inference.metrics import MetricsServer, ServeMetrics
from inference.rebalance import RebalanceDrain
from inference.runtime import LoadedModel, choose_providers, quiet_ort
from inference.swap import ModelSwapper, ModelWatcher
from inference.validate import ValidationPolicy
from schemas import deadletter, prediction
from schemas.errors import ValidationError
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Message, Producer
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import check_frame_headers, decode_frames

log = logging.getLogger(__name__)

MS = 1_000_000
_PRED_HEADERS = prediction.prediction_headers()
_DL_HEADERS = deadletter.dead_letter_headers()


class InferenceService:
    """One serving instance; several with the same group_id split the partitions."""

    def __init__(self, config: ServeConfig, settings: KafkaSettings | None = None) -> None:
        self.config = config
        self.settings = settings or KafkaSettings.from_env(bootstrap=config.bootstrap)
        self.metrics = ServeMetrics()
        self.history = HistoryStore(DEFAULT_SPEC, truth_capacity=config.truth_capacity)
        policy = ValidationPolicy(
            device=config.device,
            intra_op_threads=config.intra_op_threads,
            batch_shapes=config.batch_shapes,
            reject_ratio=config.reject_ratio,
            reject_margin_m=config.reject_margin_m,
            min_truth_samples=config.min_truth_samples,
            yaw_eps=config.cv_yaw_eps,
        )
        self.swapper = ModelSwapper(policy, self.history.truth, self.metrics, config.model_name)
        self.batcher = MicroBatcher(config.max_batch, config.max_wait_us * 1000)
        self.model: LoadedModel | None = None
        self.assigned: set[tuple[str, int]] = set()
        self.stats: Counter[str] = Counter()
        self.swap_pauses_ms: list[float] = []
        self.build_loop_gap_ms: dict[int, float] = {}
        """Longest serving-loop iteration that overlapped model build n (1-based)."""
        self.error: BaseException | None = None
        self._budget_ns = int(config.budget_ms * MS)
        self._margin_ns = int(config.safety_margin_ms * MS)
        self._cost_ns: dict[int, float] = {}
        self._next_offset: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._last_commit = self._last_lag = time.monotonic()
        self._last_loop = time.monotonic()
        self._loop_mark = (self._last_loop, 0, 0)
        self._stop = threading.Event()
        self._halted = False  # after a failure nothing is committed any more
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._watcher: ModelWatcher | None = None
        self._server = MetricsServer(
            self.metrics, self.health, config.metrics_host, config.metrics_port
        )

    # --- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        quiet_ort()
        c = self.config
        log.info(
            "inference: %s -> %s, group %s, providers requested %s",
            c.sensors_topic,
            c.predictions_topic,
            c.group_id,
            choose_providers(c.device),
        )
        self._producer = Producer(self.settings)
        self._consumer = Consumer(self.settings, [c.sensors_topic], c.group_id)
        self._consumer.on_rebalance(RebalanceDrain(self))
        self._watcher = ModelWatcher(self.settings, c.models_topic, self.swapper)
        self._watcher.start()
        self._server.start()

    def close(self, clean: bool = True) -> None:
        """Close everything opened; after a normal end, first answer what waits and commit.

        After an error (``clean=False``) nothing is committed, here or by the revoke that
        closing the consumer triggers: a restart answers from the last good commit.
        """
        try:
            if clean and not self._halted and self._consumer and self._producer:
                self._flush_batches()
                self._commit()
        finally:
            self._halted = self._halted or not clean
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher.join(timeout=10)
            if self._consumer is not None:
                self._consumer.close()
            if self._producer is not None:
                self._producer.close()
            self._server.stop()
            self._consumer = self._producer = self._watcher = None

    def run(self, until: Callable[[], bool] | float | None = None) -> None:
        """Serve in this thread until stop(), ``until()`` is true, or ``until`` seconds pass."""
        end = time.monotonic() + until if isinstance(until, (int, float)) else None
        clean = False
        try:
            self.open()
            while not self._stop.is_set():
                if end is not None and time.monotonic() >= end:
                    break
                if callable(until) and until():
                    break
                self.step()
            clean = True
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.close(clean)

    def start(self) -> InferenceService:
        """Serve on a background thread (tests, `drivestream up` in-process)."""
        self._thread = threading.Thread(target=self._run_logged, name="inference", daemon=True)
        self._thread.start()
        return self

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception("inference service stopped; see .error")

    def request_stop(self) -> None:
        """Ask the loop to finish (signal-handler safe); run() then closes everything."""
        self._stop.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    @property
    def metrics_port(self) -> int:
        return self._server.port

    def health(self) -> dict:
        watcher = self._watcher
        ok = (
            self.error is None
            and time.monotonic() - self._last_loop < 5.0
            and (watcher is None or watcher.error is None)
        )
        return {
            "ok": ok,
            "model_version": self.model.version if self.model else None,
            "provider": self.model.provider if self.model else None,
            "partitions": sorted(p for _, p in self.assigned),
            "vehicles": len(self.history),
        }

    # --- the loop ----------------------------------------------------------------------
    def step(self) -> None:
        """One iteration: maybe swap, poll, enqueue or answer, run a due batch, commit."""
        assert self._consumer is not None and self._producer is not None
        self._mark_loop()
        if self._producer.failures:
            self._check_delivery()
        self._maybe_swap()
        wait = self.batcher.wait_ns(now_ns())
        timeout_ms = 100 if wait is None else wait // MS
        msgs = self._consumer.poll(
            timeout_ms=int(timeout_ms), max_records=self.config.max_poll_records
        )
        for msg in msgs:
            self._handle(msg, now_ns())
        while self.batcher.due(now_ns()):
            self._run_batch(self.batcher.take())
        now = time.monotonic()
        if now - self._last_commit >= self.config.commit_interval_ms / 1000:
            self._commit()
        if now - self._last_lag >= 1.0:
            self._update_lag()

    def _mark_loop(self) -> None:
        """Record how long the previous iteration took if a model build overlapped it."""
        now = time.monotonic()
        started, finished = self.swapper.builds_started, self.swapper.builds_finished
        prev, prev_started, prev_finished = self._loop_mark
        if started != prev_started or prev_started != prev_finished:
            gap_ms = (now - prev) * 1e3
            self.build_loop_gap_ms[started] = max(self.build_loop_gap_ms.get(started, 0.0), gap_ms)
        self._loop_mark = (now, started, finished)
        self._last_loop = now

    def _maybe_swap(self) -> None:
        new = self.swapper.take_ready()
        if new is None:
            return
        t0 = time.perf_counter()
        old, self.model = self.model, new
        self.history.set_spec(new.spec)
        self._cost_ns = {b: ms * MS for b, ms in new.warm_ms.items()}
        if old is not None:
            self.swapper.retire(old)
        pause_s = time.perf_counter() - t0
        self.swap_pauses_ms.append(pause_s * 1e3)
        self.metrics.swap_pause.observe(pause_s)
        self.metrics.model_version.set(new.version)
        self.metrics.set_provider(new.provider)
        self.metrics.swaps.labels(outcome="swapped", reason="").inc()
        self.stats["swaps"] += 1
        log.info(
            "serving %s v%d on %s (was %s)",
            new.name,
            new.version,
            new.provider,
            f"v{old.version}" if old else "fallback",
        )

    def _handle(self, msg: Message, t_consumed: int) -> None:
        """Answer or enqueue every frame of one record; only then is it committable."""
        try:
            t_produce = check_frame_headers(msg.headers)
            frames = decode_frames(msg.value)
        except ValidationError as exc:
            self._dead_letter(msg, str(exc))
        else:
            deadline = t_produce + self._budget_ns
            for f in frames:
                item = Pending(
                    f, None, msg.topic, msg.partition, msg.offset, t_produce, t_consumed, deadline
                )
                self._route(item, self.history.add(f, msg.partition))
        self._next_offset[(msg.topic, msg.partition)] = msg.offset + 1

    def _route(self, item: Pending, status: str) -> None:
        vid, now = item.frame.vehicle_id, item.t_consumed_ns
        if self.model is None:
            self._answer_fallback([item], "no_model")
        elif status == "out_of_order":
            self._answer_fallback([item], "out_of_order")
        elif (why := self.history.unusable(vid)) is not None:  # "warmup" or "gap"
            self._answer_fallback([item], why)
        elif not self._in_time(item, len(self.batcher) + 1, now, self._wait_for(now)):
            self._answer_fallback([item], "late")
        else:
            item.window = self.history.window(vid)
            self.batcher.add(item)

    def _in_time(self, item: Pending, batch: int, now: int, wait_ns: int = 0) -> bool:
        """Can the model still answer this frame within its budget?"""
        shape = self.config.padded(min(batch, self.config.max_batch))
        cost = self._cost_ns.get(shape, 1 * MS)
        return now + wait_ns + cost + self._margin_ns <= item.deadline_ns

    def _wait_for(self, now: int) -> int:
        wait = self.batcher.wait_ns(now)
        return self.batcher.max_wait_ns if wait is None else wait

    def _run_batch(self, items: list[Pending]) -> None:
        if not items:
            return
        model, now = self.model, now_ns()
        if model is None:
            self._answer_fallback(items, "no_model")
            return
        n = len(items)
        late = [not self._in_time(it, n, now) for it in items]
        if any(late):
            self._answer_fallback([it for it, x in zip(items, late, strict=True) if x], "late")
            items = [it for it, x in zip(items, late, strict=True) if not x]
        # a swap changed the window length: only those frames fall back
        short = [it.window is None or it.window.shape[0] != model.spec.history for it in items]
        if any(short):
            self._answer_fallback([it for it, x in zip(items, short, strict=True) if x], "warmup")
            items = [it for it, x in zip(items, short, strict=True) if not x]
        if not items:
            return
        shape = self.config.padded(len(items))
        x = np.zeros((shape, model.spec.history, len(model.spec.features)), np.float32)
        x[: len(items)] = np.stack([it.window for it in items])  # type: ignore[misc]
        t_start = now_ns()
        try:
            out = model.run(x)
        except Exception:
            log.exception("model v%d failed on a batch of %d", model.version, len(items))
            self._answer_fallback(items, "model_error")
            return
        t_end = now_ns()
        self._cost_ns[shape] = 0.8 * self._cost_ns.get(shape, t_end - t_start) + 0.2 * (
            t_end - t_start
        )
        self.metrics.batch_size.observe(len(items))
        horizons = model.spec.horizons_s
        for i, it in enumerate(items):
            if not np.all(np.isfinite(out[i])):
                self._answer_fallback([it], "non_finite")
                continue
            self._publish(
                prediction.Prediction(
                    it.frame.vehicle_id,
                    it.frame.seq,
                    it.frame.t_event_ns,
                    horizons,
                    tuple(out[i, :, 0].tolist()),
                    tuple(out[i, :, 1].tolist()),
                    model.version,
                    model.name,
                    "model",
                    "",
                    it.t_produce_ns,
                    it.t_consumed_ns,
                    t_start,
                    t_end,
                ),
                it.deadline_ns,
            )

    def _answer_fallback(self, items: list[Pending], reason: str) -> None:
        if not items:
            return
        horizons = self.model.spec.horizons_s if self.model else self.history.spec.horizons_s
        t_start = now_ns()
        states = [
            (it.frame.x, it.frame.y, it.frame.speed, it.frame.heading, it.frame.yaw_rate)
            for it in items
        ]
        x, y, v, h, w = np.array(states, dtype=np.float64).T
        out, turning = fallback.predict(x, y, v, h, w, horizons, self.config.cv_yaw_eps)
        t_end = now_ns()
        for i, it in enumerate(items):
            f = it.frame
            p = prediction.Prediction(
                f.vehicle_id,
                f.seq,
                f.t_event_ns,
                horizons,
                tuple(out[i, :, 0].tolist()),
                tuple(out[i, :, 1].tolist()),
                -1,
                fallback.CTRV if turning[i] else fallback.CV,
                "fallback",
                reason,
                it.t_produce_ns,
                it.t_consumed_ns,
                t_start,
                t_end,
            )
            self.metrics.fallbacks.labels(reason=reason).inc()
            self.stats[f"fallback_{reason}"] += 1
            self._publish(p, it.deadline_ns)

    def _publish(self, p: prediction.Prediction, deadline_ns: int) -> None:
        """Stamp t_published_ns right before producing; never flushes.

        Counters here count records handed to the producer; a record that then fails to
        deliver stops the service at the next check (see _check_delivery), uncommitted.
        """
        assert self._producer is not None
        p = p.published(now_ns())
        self._producer.send(
            self.config.predictions_topic,
            prediction.encode_prediction(p),
            key=p.vehicle_id,
            headers=_PRED_HEADERS,
        )
        self.stats[p.source] += 1
        m = self.metrics
        m.by_source[p.source].inc()
        if p.t_published_ns > deadline_ns:
            self.stats["budget_miss"] += 1
            m.budget_misses.labels(source=p.source).inc()
        st = m.stages
        st["kafka_in"].observe(max(0, p.t_consumed_ns - p.t_produce_ns) / 1e9)
        st["queue"].observe((p.t_infer_start_ns - p.t_consumed_ns) / 1e9)
        st["infer"].observe((p.t_infer_end_ns - p.t_infer_start_ns) / 1e9)
        st["publish"].observe((p.t_published_ns - p.t_infer_end_ns) / 1e9)
        st["service"].observe((p.t_published_ns - p.t_consumed_ns) / 1e9)
        st["since_produce"].observe(max(0, p.t_published_ns - p.t_produce_ns) / 1e9)

    def _dead_letter(self, msg: Message, reason: str) -> None:
        assert self._producer is not None
        dl = deadletter.DeadLetter(
            msg.topic,
            msg.partition,
            msg.offset,
            reason,
            "inference",
            msg.value or b"",
            tuple(msg.headers),
        )
        self._producer.send(
            self.config.deadletter_topic,
            deadletter.encode_dead_letter(dl),
            key=msg.key,
            headers=_DL_HEADERS,
        )
        self.stats["deadletter"] += 1
        self.metrics.deadletters.inc()
        log.debug("deadletter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)

    # --- offsets and rebalancing ---------------------------------------------------------
    def _flush_batches(self) -> None:
        while len(self.batcher):
            self._run_batch(self.batcher.take())

    def _due_offsets(self, keys: set[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        """Next offsets to commit: below every frame still waiting, and not yet committed."""
        waiting = self.batcher.first_offsets()
        offsets = {
            k: waiting.get(k, v) for k, v in self._next_offset.items() if keys is None or k in keys
        }
        return {k: v for k, v in offsets.items() if self._committed.get(k) != v}

    def _commit(self) -> None:
        """Flush predictions, make sure all were delivered, then commit what they cover."""
        assert self._consumer is not None
        self._last_commit = time.monotonic()
        offsets = self._due_offsets()
        if not offsets or self._halted:
            return
        self._flush_delivered()
        try:
            self._consumer.commit(offsets)
            self._committed.update(offsets)
        except Exception as exc:  # rebalance in progress: the revoke drain commits instead
            log.warning("offset commit failed (frames may be answered again): %s", exc)

    def _flush_delivered(self) -> None:
        assert self._producer is not None
        self._producer.flush()
        self._check_delivery()

    def _check_delivery(self) -> None:
        """Raise DeliveryError (and never commit again) once any record failed to deliver."""
        assert self._producer is not None
        failures = self._producer.failures
        if not failures:
            return
        self._halted = True
        log.error("%d records not delivered; stopping without committing", failures)
        raise DeliveryError(
            f"{failures} prediction/deadletter records could not be delivered (last error: "
            f"{self._producer.last_error}); offsets after the last commit were not committed. "
            f"Check the broker and topics {self.config.predictions_topic!r}/"
            f"{self.config.deadletter_topic!r}, then restart: those frames are answered again."
        )

    def _consumer_client(self) -> object:
        return self._consumer.client if self._consumer is not None else None

    def _release(self, keys: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Revoke, on the consumer's loop: answer the partitions' waiting frames by fallback,
        flush, and return the offsets the listener must commit (raises DeliveryError)."""
        if self._producer is None or self._halted:
            return {}
        waiting = self.batcher.drop_partitions(keys)
        if waiting:
            self._answer_fallback(waiting, "rebalance")
        offsets = self._due_offsets(keys)
        if offsets:
            self._flush_delivered()
        return offsets

    def _forget(self, keys: set[tuple[str, int]]) -> None:
        """Drop everything about partitions this instance no longer owns."""
        self.batcher.drop_partitions(keys)  # lost partitions: the next owner answers them
        for key in keys:
            self._next_offset.pop(key, None)
            self._committed.pop(key, None)
        dropped = self.history.drop_partitions({p for _, p in keys})
        self.assigned -= keys
        log.info("revoked partitions %s, dropped %d vehicles", sorted(p for _, p in keys), dropped)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        self._last_lag = time.monotonic()
        client = self._consumer.client
        self.metrics.vehicles.set(len(self.history))
        for topic, p in self.assigned:
            tp = TopicPartition(topic, p)
            high = client.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(partition=str(p)).set(max(0, high - client.position(tp)))
