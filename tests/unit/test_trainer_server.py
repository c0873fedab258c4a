"""Parameter-server state: staleness merge rule, determinism, checkpoint round trip, codec."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.errors import CheckpointError, CodecError
from trainer import wire
from trainer.checkpoint import read_if_exists, write_atomic
from trainer.server_state import ServerState, staleness_scale


def weights(value: float = 0.0) -> wire.Tensors:
    return {"a": np.full((2, 3), value, np.float32), "b": np.full(4, value, np.float32)}


def delta(base: int, value: float = 1.0, group: str = "g", **kw) -> wire.Delta:
    return wire.Delta(group=group, base_version=base, tensors=weights(value), **kw)


def test_staleness_scale_rule() -> None:
    assert staleness_scale(0, 4) == 1.0
    assert staleness_scale(1, 4) == 0.5
    assert staleness_scale(3, 4) == 0.25
    assert staleness_scale(4, 4) == 0.2
    assert staleness_scale(5, 4) is None  # beyond the bound: rejected
    assert staleness_scale(-1, 4) is None  # a base the server never had


def test_fresh_delta_applies_fully_stale_one_is_scaled_and_too_stale_rejected() -> None:
    s = ServerState(weights(), max_staleness=2)
    assert s.apply(delta(0), offset=0).accepted and s.version == 1
    np.testing.assert_array_equal(s.weights["a"], 1.0)
    r = s.apply(delta(0), offset=1)  # based on v0, server at v1
    assert r.accepted and r.staleness == 1 and s.version == 2
    np.testing.assert_array_equal(s.weights["a"], 1.5)
    s.apply(delta(2), offset=2)
    r = s.apply(delta(0), offset=3)  # staleness 3 > 2
    assert not r.accepted and "staleness 3" in r.reason
    assert s.version == 3 and s.rejected == 1 and s.updates_offset == 4
    np.testing.assert_array_equal(s.weights["b"], 2.5)


def test_mismatched_tensors_are_rejected_not_applied() -> None:
    s = ServerState(weights(), max_staleness=2)
    bad = wire.Delta(group="g", base_version=0, tensors={"a": np.ones((3, 2), np.float32)})
    assert not s.apply(bad, offset=0).accepted
    assert s.version == 0


def test_replay_from_checkpoint_is_bit_identical(tmp_path) -> None:
    rng = np.random.default_rng(0)
    deltas = [
        wire.Delta(
            group="g",
            base_version=max(0, i - int(rng.integers(0, 4))),
            tensors={k: rng.normal(size=v.shape).astype(np.float32) for k, v in weights().items()},
            samples=10,
            trained_until_ns=i * 1000,
            sensor_offsets={0: i, 1: 2 * i},
        )
        for i in range(30)
    ]
    full = ServerState(weights(), max_staleness=2, server_lr=0.7)
    for off, d in enumerate(deltas):
        full.apply(d, off)
    # crash after 12 records with a checkpoint taken at 7: restore and replay from its offset
    part = ServerState(weights(), max_staleness=2, server_lr=0.7)
    for off, d in enumerate(deltas[:7]):
        part.apply(d, off)
    path = tmp_path / "ps.ckpt"
    write_atomic(path, part.to_bytes())
    restored = ServerState(weights(), max_staleness=2, server_lr=0.7)
    restored.load_bytes(read_if_exists(path))
    assert restored.updates_offset == 7 and restored.version == part.version
    for off in range(restored.updates_offset, len(deltas)):
        restored.apply(deltas[off], off)
    assert restored.state_dict().keys() == full.state_dict().keys()
    assert (restored.version, restored.accepted, restored.rejected) == (
        full.version,
        full.accepted,
        full.rejected,
    )
    assert full.rejected > 0  # the replay exercised the rejection path too
    for k in full.weights:
        np.testing.assert_array_equal(restored.weights[k], full.weights[k])
    assert restored.sensor_offsets == full.sensor_offsets and full.sensor_offsets["g"][1] > 0
    assert restored.samples == full.samples == 10 * full.accepted
    assert restored.trained_until_ns == full.trained_until_ns > 0


def test_checkpoint_write_is_atomic_and_leaves_no_temp_files(tmp_path) -> None:
    path = tmp_path / "sub" / "ps.ckpt"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert read_if_exists(path) == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ps.ckpt"]
    assert read_if_exists(tmp_path / "missing") is None


def test_unreadable_checkpoint_raises_a_helpful_error() -> None:
    s = ServerState(weights(), max_staleness=2)
    with pytest.raises(CheckpointError, match="checkpoint"):
        s.load_bytes(b"\x05\x00\x00\x00junk")
    other = ServerState({"z": np.zeros(2, np.float32)}, max_staleness=2)
    with pytest.raises(CheckpointError, match="--checkpoint-dir"):
        s.load_bytes(other.to_bytes())


def test_wire_round_trip_and_truncation() -> None:
    d = delta(3, 0.25, samples=5, sensor_offsets={2: 17}, metrics={"x": 1.5})
    back = wire.decode_delta(wire.encode_delta(d))
    assert (back.base_version, back.samples, back.sensor_offsets, back.metrics) == (
        3,
        5,
        {2: 17},
        {"x": 1.5},
    )
    np.testing.assert_array_equal(back.tensors["a"], d.tensors["a"])
    w = wire.decode_weights(wire.encode_weights(wire.Weights(version=9, tensors=weights(2.0))))
    assert w.version == 9 and float(w.tensors["b"][0]) == 2.0
    with pytest.raises(CodecError):
        wire.decode_delta(wire.encode_delta(d)[:-3])


class _Sent:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    def send(self, topic: str, value: bytes, **_: object) -> None:
        self.records.append((topic, value))


def _server(tmp_path):
    from schemas.kafka import KafkaSettings
    from trainer.config import PSConfig
    from trainer.ps import ParameterServer

    cfg = PSConfig(
        checkpoint_dir=str(tmp_path / "ps"), registry_dir=str(tmp_path / "reg"), hidden=16
    )
    return ParameterServer(cfg, KafkaSettings(bootstrap="127.0.0.1:9"))  # connects lazily


def test_export_lineage_survives_a_restart(tmp_path) -> None:
    from schemas.envelope import decode_envelope

    ps, sent = _server(tmp_path), _Sent()
    ps.export(sent)  # v0
    for i in range(3):
        ps.state.apply(wire.Delta(group="g", base_version=i, tensors=ps.state.weights), i)
    ps.export(sent)  # v3, parent v0
    ps.checkpoint()
    restarted = _server(tmp_path)
    for i in range(3, 5):
        restarted.state.apply(wire.Delta(group="g", base_version=i, tensors=ps.state.weights), i)
    env = restarted.export(sent)
    assert (env.version, env.parent_version) == (5, 3), "parent is the last export, not v0"
    assert decode_envelope(sent.records[-1][1]).input_spec.max_gap_s == 0.35


def test_checkpoint_behind_retention_is_an_error_not_a_silent_reset(tmp_path) -> None:
    from trainer.ps import UpdatesLostError

    fresh = _server(tmp_path)
    fresh._check_retention(10)  # no checkpoint: starts where the log starts
    assert fresh.state.updates_offset == 10
    fresh.state.updates_offset = 4
    fresh.checkpoint()
    restarted = _server(tmp_path)
    restarted._check_retention(4)
    with pytest.raises(UpdatesLostError, match="retention"):
        restarted._check_retention(7)


def test_published_weights_carry_the_processed_offset(tmp_path) -> None:
    ps, sent = _server(tmp_path), _Sent()
    ps.state.skip(0)  # a rejected/unreadable record moves only the offset
    ps.publish_weights(sent)
    w = wire.decode_weights(sent.records[-1][1])
    assert (w.version, w.updates_offset) == (0, 1)


def test_a_retried_push_from_the_same_anchor_is_merged_once(tmp_path) -> None:
    """The broker took a push it never acknowledged; the trainer sent the whole change since
    the same anchor again: the server ends where one delivery of the later one would."""
    s = ServerState(weights(), max_staleness=8)
    first = delta(0, 1.0, anchor_id="a1", steps=3, samples=30)
    retried = delta(0, 2.5, anchor_id="a1", steps=7, samples=70)  # includes ``first``
    assert not s.apply(first, offset=0).repeat
    result = s.apply(retried, offset=1)
    assert result.accepted and result.repeat and result.staleness == 1
    # 1.0, then half (staleness 1) of what the retry adds: 1.0 + 0.5 * 1.5
    np.testing.assert_allclose(s.weights["a"], 1.75)
    assert (s.steps, s.samples) == (7, 70), "steps and samples counted once"

    # a new anchor (the trainer moved it after an acknowledged push) merges in full
    s.apply(delta(2, 1.0, anchor_id="a2", steps=1, samples=5), offset=2)
    np.testing.assert_allclose(s.weights["a"], 2.75)
    # other groups keep their own anchors; '' (older trainers) never counts as a repeat
    assert not s.apply(delta(3, 1.0, group="h", anchor_id="a2"), offset=3).repeat
    assert not s.apply(delta(4, 1.0), offset=4).repeat
    assert not s.apply(delta(5, 1.0), offset=5).repeat

    # the last merged delta of each group survives a checkpoint round trip
    restored = ServerState(weights(), max_staleness=8)
    restored.load_bytes(s.to_bytes())
    assert restored.applied.keys() == {"g", "h"}
    assert restored.applied["g"].anchor_id == "a2" and restored.applied["g"].steps == 1
    np.testing.assert_array_equal(restored.applied["h"].tensors["b"], 1.0)
    r = restored.apply(delta(6, 3.0, anchor_id="a2", steps=2, samples=9), offset=6)
    assert r.repeat
    np.testing.assert_allclose(restored.weights["a"], s.weights["a"] + 2.0)


def test_a_rejected_delta_is_not_what_a_retry_is_measured_from() -> None:
    s = ServerState(weights(), max_staleness=0)
    s.apply(delta(0, 1.0, anchor_id="x"), offset=0)  # v1
    assert not s.apply(delta(0, 2.0, anchor_id="y"), offset=1).accepted  # too stale
    assert not s.apply(delta(1, 2.0, anchor_id="y"), offset=2).repeat  # merged in full
    np.testing.assert_allclose(s.weights["a"], 3.0)
