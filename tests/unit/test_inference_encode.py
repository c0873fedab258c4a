"""The batch encoder agrees with the decoder; stage and batch-size histograms bucket like
Prometheus."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from inference.batch_encoder import BatchPredictionEncoder
from inference.metrics import BATCH_BUCKETS, FOLD_EVERY, LATENCY_BUCKETS, STAGES, ServeMetrics
from schemas.errors import CodecError
from schemas.prediction import Prediction, PredictionEncoder, decode_prediction
from schemas.prediction_json import JsonPredictionEncoder

H = (0.5, 1.0, 2.0, 3.0)


def test_batch_encoder_round_trips_through_the_schemas_decoder() -> None:
    enc = PredictionEncoder()
    for source, name, reason, version in [
        ("model", "drivestream", "", 7),
        ("fallback", "ctrv", "warmup", -1),
    ]:
        p = Prediction(
            "veh-ü1", 42, 10**18, H, (1.5, 2.0, 3.25, -4.0), (0.1, 0.2, 0.3, 1e6), version,
            name, source, reason, 1, 2, 3, 4, 5,
        )  # fmt: skip
        got = enc.encode(
            p.vehicle_id, p.seq, p.t_event_ns, version, enc.middle(name, source, reason),
            (1, 2, 3, 4, 5), H, p.pred_x, p.pred_y,
        )  # fmt: skip
        assert decode_prediction(got) == p


@pytest.mark.parametrize(
    "encoder", [BatchPredictionEncoder, PredictionEncoder, JsonPredictionEncoder]
)
def test_a_batch_encodes_to_the_same_bytes_as_record_by_record(encoder) -> None:
    """Serve encodes a batch in one pass; each value must be what encode() writes."""
    enc, rng = encoder(), np.random.default_rng(5)
    n = 37
    vids = [rng.choice(["a", "veh-ü1", "x" * 200, "車"]) for _ in range(n)]
    ids = np.stack([rng.integers(0, 2**63 - 1, n), rng.integers(0, 2**63 - 1, n)], 1)
    stamps = rng.integers(0, 2**63 - 1, (n, 5))
    model_points = rng.normal(size=(n, len(H), 2)).astype(np.float32) * 1e4
    physics_points = rng.normal(size=(n, len(H), 2)) * 1e4  # the fallback's are float64
    for names, points in (
        (["ctrv"] * n, physics_points),
        ([rng.choice(["cv", "ctrv"]) for _ in range(n)], physics_points),
        (["drivestream"] * n, model_points),
    ):
        middles = [enc.middle(name, "fallback", "late") for name in names]
        got = enc.encode_many(vids, ids, -1, middles, stamps, H, points)
        want = [
            enc.encode(
                vids[i],
                int(ids[i, 0]),
                int(ids[i, 1]),
                -1,
                middles[i],
                tuple(stamps[i].tolist()),
                H,
                points[i, :, 0].tolist(),
                points[i, :, 1].tolist(),
            )
            for i in range(n)
        ]
        assert got == want
    with pytest.raises(CodecError, match="horizons"):
        enc.encode_many(vids, ids, 1, middles, stamps, H[:2], points)


def test_stage_histogram_computes_each_stage_from_a_batchs_stamps() -> None:
    m = ServeMetrics()
    ms = 1_000_000
    # t_produce, t_consumed, t_infer_start, t_infer_end, t_published
    first = np.array([[0, 2, 4, 9, 10], [1, 3, 4, 9, 10]], np.int64) * ms
    m.stage_latency.observe_batch(first)
    m.stage_latency.observe_batch(np.array([[5, 4, 6, 7, 8]], np.int64) * ms)
    want = {  # seconds, summed over the three predictions
        "kafka_in": (2 + 2 + 0) / 1e3,  # a clock skew (consumed before produced) reads 0
        "queue": (2 + 1 + 2) / 1e3,
        "infer": (5 + 5 + 1) / 1e3,
        "publish": (1 + 1 + 1) / 1e3,
        "service": (8 + 7 + 4) / 1e3,
        "since_produce": (10 + 9 + 3) / 1e3,
    }
    assert set(want) == set(STAGES)
    for stage, total in want.items():
        cumulative, got = m.stage_latency.counts(stage)  # read before any fold: still counted
        assert cumulative[-1] == 3 and got == pytest.approx(total), stage


def test_stage_histogram_folds_a_long_run_of_batches_without_losing_one() -> None:
    m = ServeMetrics()
    for i in range(3 * FOLD_EVERY + 7):
        m.stage_latency.observe_batch(np.array([[0, 1_000, i, i, i]], np.int64))
    cumulative, _ = m.stage_latency.counts("kafka_in")
    assert cumulative[0] == cumulative[-1] == 3 * FOLD_EVERY + 7  # 1 µs: the first bucket


def test_stage_histogram_buckets_like_prometheus_le() -> None:
    m = ServeMetrics()
    values = np.array([0.0, 1e-4, 1.5e-4, 1.0, 2.0])
    m.stage_latency.observe_many(np.tile(values, (len(STAGES), 1)))
    cumulative, total = m.stage_latency.counts("queue")
    assert cumulative[0] == 2  # 0 and exactly 1e-4 are <= 1e-4
    assert cumulative[1] == 3 and cumulative[len(LATENCY_BUCKETS) - 1] == 4
    assert cumulative[-1] == 5 and total == values.sum()
    assert 'drivestream_inference_stage_seconds_count{stage="publish"} 5.0' in m.render().decode()


def test_batch_size_histogram_reads_as_prometheus_own_histogram_would() -> None:
    sizes = [0, 1, 2, 3, 63, 64, 65, 511, 512, 513, 10_000, *range(1, 300, 7)]
    theirs = CollectorRegistry()
    h = Histogram(
        "drivestream_inference_batch_size",
        "Frames per model batch",
        buckets=BATCH_BUCKETS,
        registry=theirs,
    )
    m = ServeMetrics()
    for n in sizes:
        h.observe(n)
        m.batch_size.observe(n)

    def lines(text: bytes) -> list[str]:
        return [s for s in text.decode().splitlines() if "batch_size" in s and "created" not in s]

    assert lines(m.render()) == lines(generate_latest(theirs))
    assert f"drivestream_inference_batch_size_count {float(len(sizes))}" in lines(m.render())
