"""The serving loop's bookkeeping without a broker: offsets, failed sends, gaps, rebalance.

The producer and consumer here are in-memory stand-ins for the schemas.kafka wrappers; the
real-broker behaviour is in tests/integration/test_serving.py.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from inference.batching import PROBE_EVERY, Pending
from inference.config import ServeConfig
from inference.errors import DeliveryError
from inference.gate import MODEL, Verdict
from inference.rebalance import RebalanceDrain
from inference.service import InferenceService
from schemas.headers import now_ns
from schemas.kafka import KafkaSettings, Message
from schemas.model_spec import InputSpec
from schemas.prediction import decode_prediction
from schemas.sensor import SensorFrame, encode_frames, frame_headers

TOPIC = "t-sensors"
DT_NS = 100_000_000


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.flushes = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self.fail_on_flush = False
        self.events: list[str] = []
        self.reports: list[BaseException] = []
        """Delivery failures librdkafka has but poll()/flush() have not served yet."""
        self.in_flight = 0
        """Records sent and not yet acknowledged (what undelivered() says)."""

    def send(self, topic, value, key=None, headers=None, partition=None) -> None:
        self.sent.append((topic, value))

    def send_many(self, topic, values, keys, headers=None) -> None:
        for value, key in zip(values, keys, strict=True):
            self.send(topic, value, key, headers)

    def poll(self) -> None:
        for exc in self.reports:
            self.failures += 1
            self.last_error = exc
        self.reports.clear()

    def undelivered(self) -> int:
        return self.in_flight

    def commit_transaction(self, offsets, group_metadata) -> None:
        self.events.append(f"transaction {offsets}")

    def partitions_for(self, topic) -> set[int]:
        return {0, 1, 2, 3}

    def flush(self, timeout_s=None) -> None:
        self.flushes += 1
        self.events.append("flush")
        if self.fail_on_flush:
            self.failures += 1
            self.last_error = RuntimeError("broker said no")

    def close(self) -> None:
        pass

    def predictions(self):
        return [decode_prediction(v) for t, v in self.sent if t.endswith("predictions")]


class FakeConsumer:
    def __init__(self, producer: FakeProducer, batches=()) -> None:
        self.commits: list[dict] = []
        self.batches = list(batches)
        self.producer = producer

    def poll(self, timeout_ms=100, max_records=None) -> list[Message]:
        item = self.batches.pop(0) if self.batches else []
        if isinstance(item, BaseException):
            raise item
        return item

    def lag(self, topic, partition) -> None:
        return None  # unknown, as before a first fetch

    def group_metadata(self) -> object:
        return object()

    def commit(self, offsets, wait=True) -> None:
        self.producer.events.append("commit" if wait else "commit-sent")
        self.commits.append(dict(offsets))

    def close(self) -> None:
        pass


class StubModel:
    """Answers zeros; enough for the loop's routing and batching."""

    version, name, provider = 1, "stub", "CPUExecutionProvider"

    def __init__(self, spec: InputSpec) -> None:
        self.spec, self.warm_ms = spec, {}

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), len(self.spec.horizons_s), 2), np.float32)


def frame(vid: str, seq: int, t_ns: int | None = None) -> SensorFrame:
    t = seq * DT_NS if t_ns is None else t_ns
    return SensorFrame(vid, seq, 10**9 + t, 1.0 * seq, 0.0, 10.0, 0.0, 0.0, 0.0)


def record(offset: int, frames: list[SensorFrame], partition: int = 0) -> Message:
    headers = frame_headers(now_ns())
    return Message(TOPIC, partition, offset, 0, None, encode_frames(frames), list(headers))


def make_service(batches=(), **kw) -> tuple[InferenceService, FakeProducer, FakeConsumer]:
    cfg = ServeConfig(**{"budget_ms": 60_000, "commit_interval_ms": 3_600_000, **kw})
    svc = InferenceService(cfg, KafkaSettings())
    producer = FakeProducer()
    consumer = FakeConsumer(producer, batches)

    def open_() -> None:
        svc.output.producer, svc._consumer = producer, consumer  # type: ignore[assignment]
        svc.assigned = {(TOPIC, 0), (TOPIC, 1)}

    svc.open = open_  # type: ignore[method-assign]
    open_()
    return svc, producer, consumer


