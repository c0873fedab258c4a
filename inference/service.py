"""The serving loop: consume frames, batch, infer or fall back, publish, commit.

Delivery is at-least-once: offsets are committed only after the predictions of every
frame below them were sent and the producer flushed (on the commit interval, on revoke and
on close). A crash between publish and commit re-answers those frames after restart, so a
consumer of `predictions` may see a (vehicle_id, seq) twice and should keep the last.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

from inference import fallback
from inference.batching import MicroBatcher, Pending
from inference.config import ServeConfig
from inference.history import HistoryStore
from inference.metrics import MetricsServer, ServeMetrics
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
REVOKE_WAIT_S = 10.0
_PRED_HEADERS = prediction.prediction_headers()
_DL_HEADERS = deadletter.dead_letter_headers()


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: hands revocation to the serving thread and waits.

    The serving thread answers everything waiting, flushes and commits while this
    coroutine sleeps, so the group is still stable and the next owner starts exactly
    after the last answered frame.
    """

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in revoked}
        if not keys:
            return
        done = self.service._request_revoke(keys)
        net = getattr(getattr(self.service._consumer_client(), "_coordinator", None), "_net", None)
        deadline = time.monotonic() + REVOKE_WAIT_S
        while not done.is_set() and time.monotonic() < deadline:
            if net is None:  # a kafka-python without the loop's sleep: poll from here
                done.wait(0.002)
            else:
                await net.sleep(0.002)
        if not done.is_set():
            log.warning(
                "revoke of %s not drained in %.0fs; frames may be answered twice",
                sorted(p for _, p in keys),
                REVOKE_WAIT_S,
            )

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.service.assigned = {(tp.topic, tp.partition) for tp in assigned}
        log.info("assigned partitions %s", sorted(p for _, p in self.service.assigned))


