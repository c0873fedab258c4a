"""`drivestream up` as the user runs it, checked from the outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """Environment for an `up` with its own broker (data dir and free port under tmp_path)."""
    env = {
        **os.environ,
        "DRIVESTREAM_BROKER_DIR": str(tmp_path / "broker"),
        "DRIVESTREAM_BROKER_PORT": "0",
    }
    env.pop("DRIVESTREAM_BOOTSTRAP", None)
    return env


def test_up_answers_every_frame_serves_models_reports_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "runs"
    env = isolated_env(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "up",
            "--duration-s",
            "75",
            "--vehicles",
            "6",
            "--export-every-s",
            "5",
            "--run-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    logs = done.stdout[-3000:] + done.stderr[-5000:]
    assert done.returncode == 0, logs
    (report_path,) = run_dir.glob("*/report/report.json")
    report = json.loads(report_path.read_text())

    # Every replayed frame got exactly one prediction.
    assert report["frames_seen"] > 6 * 70 * 10 * 0.9, logs
    assert report["frames_unanswered"] == 0, logs
    assert report["latency"]["count"] == report["frames_seen"], logs
    assert report["duplicates"] == 0
    # At least two model versions were served, after the physics fallback.
    assert len(report["models"]["model_versions_served"]) >= 2, report["models"]
    # The report holds latency and accuracy.
    assert report["latency"]["end_to_end_ms"]["p50"] > 0
    assert set(report["latency"]["stages_ms"]) == {
        "kafka_in",
        "queue",
        "compute",
        "publish",
        "kafka_out",
    }
    assert report["accuracy"]["scored"] > 1000
    assert report["accuracy"]["served"]["per_horizon_m"]["3s"] > 0
    # Never worse than physics on any 30 s window after the first 30 s.
    roll = report["accuracy"]["rolling_fde"]
    assert roll["windows_checked"] >= 2 and roll["worst_ratio"] <= 1.0, roll["windows"]
    assert (report_path.parent / "latency_cdf.png").exists()
    assert "end-to-end" in done.stdout
    # No child (services, torchrun ranks, broker JVM) outlives `up`.
    assert processes_mentioning(str(tmp_path)) == []


def test_ctrl_c_stops_every_child_and_still_reports(tmp_path):
    run_dir = tmp_path / "runs"
    env = isolated_env(tmp_path)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "up",
            "--duration-s",
            "300",
            "--vehicles",
            "4",
            "--run-dir",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # as a shell starts a background job: SIGINT ignored, which Python inherits
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(run_dir.glob("*/logs/replay.log")):
            assert up.poll() is None, up.communicate()[1][-3000:]
            time.sleep(0.5)
        assert list(run_dir.glob("*/logs/replay.log")), "up never started the replay"
        time.sleep(5)  # let some frames through
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=180)
    finally:
        if up.poll() is None:
            up.kill()
    assert "interrupted: stopping every service" in err, err[-3000:]
    assert "end-to-end" in out, err[-3000:]  # the report of what was measured so far
    assert list(run_dir.glob("*/report/report.json"))
    assert processes_mentioning(str(tmp_path)) == []


def test_sigterm_while_services_start_ends_up_within_seconds(tmp_path):
    run_dir = tmp_path / "runs"
    env = isolated_env(tmp_path)
    up = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "up", "--vehicles", "2", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(run_dir.glob("*/logs/serve.log")):
            assert up.poll() is None, up.communicate()[1][-3000:]
            time.sleep(0.2)
        assert list(run_dir.glob("*/logs/serve.log")), "up never started the services"
        t0 = time.monotonic()
        up.send_signal(signal.SIGTERM)  # while it waits for serve to join its group
        _, err = up.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if up.poll() is None:
            up.kill()
    assert "interrupted: stopping every service" in err, err[-3000:]
    assert took < 30, f"up took {took:.1f} s to stop"
    assert processes_mentioning(str(tmp_path)) == []
