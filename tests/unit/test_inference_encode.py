"""The batch encoder agrees with the decoder; stage histograms bucket like Prometheus."""

from __future__ import annotations

import numpy as np

from inference.metrics import LATENCY_BUCKETS, STAGES, ServeMetrics
from schemas.prediction import Prediction, PredictionEncoder, decode_prediction

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


def test_stage_histogram_buckets_like_prometheus_le() -> None:
    m = ServeMetrics()
    values = np.array([0.0, 1e-4, 1.5e-4, 1.0, 2.0])
    m.stage_latency.observe_many(np.tile(values, (len(STAGES), 1)))
    cumulative, total = m.stage_latency.counts("queue")
    assert cumulative[0] == 2  # 0 and exactly 1e-4 are <= 1e-4
    assert cumulative[1] == 3 and cumulative[len(LATENCY_BUCKETS) - 1] == 4
    assert cumulative[-1] == 5 and total == values.sum()
    assert 'drivestream_inference_stage_seconds_count{stage="publish"} 5.0' in m.render().decode()
