"""Replayer against an in-memory producer: order, stamps, loops, batching, pacing, stop."""

from __future__ import annotations

import io
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ingest.replayer import ReplayConfig, Replayer
from ingest.schedule import make_plan, parse_speed
from ingest.simulator import SimConfig, simulate
from schemas.errors import ConfigError
from schemas.headers import now_ns
from schemas.sensor import check_frame_headers, decode_frames, table_to_frames


@dataclass
class FakeProducer:
    """Records what a real producer would send; no broker involved (unit tests only)."""

    partitions: set[int] = field(default_factory=lambda: {0, 1, 2, 3})
    fail_every: int = 0
    sent: list[tuple[str, bytes, bytes, list]] = field(default_factory=list)
    flushes: int = 0
    failures: int = 0

    def partitions_for(self, topic: str) -> set[int]:
        return self.partitions

    def send(
        self, topic: str, value: bytes, key: Any = None, headers: Any = None, partition: Any = None
    ) -> None:
        self.sent.append((topic, value, key, headers))
        if self.fail_every and len(self.sent) % self.fail_every == 0:
            self.failures += 1  # what a delivery report of a rejected record does

    def flush(self, timeout_s: float | None = None) -> None:
        self.flushes += 1


@pytest.fixture(scope="module")
def log() -> pa.Table:
    table, _ = simulate(SimConfig(vehicles=4, duration_s=6.0, seed=2))
    return table


def quiet(**kw: Any) -> ReplayConfig:
    return ReplayConfig(progress=False, **kw)


def test_max_speed_sends_every_frame_once_in_vehicle_order_with_stamps(log: pa.Table) -> None:
    producer = FakeProducer()
    summary = Replayer(log, quiet(speed="max", topic="s"), producer=producer).run()
    assert summary.frames_sent == summary.records_sent == log.num_rows
    assert summary.lag_p50_ms is None and summary.errors == 0 and summary.laps == 1
    assert producer.flushes == 1
    got = defaultdict(list)
    stamps = []
    for topic, value, key, headers in producer.sent:
        assert topic == "s"
        (frame,) = decode_frames(value)
        assert key == frame.vehicle_id.encode()
        stamps.append(check_frame_headers(headers))
        got[frame.vehicle_id].append(frame)
    assert stamps == sorted(stamps)
    expected = defaultdict(list)
    for f in table_to_frames(log):
        expected[f.vehicle_id].append(f)
    assert got == expected  # same frames, each vehicle in seq order


