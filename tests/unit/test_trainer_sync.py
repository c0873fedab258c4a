"""Rank 0's sync with the parameter server: the anchor moves only on delivery, a broker that
does not acknowledge stops no training, and a push is held back until the server has
processed the previous one (world size 1, gloo)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from schemas.kafka import ProduceError
from schemas.model_spec import DEFAULT_SPEC
from tests.unit.test_trainer_ddp import ListSource, fleet
from trainer.config import TrainConfig
from trainer.kafka_io import KafkaPSLink, PushError
from trainer.loop import TrainLoop
from trainer.model import trainable_state
from trainer.wire import Delta, Weights


@pytest.fixture
def group():
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class CommitCounter(ListSource):
    def __init__(self, records: list) -> None:
        super().__init__(records, per_poll=60)
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


class Link:
    """Scripted server: ``deliver`` and ``processed`` decide what push/ready answer."""

    def __init__(self) -> None:
        self.pushes: list[Delta] = []
        self.lost: list[Delta] = []
        self.deliver = True
        self.processed = True
        self.offer: Weights | None = None

    def push(self, delta: Delta, timeout_s: float) -> None:
        if not self.deliver:
            self.lost.append(delta)  # unacknowledged: it may still land later
            raise PushError("broker down")
        self.pushes.append(delta)

    def ready(self) -> bool:
        return self.processed

    def latest(self) -> Weights | None:
        return self.offer


def make_loop(tmp_path: Path, link: Link, source: ListSource) -> TrainLoop:
    cfg = TrainConfig(
        checkpoint_dir=str(tmp_path), batch_size=16, sync_every_steps=3, hidden=16,
        holdout_fraction=0.0,
    )  # fmt: skip
    return TrainLoop(cfg, DEFAULT_SPEC, source, link)


def train(loop: TrainLoop, steps: int) -> None:
    for _ in range(steps):
        loop.ingest(time.monotonic())
        loop.step()


def test_an_unacknowledged_push_stops_nothing_and_is_retried_from_the_same_anchor(
    group, tmp_path
) -> None:
    link, source = Link(), CommitCounter(fleet(4, 10.0))
    loop = make_loop(tmp_path, link, source)
    train(loop, 3)  # first sync delivered
    assert len(link.pushes) == 1
    anchor = {k: v.copy() for k, v in loop.anchor.items()}
    anchor_id = loop.anchor_id
    link.deliver = False  # the broker is down
    train(loop, 3)
    assert len(link.lost) == 1 and loop.counters.failed_pushes == 1
    assert loop.anchor_id == anchor_id, "nothing was acknowledged: the anchor stays"
    for k, v in anchor.items():
        np.testing.assert_array_equal(loop.anchor[k], v)
    assert loop.backoff.failures == 1 and not loop.backoff.due(time.monotonic())
    train(loop, 3)  # backing off: no attempt, training goes on
    assert len(link.lost) == 1 and loop.counters.held >= 1
    assert loop.counters.steps == 9

    link.deliver = True  # back: the next due push carries everything since the anchor
    loop.backoff.retry_at = 0.0
    train(loop, 3)
    assert len(link.pushes) == 2
    retried = link.pushes[1]
    assert retried.anchor_id == link.lost[0].anchor_id == anchor_id
    assert retried.steps == 9 and retried.steps > link.lost[0].steps
    for k, v in retried.tensors.items():
        np.testing.assert_allclose(v, loop.anchor[k] - anchor[k], atol=1e-6)
    assert loop.anchor_id != anchor_id and loop.backoff.failures == 0


def test_push_is_held_back_until_the_server_processed_the_previous_one(group, tmp_path) -> None:
    link, source = Link(), CommitCounter(fleet(4, 8.0))
    loop = make_loop(tmp_path, link, source)
    train(loop, 3)
    first_anchor = {k: v.copy() for k, v in loop.anchor.items()}
    link.processed = False  # server down: nothing processes the first push
    link.offer = Weights(version=9, tensors={k: v * 0 for k, v in first_anchor.items()})
    train(loop, 6)
    assert len(link.pushes) == 1 and loop.counters.held == 2
    assert loop.base_version == 0, "pulling while held back would discard local training"
    assert source.commits == 3, "held-back training is checkpointed, so it can be committed"

    # a restart keeps the held-back training in the model (no pull over it)
    again = make_loop(tmp_path, link, ListSource([], 1))
    assert again.base_version == 0 and again.counters.held == 0
    for k, v in trainable_state(loop.model).items():
        np.testing.assert_array_equal(trainable_state(again.model)[k], v)

    link.processed, link.offer = True, None  # server back, its weights not yet published
    train(loop, 3)
    assert len(link.pushes) == 2
    pushed = link.pushes[1]  # one delta with all the training since the first push
    assert pushed.steps == 9
    assert pushed.samples == loop.counters.samples - link.pushes[0].samples > 0
    for k, v in pushed.tensors.items():
        np.testing.assert_allclose(v, loop.anchor[k] - first_anchor[k], atol=1e-6)
    link.offer = Weights(version=9, tensors={k: v * 0 for k, v in first_anchor.items()})
    train(loop, 3)
    assert loop.base_version == 9, "pulls resume once pushes flow again"


class _Producer:
    def __init__(self, exc: Exception | None = None) -> None:
        self.exc, self.sent = exc, 0

    def send_and_wait(self, *a, **kw) -> int:
        self.sent += 1
        if self.exc:
            raise self.exc
        return 41 + self.sent


def _link(producer: _Producer, weights: list[Weights]) -> KafkaPSLink:
    link = KafkaPSLink.__new__(KafkaPSLink)  # no broker: only push/ready logic
    link.updates_topic, link._producer, link.pending_offset = "ps-updates", producer, None
    it = iter(weights)
    link.latest = lambda: next(it, None)  # type: ignore[method-assign]
    return link


def test_kafka_link_waits_for_delivery_and_for_the_server_to_catch_up() -> None:
    d = Delta(group="g", base_version=0, tensors={"a": np.zeros(2, np.float32)})
    with pytest.raises(PushError, match=r"not acknowledged.*no ack"):
        _link(_Producer(ProduceError("no ack")), []).push(d, timeout_s=1.0)
    w = {"a": np.zeros(2, np.float32)}
    link = _link(
        _Producer(),
        [
            Weights(version=2, tensors=w, updates_offset=40),
            Weights(version=3, tensors=w, updates_offset=42),
            Weights(version=3, tensors=w, updates_offset=43),
        ],
    )
    assert link.ready()  # nothing pushed yet
    link.push(d, timeout_s=1.0)  # acknowledged at offset 42
    assert not link.ready(), "weights that processed only offsets < 42 do not include it"
    assert link.ready()


def test_an_unreadable_weights_record_never_hides_the_good_one_before_it() -> None:
    from schemas.kafka import Message
    from trainer.wire import encode_weights, weights_headers

    good = Weights(version=7, tensors={"a": np.ones(2, np.float32)}, updates_offset=3)
    polled = [
        Message("ps-weights", 0, 10, 0, None, encode_weights(good), weights_headers()),
        Message("ps-weights", 0, 11, 0, None, b"\x00junk", weights_headers()),
        Message("ps-weights", 0, 12, 0, None, encode_weights(good), []),  # no schema header
    ]

    class _Consumer:
        def poll(self, timeout_ms: int) -> list[Message]:
            out, polled[:] = list(polled), []
            return out

    link = KafkaPSLink.__new__(KafkaPSLink)
    link._consumer, link._latest = _Consumer(), None
    latest = link.latest()
    assert latest is not None and latest.version == 7  # before: None (only the last was read)
