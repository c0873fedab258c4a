"""Hostile input through the functions serving uses: every record is answered or becomes a
dead letter that fits, and nothing escapes the serving loop (issue 11)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections import Counter

import confluent_kafka
import pytest

from inference.batching import Pending
from inference.config import ServeConfig
from inference.metrics import ServeMetrics
from inference.output import Output
from schemas import deadletter, headers
from schemas.deadletter import DeadLetter, decode_dead_letter, encode_dead_letter
from schemas.errors import CodecError, SchemaVersionError, ValidationError
from schemas.headers import now_ns, stamp
from schemas.kafka import KafkaSettings, Message, ProduceError, Producer, headers_of
from schemas.sensor import (
    SensorFrame,
    check_frame_headers,
    decode_frames,
    encode_frames,
    frame_headers,
)
from tests.unit.test_inference_service import TOPIC, FakeProducer, make_service

SCHEMA_TAG = (headers.SCHEMA, b"sensor_frame/1")
GOOD = SensorFrame("car-1", 1, 10**9, 1.0, 2.0, 10.0, 0.0, 0.0, 0.0)


class RecordingProducer(FakeProducer):
    """Keeps key and headers too, and can refuse records over a size like a broker."""

    def __init__(self, refuse_over: int | None = None, on_failure=None) -> None:
        super().__init__()
        self.records: list[tuple[str, bytes, bytes | None, list]] = []
        self.refuse_over, self.on_failure = refuse_over, on_failure

    def send(self, topic, value, key=None, headers=None, partition=None) -> None:
        size = len(value) + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers or [])
        if self.refuse_over is not None and size > self.refuse_over:
            err = ProduceError(
                "MSG_SIZE_TOO_LARGE: Broker: Message size too large", "MSG_SIZE_TOO_LARGE"
            )
            if self.on_failure(err, Message(topic, 0, -1, 0, key, value, headers or [])):
                return
            self.failures += 1
            return
        super().send(topic, value, key, headers, partition)
        self.records.append((topic, value, key, list(headers or [])))

    def dead_letters(self) -> list[tuple[DeadLetter, bytes | None, dict[str, bytes | None]]]:
        return [
            (decode_dead_letter(v), k, dict(h))
            for t, v, k, h in self.records
            if t.endswith("deadletter")
        ]


def serving(**kw):
    svc, _, _ = make_service(**kw)
    producer = RecordingProducer()
    svc.output.producer = producer  # type: ignore[assignment]
    return svc, producer


def msg(value: bytes, hdrs: list, offset: int = 0, key: bytes | None = b"car-1") -> Message:
    return Message(TOPIC, 0, offset, 0, key, value, hdrs)


def handle(svc, *messages: Message) -> None:
    """What one serving-loop step does with polled records."""
    svc._handle_poll(list(messages))
    svc._answer_deferred()
    svc._flush_batches()


def test_a_null_header_value_on_a_bad_record_is_a_dead_letter_that_keeps_it() -> None:
    svc, producer = serving()
    bad = encode_frames([SensorFrame("car-1", 1, 10**9, 0.0, 0.0, -3.0, 0.0, 0.0, 0.0)])
    handle(svc, msg(bad, [*frame_headers(now_ns()), ("trace-id", None)]))
    [(d, _, hdrs)] = producer.dead_letters()
    assert "speed" in d.reason and ("trace-id", None) in d.raw_headers
    assert hdrs[deadletter.CONNECT_EXCEPTION] == b"schemas.errors.ValidationError"
    assert svc.output.next_offset == {(TOPIC, 0): 1}


@pytest.mark.parametrize(
    ("hdrs", "why"),
    [
        ([(headers.SCHEMA, None), (headers.T_PRODUCE_NS, stamp(1))], "null"),
        ([SCHEMA_TAG, (headers.T_PRODUCE_NS, None)], "null"),
        ([SCHEMA_TAG, (headers.T_PRODUCE_NS, stamp(2**63 - 1))], "plausible"),
        ([SCHEMA_TAG, (headers.T_PRODUCE_NS, stamp(-1))], "plausible"),
        ([SCHEMA_TAG, (headers.T_PRODUCE_NS, stamp(now_ns() + 2 * 86_400 * 10**9))], "plausible"),
        ([SCHEMA_TAG, (headers.T_PRODUCE_NS, b"\xff" * 300_000)], "8 bytes"),
        ([(headers.SCHEMA, b"\xff\xfe" * 10_000), (headers.T_PRODUCE_NS, stamp(1))], "unknown"),
        ([SCHEMA_TAG, *frame_headers(now_ns())[1:], (headers.T_PRODUCE_NS, stamp(5))], "several"),
        ([(headers.UNREADABLE, b"SystemError: key not UTF-8")], "UTF-8"),
    ],
    ids=[
        "null-schema",
        "null-stamp",
        "int64-max",
        "negative",
        "future",
        "huge",
        "bad-utf8",
        "conflicting-duplicates",
        "unreadable",
    ],
)
def test_hostile_headers_on_a_valid_frame_become_header_dead_letters(hdrs, why) -> None:
    svc, producer = serving()
    handle(
        svc,
        msg(encode_frames([GOOD]), hdrs),
        msg(encode_frames([GOOD]), frame_headers(now_ns()), 1),
    )
    [(d, _, connect)] = producer.dead_letters()
    assert why in d.reason
    assert connect[deadletter.CONNECT_STAGE] == b"HEADER_CONVERTER"
    assert (
        connect[deadletter.CONNECT_OFFSET] == b"0"
        and connect[deadletter.CONNECT_TOPIC] == TOPIC.encode()
    )
    assert [p.seq for p in producer.predictions()] == [1]  # the good frame is still answered
    assert svc.output.next_offset == {(TOPIC, 0): 2}


def test_identical_duplicate_headers_are_read_and_the_frame_answered() -> None:
    svc, producer = serving()
    hdrs = frame_headers(now_ns())
    handle(svc, msg(encode_frames([GOOD]), [*hdrs, *hdrs]))
    assert producer.dead_letters() == [] and len(producer.predictions()) == 1


@pytest.mark.parametrize("field", ["x", "speed", "heading", "yaw_rate", "accel"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e308])
def test_nan_inf_and_huge_numbers_in_a_frame_are_dead_letters(field, value) -> None:
    svc, producer = serving()
    frame = dataclasses.replace(GOOD, **{field: value})
    handle(svc, msg(encode_frames([frame]), frame_headers(now_ns())))
    [(d, _, _)] = producer.dead_letters()
    assert field in d.reason and producer.predictions() == []


def test_int64_edge_event_times_are_answered_or_dead_lettered() -> None:
    svc, producer = serving()
    frames = [dataclasses.replace(GOOD, seq=s, t_event_ns=t) for s, t in ((1, 2**63 - 1), (2, 0))]
    for i, f in enumerate(frames):
        handle(svc, msg(encode_frames([f]), frame_headers(now_ns()), offset=i))
    assert len(producer.predictions()) + len(producer.dead_letters()) == 2


def test_output_never_overflows_on_stamps_that_passed_validation_or_not() -> None:
    out = Output(ServeConfig(), ServeMetrics(), Counter())
    from inference.output import Answer, _columns

    limit = now_ns() + headers.MAX_FUTURE_NS
    items = [
        Pending.of(GOOD, None, TOPIC, 0, 0, t, now_ns(), t + 10**18) for t in (0, limit, 2**63 - 1)
    ]
    answer = Answer((1.0,), 1, ["cv"] * 3, "fallback", "no_model", now_ns(), now_ns())
    cols, misses = _columns(items, answer, now_ns())  # no OverflowError
    assert cols.shape == (3, 7) and cols[:, 2].tolist() == [0, limit, 2**63 - 1]
    assert misses == 1  # the first: its deadline (10**18) passed; the third's is past int64
    out._account(cols[:, 2:], misses, answer.source)
    assert out.stats["budget_miss"] == 1


def test_huge_value_and_header_are_cut_to_fit_with_sizes_and_sha256() -> None:
    svc, producer = serving()
    value, big = b"\x01" * 500_000, b"h" * 300_000
    handle(svc, msg(value, [(headers.SCHEMA, b"nope/1"), ("big", big)], key=b"k" * 5000))
    [(d, key, _)] = producer.dead_letters()
    [(_, raw, _, sent_headers)] = producer.records
    record = deadletter.DeadLetterRecord(raw, key, sent_headers)
    assert record.size <= svc.config.max_deadletter_bytes and key is None
    o = d.original
    assert o is not None and o.value_size == 500_000 and o.key_size == 5000
    assert o.value_sha256 == hashlib.sha256(value).hexdigest()
    assert o.key_sha256 == hashlib.sha256(b"k" * 5000).hexdigest()
    assert o.headers_count == 2 and o.headers_size == len(headers.SCHEMA) + 6 + 3 + len(big)
    assert value.startswith(d.raw_value) and len(d.raw_value) > 100_000
    assert dict(d.raw_headers)[headers.SCHEMA] == b"nope/1"
    assert big.startswith(dict(d.raw_headers).get("big") or b"")
    assert svc.stats["deadletter_cut"] == 1


def test_a_value_close_to_the_broker_limit_fits_every_configured_limit() -> None:
    d = deadletter.of_record(
        TOPIC, 3, 9, b"\x00" * 1_048_000, [("k", None)], "r" * 10_000, "inference"
    )
    for limit in (deadletter.MIN_BYTES, 100_000, deadletter.MAX_BYTES, 1_000_000):
        record = deadletter.dead_letter_record(d, b"key", limit)
        back = decode_dead_letter(record.value)
        assert record.size <= limit and back.original is not None
        assert back.original.value_size == 1_048_000 and len(back.reason) <= 1000


def test_a_dead_letter_refused_for_size_is_replaced_by_a_minimal_one() -> None:
    out = Output(ServeConfig(topic_prefix="t-"), ServeMetrics(), Counter())
    producer = RecordingProducer(refuse_over=2_000, on_failure=out._refused)
    out.producer = producer  # type: ignore[assignment]
    out.dead_letter(msg(b"v" * 10_000, [("h", b"x" * 100)]), "bad")
    [(d, _, connect)] = producer.dead_letters()
    assert d.raw_value == b"" and d.original is not None and d.original.value_size == 10_000
    assert d.original.value_sha256 == hashlib.sha256(b"v" * 10_000).hexdigest()
    assert producer.failures == 0 and out.stats["deadletter_minimal"] == 1
    assert connect[deadletter.CONNECT_MESSAGE] == b"bad"
    # a refused minimal one is a real failure: counted (the service then stops, uncommitted)
    tiny = RecordingProducer(refuse_over=10, on_failure=out._refused)
    out.producer = tiny  # type: ignore[assignment]
    out.dead_letter(msg(b"v", []), "bad")
    assert tiny.failures == 1


def test_unreadable_client_headers_become_one_marker_header() -> None:
    class Broken:
        def headers(self):
            raise SystemError("returned a result with an exception set")

    [(key, why)] = headers_of(Broken())  # type: ignore[arg-type]
    assert key == headers.UNREADABLE and b"SystemError" in why
    with pytest.raises(CodecError, match="UTF-8"):
        check_frame_headers([(key, why)])


def test_header_readers_are_total() -> None:
    assert headers.get([("a", None)], "a") is None
    assert headers.get([("a", b"1"), ("a", b"1")], "a") == b"1"
    with pytest.raises(CodecError):
        headers.get([("a", b"1"), ("a", b"2")], "a")
    with pytest.raises(SchemaVersionError):
        headers.check_schema([(headers.SCHEMA, "sensor_frame/2")], "sensor_frame", 1)  # type: ignore[list-item]
    assert headers.read_stamp([("junk",), (b"k", 1)], headers.T_PRODUCE_NS) is None  # type: ignore[list-item]


def test_v1_dead_letters_still_decode() -> None:
    from schemas.binary import pack_meta_blob

    meta = {"source_topic": "s", "partition": 1, "offset": 2, "reason": "r", "stage": "inference"}
    d = decode_dead_letter(pack_meta_blob({**meta, "headers": [["k", "00ff"]]}, b"raw"))
    assert d.raw_headers == (("k", b"\x00\xff"),) and d.exception == "" and d.original is None
    deadletter.check_dead_letter_headers([(headers.SCHEMA, b"dead_letter/1")])
    deadletter.check_dead_letter_headers(deadletter.dead_letter_headers(d))


# --- fuzz -------------------------------------------------------------------------------

KEYS = [headers.SCHEMA, headers.T_PRODUCE_NS, headers.UNREADABLE, "trace-id", "", "ключ", "k" * 300]


def _random_value(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.3:  # a real record, maybe damaged
        raw = bytearray(encode_frames([GOOD] * rng.randint(1, 3)))
        for _ in range(rng.randint(0, 3)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw[: rng.randint(0, len(raw))] if rng.random() < 0.2 else raw)
    if kind < 0.35:
        return rng.randbytes(rng.randint(200_000, 600_000))
    return rng.randbytes(rng.randint(0, 120))


def _random_headers(rng: random.Random) -> list:
    out = list(frame_headers(now_ns())) if rng.random() < 0.5 else []
    for _ in range(rng.choice([0, 0, rng.randint(0, 5)])):
        key = rng.choice(KEYS)
        value = rng.choice(
            [
                None,
                b"sensor_frame/1",
                stamp(now_ns()),
                stamp(rng.randint(-(2**63), 2**63 - 1)),
                rng.randbytes(rng.randint(0, 16)),
                rng.randbytes(rng.randint(100_000, 300_000)) if rng.random() < 0.05 else b"",
            ]
        )
        out.append((key, value))
    return out


def test_fuzz_random_records_never_escape_and_every_dead_letter_fits() -> None:
    rng = random.Random(11)
    limit = 64 * 1024
    svc, producer = serving(max_deadletter_bytes=limit)
    n, bad, good_frames = 3000, set(), 0
    for offset in range(n):
        key = rng.choice([None, b"k", rng.randbytes(3000)])
        m = msg(_random_value(rng), _random_headers(rng), offset, key=key)
        try:  # what serving should decide, for the assertions below
            check_frame_headers(m.headers)
            good_frames += len(decode_frames(m.value))
        except ValidationError:
            bad.add(offset)
        svc._handle_poll([m])
        if offset % 50 == 0:
            svc._answer_deferred()
    svc._flush_batches()
    dead = [(v, k, h) for t, v, k, h in producer.records if t.endswith("deadletter")]
    for value, key, hdrs in dead:
        assert deadletter.DeadLetterRecord(value, key, hdrs).size <= limit
        d = decode_dead_letter(value)
        assert d.reason and dict(hdrs)[deadletter.CONNECT_MESSAGE]
        assert encode_dead_letter(d) == value  # what it wrote, it reads back
    dead_offsets = Counter(decode_dead_letter(v).offset for v, _, _ in dead)
    assert bad <= set(dead_offsets)
    frames_dead = sum(c for o, c in dead_offsets.items() if o not in bad)  # implausible frames
    assert len(producer.predictions()) + frames_dead == good_frames > 0
    assert svc.output.next_offset == {(TOPIC, 0): n}


def test_a_resend_from_the_failure_handler_never_polls_inside_the_callback() -> None:
    # confluent-kafka aborts the process on a poll() nested in the poll() serving a callback
    class Client:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def produce(self, *args, **kwargs) -> None:
            self.calls.append("produce")

        def poll(self, timeout: float) -> None:
            self.calls.append("poll")

    class Refused:
        def topic(self) -> str:
            return "t-deadletter"

        def partition(self) -> int:
            return 0

        def key(self) -> None:
            return None

        def value(self) -> bytes:
            return b"big"

        def headers(self) -> list:
            return [("h", None)]

    seen: list[Message] = []

    def resend(exc: ProduceError, record: Message) -> bool:
        seen.append(record)
        producer.send("t-deadletter", b"small")
        return exc.too_large

    producer = Producer(KafkaSettings(), on_failure=resend)
    producer._producer = client = Client()  # type: ignore[assignment]
    producer._on_delivery(
        confluent_kafka.KafkaError(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE), Refused()
    )
    assert client.calls == ["produce"] and producer.failures == 0
    assert seen[0].headers == [("h", None)] and seen[0].value == b"big"
    producer._on_delivery(
        confluent_kafka.KafkaError(confluent_kafka.KafkaError._MSG_TIMED_OUT), Refused()
    )
    assert producer.failures == 1  # not a size refusal: counted