def test_batches_hold_consecutive_frames_of_one_vehicle(log: pa.Table) -> None:
    producer = FakeProducer()
    summary = Replayer(log, quiet(speed="max", batch=3), producer=producer).run()
    assert summary.frames_sent == log.num_rows
    assert summary.records_sent == sum(-(-n // 3) for n in _counts(log).values())
    last_seq: dict[str, int] = {}
    for _, value, key, _ in producer.sent:
        frames = decode_frames(value)
        assert 1 <= len(frames) <= 3 and {f.vehicle_id.encode() for f in frames} == {key}
        for f in frames:
            assert f.seq == last_seq.get(f.vehicle_id, -1) + 1
            last_seq[f.vehicle_id] = f.seq


def _counts(log: pa.Table) -> dict[str, int]:
    vid, n = np.unique(np.array(log["vehicle_id"].to_pylist()), return_counts=True)
    return dict(zip(vid, n, strict=True))


def test_loop_shifts_seq_and_time_so_they_keep_increasing(log: pa.Table) -> None:
    producer = FakeProducer()
    limit = int(log.num_rows * 2.5)
    summary = Replayer(
        log, quiet(speed="max", loop=True, max_frames=limit), producer=producer
    ).run()
    assert summary.frames_sent == limit and summary.laps == 3
    per: dict[str, list] = defaultdict(list)
    for _, value, _, _ in producer.sent:
        for f in decode_frames(value):
            per[f.vehicle_id].append((f.seq, f.t_event_ns))
    for frames in per.values():
        seqs, times = np.array(frames).T
        assert (np.diff(seqs) > 0).all() and (np.diff(times) > 0).all()
        gaps = np.diff(times) / 1e9
        assert gaps.max() < 0.5  # the lap seam looks like one more frame interval


def test_fixed_rate_never_sends_early_and_records_lag(log: pa.Table) -> None:
    producer = FakeProducer()
    cfg = quiet(rate=400.0, max_frames=60)
    replayer = Replayer(log, cfg, producer=producer)
    before = now_ns()
    summary = replayer.run()
    assert summary.frames_sent == 60
    assert summary.lag_p50_ms is not None and summary.lag_p99_ms is not None
    assert summary.lag_p50_ms >= 0 and summary.lag_max_ms >= summary.lag_p99_ms
    stamps = [check_frame_headers(h) for *_, h in producer.sent]
    assert stamps == sorted(stamps)
    assert (stamps[-1] - before) / 1e9 >= 59 / 400  # the last frame is not sent before due
    assert "frames/s" in summary.describe()


def test_speed_factor_follows_event_time(log: pa.Table) -> None:
    one = log.filter(pa.array(np.array(log["vehicle_id"].to_pylist()) == "sim-000")).slice(0, 11)
    producer = FakeProducer()
    replayer = Replayer(one, quiet(speed="20"), producer=producer)
    before = now_ns()
    summary = replayer.run()
    assert summary.frames_sent == 11
    t_event = one["t_event_ns"].to_numpy()
    stamps = [check_frame_headers(h) for *_, h in producer.sent]
    assert stamps[-1] - before >= (t_event[-1] - t_event[0]) / 20


def test_stop_from_another_thread_flushes_and_reports(log: pa.Table) -> None:
    producer = FakeProducer()
    replayer = Replayer(log, quiet(rate=200.0, loop=True), producer=producer)
    threading.Timer(0.2, replayer.stop).start()
    summary = replayer.run()
    assert summary.interrupted and producer.flushes == 1
    assert 0 < summary.frames_sent < 200  # stopped long before the (endless) loop would


def test_send_errors_are_counted_not_fatal(log: pa.Table) -> None:
    producer = FakeProducer(fail_every=10)
    summary = Replayer(log, quiet(speed="max"), producer=producer).run()
    assert summary.frames_sent == log.num_rows
    assert summary.errors == log.num_rows // 10


def test_progress_line_on_the_given_stream(log: pa.Table) -> None:
    out = io.StringIO()
    Replayer(
        log, ReplayConfig(rate=150.0, max_frames=60), producer=FakeProducer(), progress_stream=out
    ).run()
    text = out.getvalue()
    assert text.startswith("\rreplay: ") and "frames/s" in text and "lag p50" in text
    assert text.endswith("\n")


def test_refuses_missing_topic_and_bad_settings(log: pa.Table) -> None:
    with pytest.raises(ConfigError, match="topics"):
        Replayer(log, quiet(), producer=FakeProducer(partitions=set())).run()
    with pytest.raises(ConfigError, match="speed"):
        ReplayConfig(speed="fast")
    with pytest.raises(ConfigError, match="speed"):
        ReplayConfig(speed="0")
    with pytest.raises(ConfigError, match="rate"):
        ReplayConfig(rate=0.0)
    with pytest.raises(ConfigError, match="batch"):
        ReplayConfig(batch=0)
    with pytest.raises(ConfigError, match="empty"):
        make_plan(log.slice(0, 0))
    assert parse_speed("MAX") == float("inf") and parse_speed("2.5") == 2.5


def test_plan_orders_records_by_due_time(log: pa.Table) -> None:
    plan = make_plan(log)
    assert plan.frames == log.num_rows and len(plan.rows) == log.num_rows
    assert (np.diff(plan.t_event_due_ns) >= 0).all() and plan.t_event_due_ns[0] == 0
    assert plan.seq_stride == max(log["seq"].to_pylist()) + 1