def serve(svc: InferenceService, spec: InputSpec) -> None:
    """Serve a stub model that the never-worse gate has judged better than physics."""
    svc.model = StubModel(spec)  # type: ignore[assignment]
    svc.history.set_spec(spec)
    svc.gate._record(Verdict(predictor=MODEL, version=svc.model.version))
    svc._verdict = svc.gate.verdict(svc.model.version)


def test_offset_advances_only_after_every_frame_of_the_record_is_answered() -> None:
    svc, _, _ = make_service()
    calls = 0
    add = svc.history.add

    def add_then_fail(f, partition):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("bug while answering the second frame")
        return add(f, partition)

    svc.history.add = add_then_fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        svc._handle_poll([record(7, [frame("a", 1), frame("a", 2)])])
    assert (TOPIC, 0) not in svc.output.next_offset  # the record is not done: never committable
    svc._handle_poll([record(8, [frame("b", 1)])])
    assert svc.output.next_offset[(TOPIC, 0)] == 9


def test_a_crashed_loop_commits_nothing_on_close() -> None:
    ok = record(0, [frame("a", 1)])
    svc, producer, consumer = make_service(batches=[[ok], RuntimeError("boom")])
    with pytest.raises(RuntimeError, match="boom"):
        svc.run()
    assert len(producer.predictions()) == 1  # answered, but the loop died afterwards
    assert consumer.commits == [] and isinstance(svc.error, RuntimeError)
    assert not svc.health()["ok"]


def test_a_normal_stop_answers_and_commits() -> None:
    ok = record(0, [frame("a", 1)])
    svc, producer, consumer = make_service(batches=[[ok]])
    svc.run(until=lambda: not consumer.batches)
    assert consumer.commits == [{(TOPIC, 0): 1}]
    assert producer.events == ["flush", "commit"]


def test_the_loop_does_not_wait_for_its_commits_but_the_last_one_waits() -> None:
    svc, producer, consumer = make_service(batches=[[record(0, [frame("a", 1)])]])
    svc.step()  # answers record 0
    svc._last_commit -= svc.config.commit_every_s  # an interval has passed
    svc.step()  # everything sent was delivered: the commit needs no flush
    svc.output.done(record(5, [frame("a", 2)]))  # answered after the loop's last commit
    svc.close()
    assert producer.events == ["commit-sent", "flush", "commit"]
    assert consumer.commits == [{(TOPIC, 0): 1}, {(TOPIC, 0): 6}]


def test_the_loop_commits_once_nothing_is_in_flight_and_flushes_only_after_two_intervals() -> None:
    """A commit is due after an interval. While predictions are in flight the loop does not
    flush for it (a flush would stall it for a round trip) but tries again at its next
    iteration; only when the producer stayed busy for another interval does it flush."""
    svc, producer, consumer = make_service(batches=[[record(0, [frame("a", 1)])]])
    svc.step()
    producer.in_flight = 3
    svc._last_commit -= svc.config.commit_every_s
    svc.step()
    assert producer.events == [] and consumer.commits == []  # busy: not yet, and no flush
    producer.in_flight = 0
    svc.step()
    assert producer.events == ["commit-sent"] and consumer.commits == [{(TOPIC, 0): 1}]

    consumer.batches = [[record(1, [frame("a", 2)])]]
    svc.step()
    producer.in_flight = 3
    svc._last_commit -= 2 * svc.config.commit_every_s  # busy for a whole interval more
    svc.step()
    assert producer.events[1:] == ["flush", "commit-sent"]
    assert consumer.commits[1:] == [{(TOPIC, 0): 2}]


def test_a_transaction_commits_in_the_iteration_that_made_its_answers() -> None:
    """Exactly-once answers become visible when their transaction commits: it commits at
    the end of the iteration that published them, not after the next wait."""
    batches = [[record(0, [frame("a", 1)])]]
    svc, producer, _ = make_service(batches, guarantee="exactly-once", transaction_ms=25)
    svc._last_commit -= svc.config.commit_every_s
    svc.step()
    assert producer.events == [f"transaction {{{(TOPIC, 0)!r}: 1}}"]
    assert len(producer.predictions()) == 1


def test_a_commit_without_a_flush_still_stops_at_a_failed_delivery() -> None:
    """Nothing in flight, but a delivery failed: the loop raises instead of committing."""
    svc, producer, consumer = make_service(batches=[[record(0, [frame("a", 1)])]])
    svc.step()
    producer.reports.append(RuntimeError("broker said no"))
    svc._last_commit -= svc.config.commit_every_s
    with pytest.raises(DeliveryError):
        svc.step()
    assert consumer.commits == [] and svc.output.halted


