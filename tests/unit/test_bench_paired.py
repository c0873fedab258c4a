"""The paired bench's bookkeeping: who gets which segment, what counts, whose CPU is whose."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_paired as paired

MS = 1_000_000


def marks_of(order: list[str], cpu: list[dict[str, float]]) -> paired.Marks:
    """Segments 10 ms long from t=0, with these CPU readings at each mark."""
    m = paired.Marks(order)
    m.at_ns = [k * 10 * MS for k in range(len(order) + 1)]
    m.cpu = cpu
    return m


def test_the_plan_is_a_warm_up_rotation_then_one_rotation_per_segment_of_duration():
    assert paired.plan(["floor", "serve"], 6, 2) == ["floor", "serve"] * 4
    assert paired.plan(["serve"], 0.5, 2) == ["serve", "serve"]  # at least one counted turn


def test_a_frame_belongs_to_the_segment_it_was_sent_in_and_warm_up_is_not_counted():
    m = marks_of(["a", "b", "a", "b"], [{}] * 5)
    assert [m.segment_of(t * MS) for t in (0, 9, 10, 25, 39, 45)] == [0, 0, 1, 2, 3, 3]
    assert m.segment_of(-1) == -1
    assert [m.counted(k) for k in range(4)] == [False, False, True, True]


def test_cpu_is_split_between_a_systems_own_counted_segments_and_the_others():
    # a's CPU grows by 1 s in each of its segments and by 0.1 s in b's; b's is never read
    a = [0.0, 1.0, 1.1, 2.1, 2.2, 3.2, 3.3]
    m = marks_of(["a", "b"] * 3, [{"a": x} for x in a])
    assert m.cpu_s("a", "a") == (2.0, 0.02)  # segments 2 and 4 (0 is warm-up)
    cpu, wall = m.cpu_s("a", "a", active=False)  # segments 3 and 5
    assert round(cpu, 6) == 0.2 and wall == 0.02


def test_a_row_counts_only_answers_and_cpu_past_the_warm_up():
    order = ["serve", "floor"] * 2
    cpu = [{"serve": x, "broker": 0.0} for x in (0.0, 5.0, 5.0, 6.0, 6.0)]
    m = marks_of(order, cpu)
    # serve's frames: two in warm-up (answered in 90 ms: not counted), two counted (1, 3 ms)
    got = [(1 * MS, 91 * MS, "model", ""), (2 * MS, 92 * MS, "model", "")]
    got += [(21 * MS, 22 * MS, "model", ""), (22 * MS, 25 * MS, "fallback", "warmup")]
    bench = SimpleNamespace(args=SimpleNamespace(budget_ms=50.0), broker_gc_log=None)
    row = paired._row("serve", 1000, got, [], m, 2, bench, {})
    assert row["sent"] == 4 and row["answered"] == 4 and row["unanswered"] == 0
    assert row["max_ms"] == 3.0 and row["over_budget_share"] == 0.0
    assert row["fallback_share"] == 0.5
    assert row["cpu_s_per_10k"] == 5000.0  # 1 CPU s over the 2 counted frames
    assert row["broker_cpu_s_per_10k"] == 0.0


def test_broker_gc_pauses_count_for_the_system_whose_counted_segment_they_began_in(tmp_path):
    base = 1_800_000_000  # epoch s; segments of 10 ms from here: serve, floor, serve, floor
    m = marks_of(["serve", "floor"] * 2, [{"serve": 0.0, "floor": 0.0}] * 5)
    m.at_ns = [t + base * 10**9 for t in m.at_ns]

    def line(ms_after: float, pause_ms: float) -> str:
        at = datetime.fromtimestamp(base + ms_after / 1e3, tz=UTC)
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"
        return (
            f"[{stamp}] GC(1) Pause Young (Normal) (G1 Evacuation Pause) 9M->2M(64M) {pause_ms}ms"
        )

    log = tmp_path / "gc.log"  # serve's warm-up, serve's counted turn (two), floor's turn
    log.write_text("\n".join([line(5, 30.0), line(21, 12.5), line(25, 3.5), line(35, 9.0)]))
    bench = SimpleNamespace(args=SimpleNamespace(budget_ms=50.0), broker_gc_log=log)
    got = [(base * 10**9 + 22 * MS, base * 10**9 + 23 * MS, "model", "")]
    row = paired._row("serve", 1000, got, [], m, 1, bench, {})
    assert row["broker_gc_pauses"] == 2
    assert row["broker_gc_pause_max_ms"] == 12.5 and row["broker_gc_pause_total_ms"] == 16.0


def test_the_load_schedule_sends_every_frame_once_in_order_and_never_ahead_of_its_rate():
    t0 = time.monotonic()
    sent = [i for due in paired.e2e.paced(1000, 20, tick_s=0.001) for i in due]
    assert sent == list(range(20))
    assert time.monotonic() - t0 >= 0.019  # frame 19 is due 19 ms after the first


def test_busy_is_a_system_only_where_the_caller_allows_it():
    import bench_peer as bp

    assert bp.parse_args(["--systems", "floor,busy"], (*bp.SYSTEMS, bp.BUSY)).systems == [
        "floor",
        "busy",
    ]
    with pytest.raises(SystemExit):
        bp.parse_args(["--systems", "floor,busy"])  # bench_peer's table has no busy row


def test_the_busy_echo_burns_its_cpu_per_poll():
    import bench_e2e

    t0 = time.thread_time_ns()
    bench_e2e.burn(3 * MS)
    assert time.thread_time_ns() - t0 >= 3 * MS


def test_the_table_shows_the_ratios_of_the_systems_that_ran():
    def row(run, system, p99, cpu):
        return {"run": run, "system": system, "p50_ms": 1.0, "p99_ms": p99, "cpu_s_per_10k": cpu}

    rows = [row(1, "floor", 4.0, 1.0), row(1, "serve", 6.0, 3.0), row(1, "busy", 5.0, 2.0)]
    lines = paired.table(rows, ["floor", "serve", "busy"]).splitlines()
    assert lines[0].endswith("| serve p99 / floor p99 | busy p99 / floor p99 |")
    assert "serve CPU / peer CPU" not in lines[0]  # no peer ran
    assert lines[2].endswith("| 1.50 | 1.25 |")
    assert lines[3].startswith("| median |") and lines[3].endswith("| 1.50 | 1.25 |")
