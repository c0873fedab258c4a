"""The batch encoder agrees with the decoder; stage histograms bucket like Prometheus."""

from __future__ import annotations

import numpy as np
import pytest

from inference.metrics import LATENCY_BUCKETS, STAGES, ServeMetrics
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


@pytest.mark.parametrize("encoder", [PredictionEncoder, JsonPredictionEncoder])
def test_a_batch_encodes_to_the_same_bytes_as_record_by_record(encoder) -> None:
    """Serve encodes a batch in one pass; each value must be what encode() writes."""
    enc, rng = encoder(), np.random.default_rng(5)
    n = 37
    vids = [rng.choice(["a", "veh-ü1", "x" * 200, "車"]) for _ in range(n)]
    ids = np.stack([rng.integers(0, 2**63 - 1, n), rng.integers(0, 2**63 - 1, n)], 1)
    stamps = rng.integers(0, 2**63 - 1, (n, 5))
    points = rng.normal(size=(n, len(H), 2)).astype(np.float32) * 1e4
    for names in (["ctrv"] * n, [rng.choice(["cv", "ctrv"]) for _ in range(n)]):
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


def test_stage_histogram_buckets_like_prometheus_le() -> None:
    m = ServeMetrics()
    values = np.array([0.0, 1e-4, 1.5e-4, 1.0, 2.0])
    m.stage_latency.observe_many(np.tile(values, (len(STAGES), 1)))
    cumulative, total = m.stage_latency.counts("queue")
    assert cumulative[0] == 2  # 0 and exactly 1e-4 are <= 1e-4
    assert cumulative[1] == 3 and cumulative[len(LATENCY_BUCKETS) - 1] == 4
    assert cumulative[-1] == 5 and total == values.sum()
    assert 'drivestream_inference_stage_seconds_count{stage="publish"} 5.0' in m.render().decode()