def test_lone_frames_stop_waiting_for_a_batch_once_waits_bring_no_frames() -> None:
    # 50 ms: far longer than one loop iteration takes, even on a loaded CI machine
    svc, producer, consumer = make_service(max_wait_us=50_000)
    serve(svc, InputSpec())
    steps = []  # loop iterations from a frame's poll to its answer
    for seq in range(40):
        consumer.batches = [[record(seq, [frame("a", seq)])]]
        sent, n = len(producer.sent), 0
        while len(producer.sent) == sent:
            svc.step()
            n += 1
        steps.append(n)
    assert steps[:9] == [1] * 9  # warm-up: physics answers at once
    assert steps[9] > 1  # the first model frame waited 50 ms for company that never came
    late = steps[10 + PROBE_EVERY :]
    assert late.count(1) >= len(late) - len(late) // PROBE_EVERY - 1, steps
    assert all(p.source == "model" for p in producer.predictions()[9:])


def test_by_default_a_polls_model_frames_are_answered_in_its_iteration_as_one_batch() -> None:
    """No timed wait by default: frames arriving in pieces (a burst split across fetches)
    are answered piece by piece, each in the loop iteration that polled it."""
    svc, producer, consumer = make_service()
    serve(svc, InputSpec())
    for seq in range(10):  # history, so the model can answer
        consumer.batches = [[record(seq, [frame(v, seq) for v in "abc"])]]
        svc.step()
    runs = []
    svc.answerer.batch = lambda model, items, run=svc.answerer.batch: (  # type: ignore
        runs.append(len(items)),
        run(model, items),
    )
    for piece in (["a"], ["b", "c"]):
        consumer.batches = [[record(10, [frame(v, 10) for v in piece])]]
        sent = len(producer.sent)
        svc.step()
        assert len(producer.sent) == sent + len(piece)
    assert runs == [1, 2]
    assert all(p.source == "model" for p in producer.predictions()[-3:])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_model_answer_with_nan_or_inf_falls_back_for_that_frame_only(bad) -> None:
    svc, producer, consumer = make_service()
    serve(svc, InputSpec())
    for seq in range(10):  # history, so the model can answer
        consumer.batches = [[record(seq, [frame(v, seq) for v in "abc"])]]
        svc.step()
    run = svc.model.run

    def poisoned(x):
        out = run(x)
        if len(out) >= 3:  # the poll's batch, padded (not a lone window the gate scored)
            out[1, -1, 0] = bad  # the second vehicle's last horizon
        return out

    svc.model.run = poisoned  # type: ignore[union-attr]
    consumer.batches = [[record(10, [frame(v, 10) for v in "abc"])]]
    svc.step()
    got = [(p.vehicle_id, p.source, p.reason) for p in producer.predictions()[-3:]]
    assert got == [("a", "model", ""), ("b", "fallback", "non_finite"), ("c", "model", "")]
    assert svc.stats["fallback_non_finite"] == 1


def test_failed_delivery_is_never_committed_and_stops_the_service() -> None:
    svc, producer, consumer = make_service(batches=[[record(0, [frame("a", 1)])]])
    producer.fail_on_flush = True
    svc.step()
    with pytest.raises(DeliveryError, match="could not be delivered"):
        svc._commit()
    assert consumer.commits == []
    with pytest.raises(DeliveryError):
        svc.step()  # the loop stops at its next iteration too
    svc.close(clean=False)
    assert consumer.commits == []


def test_failure_reported_between_flushes_stops_the_next_step() -> None:
    svc, producer, consumer = make_service(batches=[[record(0, [frame("a", 1)])], []])
    svc.step()
    producer.failures, producer.last_error = 1, RuntimeError("timed out")  # errback fired
    with pytest.raises(DeliveryError, match="timed out"):
        svc.step()
    svc._commit()
    assert consumer.commits == []


def test_physics_answers_while_the_gate_finds_the_model_worse_and_the_model_after() -> None:
    svc, producer, _ = make_service()
    serve(svc, InputSpec(history=2))
    for seq in range(2):
        svc._handle_poll([record(seq, [frame("a", seq)])])
    svc._answer_deferred()
    svc._flush_batches()
    verdict = Verdict(
        predictor="cv", physics="cv", reason="physics_better", version=svc.model.version
    )
    svc.gate._record(verdict)
    svc._verdict = svc.gate.verdict(svc.model.version)
    svc._handle_poll([record(2, [frame("a", 2)])])
    svc._flush_batches()
    svc.gate._record(Verdict(predictor=MODEL, version=svc.model.version))
    svc._verdict = svc.gate.verdict(svc.model.version)
    svc._handle_poll([record(3, [frame("a", 3)])])
    svc._flush_batches()
    answers = [(p.seq, p.source, p.reason, p.model_name) for p in producer.predictions()]
    assert answers[1:] == [
        (1, "model", "", "stub"),
        (2, "fallback", "physics_better", "cv"),  # the gate's choice of physics, and why
        (3, "model", "", "stub"),
    ]


