"""Replay a sensor log into the ``sensors`` topic on an open-loop schedule.

Records go out when due whatever the broker does (open loop: a slow broker shows up as
send errors or buffer growth, never as a slower schedule). Each vehicle's frames keep
their order; the key is the vehicle id so a vehicle stays on one partition. The produce
stamp is taken just before each send. ``Replayer.run()`` returns a :class:`ReplaySummary`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import pyarrow as pa

from ingest.schedule import LagStats, Pacer, make_plan, parse_speed
from schemas import topics
from schemas.config import setting
from schemas.errors import ConfigError
from schemas.headers import Headers, now_ns
from schemas.kafka import KafkaSettings, Producer
from schemas.sensor import SensorFrame, encode_frames, frame_headers, table_to_frames

log = logging.getLogger(__name__)

#: How long before the first due time the clock starts, so frame 0 is not born late.
START_LEAD_NS = 20_000_000


class ProducerLike(Protocol):
    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = ...,
        headers: Headers | None = ...,
        partition: int | None = ...,
    ) -> Any: ...

    def flush(self, timeout_s: float | None = None) -> None: ...

    failures: int
    """Records the broker did not accept (counted as deliveries report back)."""

    def partitions_for(self, topic: str) -> set[int]: ...


@dataclass(frozen=True, kw_only=True)
class ReplayConfig:
    """How to replay: pace, looping, batching and reporting."""

    topic: str = setting(topics.SENSORS, "topic to produce to")
    speed: str = setting("1", "replay speed factor (1 = real time) or 'max'")
    rate: float | None = setting(None, "fixed total frames/s (overrides --speed)")
    loop: bool = setting(False, "start over at the end (seq/t shifted)")
    batch: int = setting(1, "frames of one vehicle per record")
    max_frames: int | None = setting(None, "stop after this many frames")
    progress: bool = setting(True, "live progress line on stderr")
    spin_us: int = setting(300, "busy-wait this long before each due")

    def __post_init__(self) -> None:
        parse_speed(self.speed)
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate must be > 0 frames/s, got {self.rate}")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.spin_us < 0:
            raise ConfigError(f"spin_us must be >= 0, got {self.spin_us}")
        if not self.topic:
            raise ConfigError("topic must be non-empty")

    @property
    def paced(self) -> bool:
        return self.rate is not None or parse_speed(self.speed) != float("inf")


@dataclass(frozen=True, kw_only=True)
class ReplaySummary:
    """What a replay did. Lags are None at ``--speed max`` (nothing is due)."""

    frames_sent: int
    records_sent: int
    duration_s: float
    achieved_rate: float
    """Frames per second between the first and the last send."""
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_max_ms: float | None
    errors: int
    laps: int
    interrupted: bool

    def describe(self) -> str:
        lag = (
            f"schedule lag p50 {self.lag_p50_ms:.3f} ms, p99 {self.lag_p99_ms:.3f} ms, "
            f"max {self.lag_max_ms:.3f} ms"
            if self.lag_p50_ms is not None
            and self.lag_p99_ms is not None
            and self.lag_max_ms is not None
            else "unpaced (no schedule lag)"
        )
        state = " (interrupted)" if self.interrupted else ""
        return (
            f"sent {self.frames_sent} frames in {self.records_sent} records over "
            f"{self.duration_s:.2f} s{state}: {self.achieved_rate:.0f} frames/s, {lag}, "
            f"{self.errors} errors, {self.laps} lap(s)"
        )


class Replayer:
    """Replays one sensor log table; ``stop()`` (any thread) ends it after the current send."""

    def __init__(
        self,
        log_table: pa.Table,
        config: ReplayConfig | None = None,
        *,
        settings: KafkaSettings | None = None,
        producer: ProducerLike | None = None,
        progress_stream: TextIO | None = None,
    ) -> None:
        self.config = config or ReplayConfig()
        self._plan = make_plan(log_table, self.config.batch)
        self._frames = table_to_frames(log_table)
        self._settings = settings
        self._producer = producer
        self._stream = progress_stream or sys.stderr
        self._pacer = Pacer(self.config.spin_us * 1000)
        self._errors = 0
        """Sends that raised; delivery failures are the producer's ``failures``."""

    def stop(self) -> None:
        self._pacer.stop.set()

    @property
    def stopping(self) -> bool:
        return self._pacer.stop.is_set()

    def _offsets(self) -> tuple[list[int], int]:
        """Due offsets (ns) of each record in a lap, and the length of a lap (ns)."""
        plan, cfg = self._plan, self.config
        if cfg.rate is not None:
            per = 1e9 / cfg.rate
            return [int(f * per) for f in plan.frames_before], int(plan.frames * per)
        speed = parse_speed(cfg.speed)
        if speed == float("inf"):
            return [0] * len(plan.rows), 0
        return [int(d / speed) for d in plan.t_event_due_ns], int(plan.lap_span_ns / speed)

    def _frames_of(self, k: int, lap: int) -> list[SensorFrame]:
        frames = [self._frames[i] for i in self._plan.rows[k]]
        if lap == 0:
            return frames
        ds, dt = lap * self._plan.seq_stride, lap * self._plan.lap_span_ns
        return [
            dataclasses.replace(f, seq=f.seq + ds, t_event_ns=f.t_event_ns + dt) for f in frames
        ]

    def run(self) -> ReplaySummary:
        """Replay until the log ends (or forever with ``loop``), ``max_frames`` or ``stop()``."""
        owned = None
        producer = self._producer
        if producer is None:
            # connected before the schedule starts, so the first frames are not held back
            owned = producer = Producer(self._settings or KafkaSettings.from_env()).connect()
        try:
            if not producer.partitions_for(self.config.topic):
                raise ConfigError(
                    f"topic {self.config.topic!r} has no partitions on the broker; "
                    "create it with `drivestream topics`"
                )
            return self._loop(producer)
        finally:
            if owned is not None:
                owned.close()

    def _loop(self, producer: ProducerLike) -> ReplaySummary:
        cfg, plan = self.config, self._plan
        offsets, lap_ns = self._offsets()
        paced = cfg.paced
        limit = cfg.max_frames or (plan.frames if not cfg.loop else None)
        keys = {v: v.encode() for v in {f.vehicle_id for f in self._frames}}
        lags = LagStats()
        progress = _Progress(self._stream, lags) if cfg.progress else None
        frames_sent = records = laps = 0
        first = last = 0
        interrupted = False
        start = time.perf_counter_ns() + START_LEAD_NS
        try:
            lap = 0
            while not self.stopping and (limit is None or frames_sent < limit):
                base = start + lap * lap_ns
                for k in range(len(plan.rows)):
                    frames = self._frames_of(k, lap)
                    if limit is not None and frames_sent + len(frames) > limit:
                        frames = frames[: limit - frames_sent]
                    value = encode_frames(frames)
                    vid = frames[0].vehicle_id
                    due = base + offsets[k]
                    if paced:
                        self._pacer.wait_until(due)
                    if self.stopping:
                        break
                    sent_at = time.perf_counter_ns()
                    try:
                        producer.send(
                            cfg.topic, value, key=keys[vid], headers=frame_headers(now_ns())
                        )
                    except Exception as exc:  # open loop: count and keep the schedule
                        log.warning("send failed: %s", exc)
                        self._errors += 1
                    if paced:
                        lags.add(sent_at - due)
                    first = first or sent_at
                    last = sent_at
                    frames_sent += len(frames)
                    records += 1
                    if progress is not None:
                        progress.maybe_show(sent_at, frames_sent, self._errors + producer.failures)
                    if limit is not None and frames_sent >= limit:
                        break
                lap += 1
                laps = lap
                if not cfg.loop:
                    break
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or self.stopping
        try:
            producer.flush(30.0)
        except Exception as exc:
            log.error("flush failed: %s", exc)
            self._errors += 1
        if progress is not None:
            progress.close()
        duration = (last - first) / 1e9
        return ReplaySummary(
            frames_sent=frames_sent,
            records_sent=records,
            duration_s=duration,
            achieved_rate=(frames_sent - 1) / duration if duration > 0 else 0.0,
            lag_p50_ms=lags.percentile_ms(50),
            lag_p99_ms=lags.percentile_ms(99),
            lag_max_ms=lags.max_ns / 1e6 if lags.count else None,
            errors=self._errors + producer.failures,
            laps=laps,
            interrupted=interrupted,
        )


class _Progress:
    """One self-overwriting stderr line, refreshed at most ``hz`` times per second."""

    def __init__(self, stream: TextIO, lags: LagStats, hz: float = 4.0) -> None:
        self.stream, self.lags = stream, lags
        self.period = int(1e9 / hz)
        self.next = time.perf_counter_ns() + self.period
        self.t_last, self.n_last = time.perf_counter_ns(), 0
        self.shown = False

    def maybe_show(self, now: int, frames: int, errors: int) -> None:
        if now < self.next:
            return
        rate = (frames - self.n_last) * 1e9 / max(now - self.t_last, 1)
        self.t_last, self.n_last, self.next = now, frames, now + self.period
        p50, p99 = self.lags.drain_recent()
        lag = (
            f"lag p50 {p50:.2f} ms p99 {p99:.2f} ms" if p50 is not None and p99 is not None else ""
        )
        self.stream.write(
            f"\rreplay: {frames} frames  {rate:8.0f} frames/s  {lag}  errors {errors} "
        )
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
