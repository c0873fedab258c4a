"""Faults (issue 12): a serve instance is killed with SIGKILL mid-stream.

One of two: the survivor takes the dead instance's partitions once its session times out,
and keeps its own partitions (and their vehicles' history) through that rebalance: a
cooperative rebalance moves only what changes owner. Every frame is answered; the only
duplicates are frames the dead instance answered after its last commit (at-least-once).

With ``--guarantee exactly-once`` the dead instance's open transaction is aborted and a
consumer reading committed records sees every frame answered exactly once (restarted under
the same ``--instance-id``: static membership, and a transactional id that fences it).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.kafka import KafkaSettings
from schemas.topics import TopicNames
from tests.integration.test_serving import (
    Collector,
    Stream,
    collectors,  # noqa: F401  (a fixture)
    config,
    keys,
    publish_model,
    serving,
    wait_for,
)
from tests.model_fixtures import TEST_PUBLIC

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SESSION_MS = 1500


def serve_process(
    settings: KafkaSettings, topics: TopicNames, group: str, *extra: str
) -> subprocess.Popen:
    """`python -m inference` as a user starts it, in the same group."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "inference",
            "--bootstrap", settings.bootstrap,
            "--topic-prefix", topics.prefix,
            "--group-id", group,
            "--session-timeout-ms", str(SESSION_MS),
            "--budget-ms", "10000",
            "--max-batch", "16",
            "--no-gate",
            "--trusted-keys", TEST_PUBLIC,
            "--log-level", "WARNING",
            *extra,
        ],
        cwd=REPO,
    )  # fmt: skip


def test_a_killed_instance_hands_its_partitions_over_and_the_survivor_keeps_its_own(
    kafka_settings: KafkaSettings,
    topics: TopicNames,
    collectors,  # noqa: F811
) -> None:
    cfg = config(topics, budget_ms=10_000, session_timeout_ms=SESSION_MS)
    publish_model(kafka_settings, topics.models, 1)
    collector: Collector = collectors(kafka_settings, topics.predictions)
    stream = Stream(kafka_settings, topics.sensors, range(16))
    a = serving(cfg, kafka_settings)
    b = None
    try:
        wait_for(lambda: a.model is not None and len(a.assigned) == 4, what="A serving all")
        b = serve_process(kafka_settings, topics, cfg.group_id)
        wait_for(lambda: len(a.assigned) == 2, 60, "B joining and taking two partitions")
        stream.start()
        wait_for(lambda: stream.sent >= 16 * 40, what="frames to both instances")
        wait_for(lambda: len(a.assigned) == 2, 60, "B serving its two partitions")
        own, revoked_at_kill = set(a.assigned), a.stats["revoked_partitions"]
        answered_by_a = a.stats["model"]
        b.kill()  # SIGKILL: no leaving the group, no last commit
        b.wait()
        killed = time.monotonic()
        wait_for(lambda: len(a.assigned) == 4, 60, "A taking B's partitions")
        takeover_s = time.monotonic() - killed
        after = stream.sent
        wait_for(lambda: stream.sent >= after + 16 * 20, what="frames after the takeover")
        total = stream.stop()
        collector.wait(total)
        revoked_by_the_end = a.stats["revoked_partitions"]  # stopping A revokes the rest
        assigned_by_the_end = set(a.assigned)
    finally:
        stream.stop()
        a.stop()
        if b is not None and b.poll() is None:
            b.kill()
            b.wait()
    print(f"takeover {takeover_s:.2f} s after SIGKILL (session timeout {SESSION_MS} ms)")
    counts = keys(collector.finish())
    assert len(counts) == total, f"{total - len(counts)} frames never answered"
    assert set(counts.values()) <= {1, 2}  # a duplicate: B answered it, never committed it
    assert a.error is None and a.stats["model"] > answered_by_a
    # cooperative: A revoked none of its own partitions when B died (an eager rebalance
    # revokes all, and drops their vehicles' history): they stayed with it throughout
    assert revoked_at_kill >= 2 and revoked_by_the_end == revoked_at_kill
    assert own < assigned_by_the_end


def test_exactly_once_a_killed_instance_leaves_no_frame_answered_twice(
    kafka_settings: KafkaSettings,
    topics: TopicNames,
    collectors,  # noqa: F811
) -> None:
    publish_model(kafka_settings, topics.models, 1)
    collector: Collector = collectors(kafka_settings, topics.predictions)  # read_committed
    stream = Stream(kafka_settings, topics.sensors, range(16))
    group = f"{topics.prefix}eos"
    # the restart keeps the instance's name: it takes its partitions straight back (static
    # membership) and its transactional id fences the killed run's open transaction
    eos = ("--guarantee", "exactly-once", "--instance-id", "serve-1")
    a = serve_process(kafka_settings, topics, group, *eos)
    b = None
    try:
        stream.start()
        wait_for(lambda: len(collector.preds) >= 16 * 30, 120, "answers from the first instance")
        a.kill()  # SIGKILL inside an open transaction: its answers since the last commit
        a.wait()  # are aborted, and the next instance answers those frames again
        killed_at = stream.sent
        b = serve_process(kafka_settings, topics, group, *eos)
        wait_for(lambda: stream.sent >= killed_at + 16 * 40, what="frames after the restart")
        total = stream.stop()
        collector.wait(total, timeout_s=120)
        b.terminate()
        assert b.wait(60) == 0
    finally:
        stream.stop()
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    counts = keys(collector.finish())
    assert len(counts) == total, f"{total - len(counts)} frames never answered"
    assert set(counts.values()) == {1}, "a frame answered twice under exactly-once"