def test_window_wider_than_the_models_max_gap_falls_back_with_reason_gap() -> None:
    def feed(svc: InferenceService) -> list[str]:
        times = [i * DT_NS for i in range(10)] + [
            9 * DT_NS + 500_000_000 + i * DT_NS for i in range(12)
        ]
        for seq, t in enumerate(times):
            svc._handle_poll([record(seq, [frame("a", seq, t)])])
            svc._answer_deferred()  # what step() does after each poll
        return [p.reason for p in producer.predictions()]

    svc, producer, _ = make_service()
    serve(svc, InputSpec(max_gap_s=0.35))
    reasons = feed(svc)
    assert reasons[:9] == ["warmup"] * 9
    assert reasons[9:] == ["gap"] * 9  # the 0.5 s gap stays in the window for 9 frames
    assert len(svc.batcher) == 1 + 3  # before the gap, and once it slid out

    svc, producer, _ = make_service()
    serve(svc, InputSpec(max_gap_s=1.0))  # a model trained on wider gaps takes them
    assert "gap" not in feed(svc)


def test_only_mismatched_windows_of_a_batch_fall_back() -> None:
    svc, producer, _ = make_service()
    spec = InputSpec()
    serve(svc, spec)
    deadline = now_ns() + 60 * 10**9
    items = [
        Pending.of(
            frame(v, 1), np.zeros((n, 7), np.float32), TOPIC, 0, i, now_ns(), now_ns(), deadline
        )
        for i, (v, n) in enumerate([("a", 10), ("b", 5), ("c", 10)])
    ]
    svc._run_batch(items)
    got = {p.vehicle_id: (p.source, p.reason) for p in producer.predictions()}
    assert got == {"a": ("model", ""), "b": ("fallback", "warmup"), "c": ("model", "")}


def _waiting(svc: InferenceService, partition: int, offset: int, vid: str) -> None:
    deadline = now_ns() + 60 * 10**9
    win = np.zeros((10, 7), np.float32)
    svc.batcher.add(
        Pending.of(frame(vid, 1), win, TOPIC, partition, offset, now_ns(), now_ns(), deadline)
    )
    svc.output.next_offset[(TOPIC, partition)] = offset + 1


def test_revoke_answers_flushes_and_commits_inside_the_listener() -> None:
    svc, producer, consumer = make_service()
    serve(svc, InputSpec())
    _waiting(svc, 0, 41, "a")
    _waiting(svc, 1, 7, "b")
    svc.history.add_frame(frame("a", 1), 0)

    RebalanceDrain(svc).on_revoked({(TOPIC, 0)})

    preds = producer.predictions()
    assert [(p.vehicle_id, p.source, p.reason) for p in preds] == [("a", "fallback", "rebalance")]
    assert producer.events == ["flush", "commit"] and consumer.commits == [{(TOPIC, 0): 42}]
    assert [it.origin.partition for it in svc.batcher.drain()] == [1]  # partition 1 keeps waiting
    assert svc.assigned == {(TOPIC, 1)} and len(svc.history) == 0
    assert (TOPIC, 0) not in svc.output.next_offset


def test_revoke_commits_again_what_the_loop_only_sent() -> None:
    svc, producer, consumer = make_service(batches=[[record(0, [frame("a", 1)])]])
    svc.step()
    svc._last_commit -= svc.config.commit_every_s
    svc.step()  # the loop sends {0: 1} without waiting; the broker may yet refuse it
    RebalanceDrain(svc).on_revoked({(TOPIC, 0)})
    assert producer.events == ["commit-sent", "flush", "commit"]
    assert consumer.commits == [{(TOPIC, 0): 1}] * 2


def test_revoke_after_a_failed_send_commits_nothing_and_says_so(caplog) -> None:
    svc, producer, consumer = make_service()
    _waiting(svc, 0, 3, "a")
    producer.fail_on_flush = True

    with caplog.at_level(logging.WARNING):
        RebalanceDrain(svc).on_revoked({(TOPIC, 0)})
    assert "not drained" in caplog.text and consumer.commits == []
    with pytest.raises(DeliveryError):
        svc.step()


