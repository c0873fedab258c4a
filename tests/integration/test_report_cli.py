"""`drivestream report` on a real predictions stream with known stamps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from schemas.kafka import Producer
from schemas.prediction import Prediction, encode_prediction, prediction_headers
from schemas.sensor import SensorFrame, encode_frames, frame_headers

pytestmark = pytest.mark.integration

MS = 1_000_000


def run_report(kafka_settings, topics, out, expect: int, plots: bool = True):
    """`drivestream report` from the beginning of the topics until ``expect`` predictions."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "report",
            "--bootstrap",
            kafka_settings.bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--from-beginning",
            "--expect",
            str(expect),
            "--out-dir",
            str(out),
            "--idle-timeout-s",
            "30",
            "--plots" if plots else "--no-plots",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_reads_the_stream_and_gives_exact_stage_percentiles(
    kafka_settings, topics, tmp_path
):
    n = 200
    with Producer(kafka_settings) as producer:
        for i in range(n):
            t0 = 1_700_000_000 * 10**9 + i * 100 * MS
            frame = SensorFrame("car-1", i, t0, 10.0 * i * 0.1, 0.0, 10.0, 0.0, 0.0, 0.0)
            producer.send(
                topics.sensors, encode_frames([frame]), key="car-1", headers=frame_headers(t0)
            )
            # kafka_in = i % 10 ms, queue 2 ms, compute 3 ms, publish 1 ms.
            kin = (i % 10) * MS
            p = Prediction(
                "car-1",
                i,
                t0,
                (0.5,),
                (10.0 * i * 0.1 + 5.0,),
                (0.0,),
                4 if i >= 100 else -1,
                "mlp" if i >= 100 else "cv",
                "model" if i >= 100 else "fallback",
                "" if i >= 100 else "no_model",
                t0,
                t0 + kin,
                t0 + kin + 2 * MS,
                t0 + kin + 5 * MS,
                t0 + kin + 6 * MS,
            )
            producer.send(
                topics.predictions, encode_prediction(p), key="car-1", headers=prediction_headers()
            )
    out = tmp_path / "report"
    done = run_report(kafka_settings, topics, out, expect=n)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    lat = report["latency"]
    assert lat["count"] == n
    assert lat["stages_ms"]["kafka_in"]["p50"] == 4.0  # nearest rank of 0..9 ms, 20 each
    assert lat["stages_ms"]["kafka_in"]["p90"] == 8.0
    assert lat["stages_ms"]["kafka_in"]["max"] == 9.0
    assert lat["stages_ms"]["queue"]["p99"] == 2.0
    assert lat["stages_ms"]["compute"]["p50"] == 3.0
    assert lat["stages_ms"]["publish"]["p99.9"] == 1.0
    assert report["models"]["model_versions_served"] == [4]
    assert report["models"]["fallback_share"] == 0.5
    # Truth from the sensor positions (x = 1 m per frame, 10 m/s): the predictions were 5 m
    # ahead of the frame, the true position 0.5 s later is also 5 m ahead.
    assert report["accuracy"]["scored"] > 150
    assert report["accuracy"]["served"]["fde_m"] == pytest.approx(0.0, abs=1e-6)
    assert (out / "latency_cdf.png").stat().st_size > 1000
    assert (out / "stages.png").exists() and (out / "accuracy.png").exists()
    assert "end-to-end" in done.stdout and "model versions served: [4]" in done.stdout


def test_report_counts_invalid_frames_and_duplicate_answers_apart(kafka_settings, topics, tmp_path):
    t0 = 1_700_000_000 * 10**9
    with Producer(kafka_settings) as producer:
        for i in range(20):
            t = t0 + i * 100 * MS
            frame = SensorFrame("car-2", i, t, float(i), 0.0, 10.0, 0.0, 0.0, 0.0)
            producer.send(
                topics.sensors, encode_frames([frame]), key="car-2", headers=frame_headers(t)
            )
            p = Prediction(
                "car-2",
                i,
                t,
                (0.5,),
                (i + 5.0,),
                (0.0,),
                1,
                "mlp",
                "model",
                "",
                t,
                t + MS,
                t + 2 * MS,
                t + 3 * MS,
                t + 4 * MS,
            )
            copies = 2 if i == 7 else 1  # at-least-once delivery repeated one answer
            for _ in range(copies):
                producer.send(
                    topics.predictions,
                    encode_prediction(p),
                    key="car-2",
                    headers=prediction_headers(),
                )
        producer.send(topics.sensors, b"\x01\x00garbage", key="car-2", headers=frame_headers(t0))
    out = tmp_path / "report"
    done = run_report(kafka_settings, topics, out, expect=21, plots=False)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["frames_seen"] == 20
    assert report["invalid_frames"] == 1
    assert report["frames_unanswered"] == 0
    assert report["duplicates"] == 1
    assert report["latency"]["count"] == 21