class InferenceService:
    """One serving instance; several with the same group_id split the partitions."""

    def __init__(self, config: ServeConfig, settings: KafkaSettings | None = None) -> None:
        self.config = config
        self.settings = settings or KafkaSettings.from_env(bootstrap=config.bootstrap)
        self.metrics = ServeMetrics()
        self.history = HistoryStore(
            DEFAULT_SPEC, gap_s=config.history_gap_s, truth_capacity=config.truth_capacity
        )
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
        self._budget_ns = int(config.budget_ms * MS)
        self._margin_ns = int(config.safety_margin_ms * MS)
        self._cost_ns: dict[int, float] = {}
        self._next_offset: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._last_commit = self._last_lag = time.monotonic()
        self._last_loop = time.monotonic()
        self._stop = threading.Event()
        self._closing = False
        self._revoke: tuple[set[tuple[str, int]], threading.Event] | None = None
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
        self._consumer.on_rebalance(_Rebalance(self))
        self._watcher = ModelWatcher(self.settings, c.models_topic, self.swapper)
        self._watcher.start()
        self._server.start()

    def close(self) -> None:
        """Answer what waits, flush, commit, then close everything opened."""
        try:
            if self._consumer is not None and self._producer is not None:
                self._serve_revoke()
                self._flush_batches()
                self._commit(force=True)
                self._closing = True
        finally:
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
        self.open()
        try:
            while not self._stop.is_set():
                if end is not None and time.monotonic() >= end:
                    break
                if callable(until) and until():
                    break
                self.step()
        finally:
            self.close()

    def start(self) -> InferenceService:
        """Serve on a background thread (tests, `drivestream up` in-process)."""
        self._thread = threading.Thread(target=self.run, name="inference", daemon=True)
        self._thread.start()
        return self

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
        ok = time.monotonic() - self._last_loop < 5.0 and (watcher is None or watcher.error is None)
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
        assert self._consumer is not None
        self._last_loop = time.monotonic()
        self._serve_revoke()
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
        self._serve_revoke()
        now = time.monotonic()
        if now - self._last_commit >= self.config.commit_interval_ms / 1000:
            self._commit()
        if now - self._last_lag >= 1.0:
            self._update_lag()

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
        key = (msg.topic, msg.partition)
        self._next_offset[key] = msg.offset + 1
        try:
            t_produce = check_frame_headers(msg.headers)
            frames = decode_frames(msg.value)
        except ValidationError as exc:
            self._dead_letter(msg, str(exc))
            return
        deadline = t_produce + self._budget_ns
        for f in frames:
            status = self.history.add(f, msg.partition)
            item = Pending(
                f, None, msg.topic, msg.partition, msg.offset, t_produce, t_consumed, deadline
            )
            if self.model is None:
                self._answer_fallback([item], "no_model")
            elif status == "out_of_order":
                self._answer_fallback([item], "out_of_order")
            elif (window := self.history.window(f.vehicle_id)) is None:
                self._answer_fallback([item], "warmup")
            elif not self._in_time(
                item, len(self.batcher) + 1, t_consumed, self._wait_for(t_consumed)
            ):
                self._answer_fallback([item], "late")
            else:
                item.window = window
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
        late = [it for it in items if not self._in_time(it, n, now)]
        if late:
            self._answer_fallback(late, "late")
            items = [it for it in items if self._in_time(it, n, now)]
            if not items:
                return
        if any(it.window is None or it.window.shape[0] != model.spec.history for it in items):
            self._answer_fallback(items, "warmup")  # a swap changed the window length
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
        horizons = self.model.spec.horizons_s if self.model else self.history.spec.horizons_s
        for it in items:
            f = it.frame
            t_start = now_ns()
            name, xs, ys = fallback.predict_one(
                f.x, f.y, f.speed, f.heading, f.yaw_rate, horizons, self.config.cv_yaw_eps
            )
            p = prediction.Prediction(
                f.vehicle_id,
                f.seq,
                f.t_event_ns,
                horizons,
                xs,
                ys,
                -1,
                name,
                "fallback",
                reason,
                it.t_produce_ns,
                it.t_consumed_ns,
                t_start,
                now_ns(),
            )
            self.metrics.fallbacks.labels(reason=reason).inc()
            self.stats[f"fallback_{reason}"] += 1
            self._publish(p, it.deadline_ns)

    def _publish(self, p: prediction.Prediction, deadline_ns: int) -> None:
        """Stamp t_published_ns right before producing; never flushes."""
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

    def _commit(self, force: bool = False) -> None:
        """Flush predictions, then commit offsets below every frame still waiting."""
        assert self._consumer is not None and self._producer is not None
        self._last_commit = time.monotonic()
        waiting = self.batcher.first_offsets()
        offsets = {
            k: waiting.get(k, v)
            for k, v in self._next_offset.items()
            if k in self.assigned or force
        }
        offsets = {k: v for k, v in offsets.items() if self._committed.get(k) != v}
        if not offsets:
            return
        self._producer.flush()
        try:
            self._consumer.commit(offsets)
            self._committed.update(offsets)
        except Exception as exc:  # rebalance in progress: the next owner re-answers
            log.warning("offset commit failed (frames may be answered again): %s", exc)

    def _consumer_client(self) -> object:
        return self._consumer.client if self._consumer is not None else None

    def _request_revoke(self, keys: set[tuple[str, int]]) -> threading.Event:
        """Called from the IO thread; the serving thread acts on it at its next step."""
        done = threading.Event()
        if self._closing:  # close() already answered, flushed and committed everything
            done.set()
            return done
        self._revoke = (keys, done)
        return done

    def _serve_revoke(self) -> None:
        """Answer everything waiting, commit, and forget revoked vehicles' history."""
        request, self._revoke = self._revoke, None
        if request is None:
            return
        revoked, done = request
        try:
            self._flush_batches()
            self._commit(force=True)
            for key in revoked:
                self._next_offset.pop(key, None)
                self._committed.pop(key, None)
            dropped = self.history.drop_partitions({p for _, p in revoked})
            self.assigned -= revoked
            log.info(
                "revoked partitions %s, dropped %d vehicles", sorted(p for _, p in revoked), dropped
            )
        finally:
            done.set()

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
