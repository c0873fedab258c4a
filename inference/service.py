"""The serving loop: consume frames, route them to the batcher or the fallback, commit.

This module wires the pieces and runs the loop: :mod:`inference.answer` answers frames (model
or fallback), :mod:`inference.output` publishes and keeps the offsets, and
:mod:`inference.swap` builds new models off the loop.

Delivery is at-least-once: offsets are committed (on the commit interval, on revoke and on
a normal close) only once every frame below them was answered and delivered; a failed
delivery stops the service with :class:`DeliveryError` and commits nothing more, since a
restart resumes from the last commit and answers those frames again. A crash between publish
and commit also re-answers frames after restart, so a consumer of `predictions` may see a
(vehicle_id, seq) twice and should keep the last. A rebalance does not: the revoked
partitions are drained and committed inside the listener (see inference.rebalance).
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable

from inference.answer import Answerer
from inference.batching import MicroBatcher, Origin, Pending
from inference.config import ServeConfig
from inference.gate import MODEL, GatePolicy, PredictorGate, Verdict
from inference.history import HistoryStore
from inference.metrics import MetricsServer, ServeMetrics
from inference.output import Output
from inference.rebalance import RebalanceDrain
from inference.runtime import LoadedModel, choose_providers, quiet_ort
from inference.scheduling import request_slice
from inference.swap import ModelDeadLetters, ModelSwapper, ModelWatcher
from inference.validate import ValidationPolicy
from schemas.errors import ValidationError
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Message
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor_columns import FrameColumns, check_frame_headers_many, decode_columns

log = logging.getLogger(__name__)

MS = 1_000_000
IDLE_POLL_MS = 100
"""Longest poll while nothing waits in the batcher."""
NS_PER_S = 1e9


def settle_heap() -> None:
    """Keep what start-up made out of the cyclic collector's full passes.

    Modules, classes and functions (~70,000 objects in serve) are never garbage, yet each
    full pass walked them: ~40 ms of CPU on the serving loop every 10-20 s at 10,000
    frames/s, every frame behind it late, and steady serving makes no cycles for a pass to
    find (BENCHMARKS.md). Start-up's own cycles are collected first; objects made later are
    collected as before.
    """
    gc.collect()
    gc.freeze()


class InferenceService:
    """One serving instance; several with the same group_id split the partitions."""

    def __init__(self, config: ServeConfig, settings: KafkaSettings | None = None) -> None:
        self.config = config
        self.settings = settings or KafkaSettings.from_env(bootstrap=config.bootstrap)
        self.metrics = ServeMetrics()
        self.history = HistoryStore(
            DEFAULT_SPEC,
            truth_capacity=config.truth_capacity,
            truth_every=config.truth_every,
            # no more truth than the ring keeps over the gate's window: the rest is never used
            truth_per_s=config.truth_capacity / config.gate_window_s,
        )
        policy = ValidationPolicy(
            device=config.device,
            intra_op_threads=config.intra_op_threads,
            batch_shapes=config.batch_shapes,
            tolerance=config.accuracy_tolerance,
            min_truth_samples=config.min_truth_samples,
            yaw_eps=config.cv_yaw_eps,
        )
        gate_policy = GatePolicy(
            window_s=config.gate_window_s,
            min_samples=config.gate_min_samples,
            rejoin_margin=config.gate_rejoin_margin,
            yaw_eps=config.cv_yaw_eps,
        )
        self.gate = PredictorGate(
            gate_policy,
            self.history.scored_truth,
            lambda: self.history.spec.horizons_s,
            self.metrics,
            score=self.history.score_awaiting,
        )
        self.swapper = ModelSwapper(
            policy,
            lambda: self.history.truth(config.gate_window_s),
            self.metrics,
            config.model_name,
            self.gate if config.gate else None,
        )
        self._verdict: Verdict = (
            self.gate.verdict(-1) if config.gate else Verdict(predictor=MODEL, version=-1)
        )
        """Who answers what the model could, per the gate; refreshed once per poll."""
        self.batcher = MicroBatcher(config.max_batch, config.max_wait_us * 1000)
        self.model: LoadedModel | None = None
        self.assigned: set[tuple[str, int]] = set()
        self.stats: Counter[str] = Counter()
        self.swap_pauses_ms: list[float] = []
        self.build_loop_gap_ms: dict[int, float] = {}
        """Longest serving-loop iteration that overlapped model build n (1-based)."""
        self.error: BaseException | None = None
        self.output = Output(config, self.metrics, self.stats)
        self.answerer = Answerer(config, self.metrics, self.stats, self.output)
        self._budget_ns = int(config.budget_ms * MS)
        self._deferred: list[tuple[Pending, str]] = []
        """Frames of the current poll to answer by fallback, with the reason."""
        self._last_commit = self._last_lag = time.monotonic()
        every = config.commit_every_s
        self._commit_idle_s, self._commit_flush_s = (
            (math.inf, every) if config.exactly_once else (every, 2 * every)
        )
        """How long after the last commit the loop commits right after a wait, if nothing
        is in flight; and at the end of an iteration, flushing for it. A transaction
        commits at the end of the iteration that made its answers, so they show at once."""
        self._last_loop = time.monotonic()
        self._loop_mark = (self._last_loop, 0, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._watcher: ModelWatcher | None = None
        self._server = MetricsServer(
            self.metrics, self.health, config.metrics_host, config.metrics_port
        )

    # --- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        quiet_ort()
        c = self.config
        if c.sched_slice_us:  # before the clients start their threads: they inherit it
            request_slice(c.sched_slice_us)
        log.info(
            "inference: %s -> %s, group %s, providers requested %s",
            c.sensors_topic,
            c.predictions_topic,
            c.group_id,
            choose_providers(c.device),
        )
        self.output.open(self.settings)
        self._consumer = Consumer(
            self.settings,
            [c.sensors_topic],
            c.group_id,
            session_timeout_ms=c.session_timeout_ms,
            heartbeat_interval_ms=max(100, c.session_timeout_ms // 5),
            **({"group_instance_id": c.instance_id} if c.instance_id else {}),
        )
        self._consumer.on_rebalance(RebalanceDrain(self))
        self._consumer.on_commit_failed(self.output.commit_refused)
        self._consumer.wait_partitions(c.sensors_topic)  # first call joins: topic must exist
        dead_letters = ModelDeadLetters(
            self.settings, c.deadletter_topic, c.max_deadletter_bytes, self.metrics
        )
        self._watcher = ModelWatcher(self.settings, c.models_topic, self.swapper, dead_letters)
        self._watcher.start()
        self._server.start()
        settle_heap()

    def close(self, clean: bool = True) -> None:
        """Close everything opened; after a normal end, first answer what waits and commit.

        After an error (``clean=False``) nothing is committed, here or by the revoke that
        closing the consumer triggers: a restart answers from the last good commit.
        """
        try:
            if clean and not self.output.halted and self._consumer and self.output.producer:
                try:
                    self._flush_batches()
                    self._commit(wait=True)
                except BaseException:
                    clean = False  # frames were taken but maybe not answered: commit nothing
                    raise
        finally:
            if not clean:
                self.output.halt()
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher.join(timeout=10)
            if self._consumer is not None:
                self._consumer.close()  # its revoke drain may still publish: producer after
            self.output.close()
            self._server.stop()
            self._consumer = self._watcher = None

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
        """One iteration: maybe swap, poll, maybe commit, enqueue or answer, run due
        batches, label ground truth.

        What it does besides handling frames costs a few microseconds: an idle service
        wakes ten times a second, and a lone frame costs two iterations (its poll, and the
        wait for its batch), never a spin.
        """
        assert self._consumer is not None and self.output.producer is not None
        self._mark_loop()
        self.output.check_delivery()
        self._maybe_swap()
        version = self.model.version if self.model else -1
        if self.config.gate:
            self._verdict = self.gate.verdict(version)
        elif self._verdict.version != version:
            self._verdict = Verdict(predictor=MODEL, version=version)
        msgs = self._poll()
        if time.monotonic() - self._last_commit >= self._commit_idle_s:
            # right after a wait, when what earlier batches sent is usually delivered: such
            # a commit needs no flush, which would stall the loop for a round trip
            self._commit(unless_busy=True)
        if msgs:
            self._handle_poll(msgs)
            if self._deferred:
                self._answer_deferred()
        while self.batcher.due(now_ns()):
            self._run_batch(self.batcher.take())
        self.history.label_due()  # after answering: labels never delay an answer
        now = time.monotonic()
        if now - self._last_commit >= self._commit_flush_s:
            self._commit()
        if now - self._last_lag >= 1.0:
            self._update_lag()

    def _poll(self) -> list[Message]:
        """Wait for records no longer than the waiting batch may wait.

        librdkafka waits in whole milliseconds: a batch due in less than one is slept for,
        then what arrived meanwhile is taken without waiting (it joins that batch), so the
        loop never spins on empty polls. Whether a wait brought frames is told to the
        batcher, which stops making new batches wait while waits bring none.
        """
        assert self._consumer is not None
        limit = self.config.max_poll_records
        wait = self.batcher.wait_ns(now_ns())
        if wait is not None and 0 < wait < MS:
            time.sleep(wait / NS_PER_S)
            msgs = self._consumer.poll(timeout_ms=0, max_records=limit)
        else:
            timeout_ms = IDLE_POLL_MS if wait is None else wait // MS
            if self.config.exactly_once:  # answers become visible at the next commit: keep it
                timeout_ms = min(timeout_ms, self.config.transaction_ms)
            msgs = self._consumer.poll(timeout_ms=int(timeout_ms), max_records=limit)
        if wait:
            self.batcher.waited(bool(msgs))
        return msgs

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
        self.answerer.reset_costs(new.warm_ms)
        if old is not None:
            self.swapper.retire(old)
        pause_s = time.perf_counter() - t0
        self.swap_pauses_ms.append(pause_s * 1e3)
        self.metrics.swap_pause.observe(pause_s)
        self.metrics.model_version.set(new.version)
        self.metrics.model_trained_until.set(new.envelope.trained_until_ns / 1e9)
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

    def _handle_poll(self, msgs: list[Message]) -> None:
        """Answer or enqueue every frame of a poll's records, decoded all at once."""
        mine = [m for m in msgs if (m.topic, m.partition) in self.assigned]
        # others were fetched before their partition was revoked inside this poll; the new
        # owner answers them from the offset committed on revoke
        if not mine:
            return
        stamps, header_errors = check_frame_headers_many([m.headers for m in mine])
        frames = decode_columns([m.value for m in mine])
        self.history.begin(frames)
        try:
            for r, msg in enumerate(mine):
                error = header_errors[r] or frames.errors[r]  # as if checked in this order
                self._handle(msg, frames, r, stamps[r], error)
        finally:
            self.history.end()  # windows and ground truth of the whole poll at once

    def _handle(
        self,
        msg: Message,
        frames: FrameColumns,
        r: int,
        t_produce: int,
        error: ValidationError | None,
    ) -> None:
        """Answer or enqueue every frame of record ``r`` (dead-letter it if ``error``);
        only then is it committable."""
        t_consumed = now_ns()
        if error is not None:
            self.output.dead_letter(msg, str(error), error)
            self.output.done(msg)
            return
        deadline = t_produce + self._budget_ns
        origin = Origin(msg.topic, msg.partition, msg.offset, t_produce, t_consumed, deadline)
        vids, seqs, times = frames.vehicle_id, frames.seq, frames.t_event_ns
        for i in range(frames.bounds[r], frames.bounds[r + 1]):
            status = self.history.add(i, msg.partition)
            if status.startswith("implausible"):  # kept out of history: never answered
                why = ValidationError("t_event_ns/seq/x/y", status)
                self.output.dead_letter(msg, f"frame {vids[i]!r} seq {seqs[i]}: {why}", why)
                continue
            self._route(Pending(vids[i], seqs[i], times[i], frames, i, None, 0, origin), status)
        self.output.done(msg)

    def _route(self, item: Pending, status: str) -> None:
        vid, now = item.vehicle_id, item.origin.t_consumed_ns
        if self.model is None:
            self._deferred.append((item, "no_model"))
        elif status == "out_of_order":
            self._deferred.append((item, "out_of_order"))
        elif (why := self.history.unusable(vid)) is not None:  # "warmup" or "gap"
            self._deferred.append((item, why))
        elif self._verdict.predictor != MODEL:  # "unproven" or "physics_better"
            self._deferred.append((item, self._verdict.reason))
        elif not self.answerer.in_time(item, len(self.batcher) + 1, now, self._wait_for(now)):
            self._deferred.append((item, "late"))
        else:
            item.window, item.row = self.history.reserve(vid)
            self.batcher.add(item)

    def _answer_deferred(self) -> None:
        """Answer the fallback frames of this poll, in arrival order, one run per reason.

        Under overload nearly every frame is late: answering them together costs one
        vectorised fallback and one accounting per poll instead of per frame, so the stale
        path is the cheapest path and the service catches up instead of falling further
        behind. Nothing polls or commits while frames wait here.
        """
        deferred, self._deferred = self._deferred, []
        for reason, run in itertools.groupby(deferred, key=lambda d: d[1]):
            self._answer_fallback([it for it, _ in run], reason)

    def _wait_for(self, now: int) -> int:
        wait = self.batcher.wait_ns(now)
        return self.batcher.max_wait_ns if wait is None else wait

    def _run_batch(self, items: list[Pending]) -> None:
        if not items:
            return
        if self.model is None:
            self._answer_fallback(items, "no_model")
        else:
            self.answerer.batch(self.model, items)

    def _answer_fallback(self, items: list[Pending], reason: str) -> None:
        horizons = self.model.spec.horizons_s if self.model else self.history.spec.horizons_s
        self.answerer.fallback(items, reason, horizons, self._verdict.physics)

    # --- offsets and rebalancing ---------------------------------------------------------
    def _flush_batches(self) -> None:
        self._answer_deferred()
        while len(self.batcher):
            self._run_batch(self.batcher.take())

    def _commit(self, wait: bool = False, unless_busy: bool = False) -> None:
        """Commit what the delivered predictions cover (see Output.commit): the loop does
        not wait for the broker's answer, the last commit at close does. ``unless_busy``:
        only if nothing sent is still in flight (else the next iteration tries again)."""
        assert self._consumer is not None
        waiting = self.batcher.first_offsets()
        if self.output.commit(self._consumer, waiting, wait, unless_busy):
            self._last_commit = time.monotonic()

    def _commit_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit offsets the revoke drain released (on this thread, inside poll/close)."""
        assert self._consumer is not None
        self.output.commit_offsets(self._consumer, offsets)

    def _release(self, keys: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Revoke, inside poll()/close(): answer the partitions' waiting frames by fallback,
        flush, and return the offsets the listener must commit (raises DeliveryError)."""
        if self.output.producer is None or self.output.halted:
            return {}
        waiting = self.batcher.drop_partitions(keys)
        if waiting:
            self._answer_fallback(waiting, "rebalance")
        # again: the loop's last commit was only sent, and a commit during a rebalance may
        # be refused; the next owner must start after everything answered here
        offsets = self.output.due(self.batcher.first_offsets(), keys, again=True)
        if offsets:
            self.output.flush_delivered()
        return offsets

    def _forget(self, keys: set[tuple[str, int]]) -> None:
        """Drop everything about partitions this instance no longer owns."""
        self.batcher.drop_partitions(keys)  # lost partitions: the next owner answers them
        self.output.forget(keys)
        dropped = self.history.drop_partitions({p for _, p in keys})
        self.assigned -= keys
        log.info("revoked partitions %s, dropped %d vehicles", sorted(p for _, p in keys), dropped)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        self._last_lag = time.monotonic()
        self.metrics.vehicles.set(len(self.history))
        for topic, p in self.assigned:
            lag = self._consumer.lag(topic, p)
            if lag is not None:
                self.metrics.lag.labels(partition=str(p)).set(lag)