def test_lost_partitions_are_dropped_unanswered() -> None:
    svc, producer, _ = make_service()
    _waiting(svc, 0, 3, "a")
    RebalanceDrain(svc).on_lost({(TOPIC, 0)})
    assert producer.sent == [] and len(svc.batcher) == 0 and svc.output.next_offset == {}


def test_stale_frames_of_one_poll_are_answered_together_in_arrival_order() -> None:
    """Overload: every frame is already past its budget when consumed. They all get the
    fallback ("late") from one vectorised run per poll, not one run per frame."""
    vehicles = ("a", "b", "c", "d")
    frames = [frame(v, seq) for seq in range(10, 22) for v in vehicles]
    batch = [record(i, [f], partition=i % 2) for i, f in enumerate(frames)]
    svc, producer, _ = make_service([batch], budget_ms=1e-6)
    serve(svc, InputSpec(history=10))
    for seq in range(10):  # full windows: only lateness makes these frames fall back
        for v in vehicles:
            svc.history.add_frame(frame(v, seq), 0)
    runs: list[tuple[str, int]] = []
    fallback = svc.answerer.fallback

    def counting(items, reason, horizons, physics):
        runs.append((reason, len(items)))
        fallback(items, reason, horizons, physics)

    svc.answerer.fallback = counting  # type: ignore[method-assign]
    svc.step()
    preds = producer.predictions()
    assert [(p.vehicle_id, p.seq) for p in preds] == [(f.vehicle_id, f.seq) for f in frames]
    assert {(p.source, p.reason) for p in preds} == {("fallback", "late")}
    assert runs == [("late", len(frames))]
    assert svc.output.next_offset == {(TOPIC, 0): len(frames) - 1, (TOPIC, 1): len(frames)}


def test_a_failed_delivery_stops_the_loop_even_while_no_frames_arrive() -> None:
    svc, producer, consumer = make_service()
    svc.step()  # idle: nothing polled, nothing due
    producer.reports.append(RuntimeError("MSG_TIMED_OUT"))  # reported after the last send
    with pytest.raises(DeliveryError, match="MSG_TIMED_OUT"):
        svc.step()
    assert consumer.commits == [] and svc.output.halted


def test_records_of_a_partition_revoked_inside_the_poll_are_left_to_the_new_owner() -> None:
    """librdkafka may hand back a record fetched before its partition was revoked within the
    same poll: answering it would put the partition back in the offset ledger and commit
    for a partition another instance owns."""
    gone = record(5, [frame("z", 1)], partition=2)  # (TOPIC, 2) is not assigned here
    mine = record(9, [frame("a", 1)], partition=0)
    svc, producer, _ = make_service([[gone, mine]])
    svc.step()
    assert [(p.vehicle_id, p.seq) for p in producer.predictions()] == [("a", 1)]
    assert svc.output.next_offset == {(TOPIC, 0): 10}


def test_an_implausible_frame_goes_to_deadletter_and_the_vehicle_keeps_being_served() -> None:
    svc, producer, _ = make_service()
    serve(svc, InputSpec(history=2))
    svc._handle_poll([record(0, [frame("a", 0)])])
    svc._handle_poll([record(1, [frame("a", 1, 10**18)])])  # stamped ~2000 years ahead
    svc._handle_poll([record(2, [frame("a", 2)])])
    svc._flush_batches()
    dead = [v for t, v in producer.sent if t.endswith("deadletter")]
    assert len(dead) == 1 and b"implausible_time_jump" in dead[0]
    answers = [(p.seq, p.source) for p in producer.predictions()]
    assert answers == [(0, "fallback"), (2, "model")]  # not 'out_of_order' for ever after


def test_a_swap_publishes_how_fresh_the_serving_models_training_is() -> None:
    import re

    from tests.model_fixtures import cv_onnx, envelope, trusting_test_key

    svc, _, _ = make_service()
    svc.swapper.configure_trust(trusting_test_key())
    env = envelope(cv_onnx(), 1)
    assert svc.swapper.offer(env) is not None
    svc._maybe_swap()
    text = svc.metrics.render().decode()
    got = re.search(r"^drivestream_inference_model_trained_until_seconds (\S+)$", text, re.M)
    assert got is not None and abs(float(got.group(1)) - env.trained_until_ns / 1e9) < 1e-3
