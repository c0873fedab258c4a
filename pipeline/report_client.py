"""The measuring client: consumes ``predictions`` (and ``sensors`` for ground truth) live,
stamps when each prediction arrives, and turns what it saw into the report."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.report import (
    Received,
    TruthTracks,
    accuracy_summary,
    latency_summary,
    percentiles_ms,
    version_summary,
)
from schemas.config import setting
from schemas.errors import CodecError, ConfigError, ValidationError
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Message
from schemas.prediction import check_prediction_headers, decode_prediction
from schemas.sensor import SensorFrame, decode_frames
from schemas.topics import TopicNames

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """What to measure and where to write it."""

    bootstrap: str = setting("127.0.0.1:9092", "Kafka host:port list")
    topic_prefix: str = setting("", "prefix of every topic name")
    from_beginning: bool = setting(
        False, "read the topics from the start (latency then includes the wait)"
    )
    duration_s: float = setting(0.0, "stop after this long (0 = no limit)")
    idle_timeout_s: float = setting(15.0, "stop after this long without a prediction")
    expect: int = setting(0, "stop after this many predictions (0 = any)")
    budget_ms: float = setting(50.0, "latency budget per frame")
    truth: str = setting("", "Parquet ground-truth tracks (vehicle_id,t_event_ns,x,y)")
    out_dir: str = setting("drivestream-report", "where to write")
    plots: bool = setting(True, "write PNG plots")

    def __post_init__(self) -> None:
        if self.budget_ms <= 0:
            raise ConfigError(f"budget_ms must be > 0, got {self.budget_ms}")
        if self.truth and not Path(self.truth).exists():
            raise ConfigError(f"truth file {self.truth} does not exist")


class ReportClient:
    """Collects predictions and frames; ``build()`` writes and returns the report."""

    def __init__(self, config: ReportConfig, settings: KafkaSettings) -> None:
        self.config = config
        self.names = TopicNames(config.topic_prefix)
        self._settings = settings
        self.received: list[Received] = []
        self.frames: dict[tuple[str, int], SensorFrame] = {}
        self.undecodable = 0
        self.invalid_frames = 0
        self._recent: deque[int] = deque(maxlen=2000)
        self._lock = threading.Lock()
        self._predictions: Consumer | None = None
        self._sensors: Consumer | None = None

    def _consumer(self, topic: str) -> Consumer:
        consumer = Consumer(self._settings, client_id="drivestream-report")
        parts = sorted(consumer.wait_partitions(topic, timeout_s=10))
        start = None
        if not self.config.from_beginning:
            start = {p: consumer.watermarks(topic, p)[1] for p in parts}
        consumer.assign(topic, parts, start)
        return consumer

    def open(self) -> None:
        self._predictions = self._consumer(self.names.predictions)
        self._sensors = self._consumer(self.names.sensors)

    def close(self) -> None:
        for consumer in (self._predictions, self._sensors):
            if consumer is not None:
                consumer.close()

    def poll(self, timeout_ms: int = 50) -> int:
        """Take what has arrived; returns the number of predictions received."""
        assert self._predictions is not None and self._sensors is not None, "call open() first"
        messages = self._predictions.poll(timeout_ms=timeout_ms)
        t_received = now_ns()
        got = 0
        for m in messages:
            try:
                p = decode_prediction(m.value, check_prediction_headers(m.headers))
            except (CodecError, ValidationError):
                self.undecodable += 1
                continue
            with self._lock:
                self.received.append(Received(p, t_received))
                self._recent.append(t_received - p.t_produce_ns)
            got += 1
        self._take_frames(self._sensors.poll(timeout_ms=0))
        return got

    def _take_frames(self, messages: list[Message]) -> None:
        for m in messages:
            try:
                frames = decode_frames(m.value)
            except (CodecError, ValidationError):
                self.invalid_frames += 1  # dead-lettered by the service: nothing to answer
                continue
            for f in frames:
                self.frames[(f.vehicle_id, f.seq)] = f

    def answered(self) -> set[tuple[str, int]]:
        """(vehicle_id, seq) of every frame that got at least one prediction."""
        with self._lock:
            return {(r.prediction.vehicle_id, r.prediction.seq) for r in self.received}

    def catch_up_frames(self, timeout_s: float = 10.0) -> None:
        """Read ``sensors`` up to its current end so every answered frame can be scored."""
        assert self._sensors is not None, "call open() first"
        end = self._sensors.end_offsets()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._sensors.reached(end):
            self._take_frames(self._sensors.poll(timeout_ms=100))

    def run(self, stop: threading.Event | None = None) -> None:
        """Poll until duration, expected count, idleness or ``stop``."""
        stop = stop or threading.Event()
        start = last = time.monotonic()
        cfg = self.config
        while not stop.is_set():
            if self.poll():
                last = time.monotonic()
            now = time.monotonic()
            if cfg.duration_s and now - start >= cfg.duration_s:
                break
            if cfg.expect and len(self.received) >= cfg.expect:
                break
            if cfg.idle_timeout_s and now - last >= cfg.idle_timeout_s:
                break
        self.catch_up_frames()

    def live(self) -> dict[str, Any]:
        """Counters for a status line: predictions, recent p50/p99 and fallback share."""
        with self._lock:
            recent = list(self._recent)
            tail = self.received[-2000:]
        pct = percentiles_ms(recent)
        fallback = sum(r.prediction.source == "fallback" for r in tail) / max(len(tail), 1)
        version = max((r.prediction.model_version for r in tail), default=-1)
        return {
            "predictions": len(self.received),
            "p50_ms": pct.get("p50", float("nan")),
            "p99_ms": pct.get("p99", float("nan")),
            "fallback_share": fallback,
            "model_version": version,
        }

    def truth(self) -> TruthTracks:
        if self.config.truth:
            table = pq.read_table(self.config.truth, columns=["vehicle_id", "t_event_ns", "x", "y"])
            cols = [table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names]
            return TruthTracks.from_points(zip(*cols, strict=True))
        return TruthTracks.from_points(
            (f.vehicle_id, f.t_event_ns, f.x, f.y) for f in self.frames.values()
        )

    def build(self) -> dict[str, Any]:
        """The report as a dict; also written to out_dir (JSON, PNGs) when out_dir is set."""
        with self._lock:
            received = list(self.received)
        answered = self.answered()
        report: dict[str, Any] = {
            "latency": latency_summary(received, self.config.budget_ms),
            "models": version_summary(received),
            # At-least-once delivery may repeat an answer: score each frame once (the last).
            "accuracy": accuracy_summary(
                list({(r.prediction.vehicle_id, r.prediction.seq): r for r in received}.values()),
                self.frames,
                self.truth(),
            ),
            "truth_source": self.config.truth or "sensor positions (noisy GNSS)",
            "undecodable_predictions": self.undecodable,
            "frames_seen": len(self.frames),
            "invalid_frames": self.invalid_frames,
            "frames_unanswered": len(self.frames.keys() - answered),
            "duplicates": len(received) - len(answered),
        }
        if self.config.out_dir:
            from pipeline.report_output import write_report

            write_report(report, received, Path(self.config.out_dir), self.config.plots)
        return report
