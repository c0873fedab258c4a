"""Real drives as a new user runs them: `import-log` with no flags, then `up --log`.

The logs are real recordings in foreign formats kept outside the repository (see
``../shared/data/real/README.md``); ``DRIVESTREAM_REAL_LOGS`` points elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.e2e.test_up import isolated_env, processes_mentioning
from tests.real_logs import MISSING, REAL

pytestmark = pytest.mark.e2e

LOGS = ["datalogger_car_2014-02-14.csv", "sensorlog_motorbike_2016-08-09.csv"]


def cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.skipif(REAL is None, reason=MISSING)
@pytest.mark.parametrize("name", LOGS)
def test_a_real_log_imports_with_no_flags_and_serving_is_never_worse_than_physics(tmp_path, name):
    assert REAL is not None
    env = isolated_env(tmp_path)
    log = tmp_path / "drive.parquet"
    imported = cli("import-log", str(REAL / name), "--out", str(log), env=env, timeout=120)
    assert imported.returncode == 0, imported.stderr[-3000:]
    run_dir = tmp_path / "runs"
    up = cli("up", "--log", str(log), "--run-dir", str(run_dir), env=env, timeout=600)
    logs = up.stdout[-3000:] + up.stderr[-5000:]
    assert up.returncode == 0, logs
    (report_path,) = run_dir.glob("*/report/report.json")
    report = json.loads(report_path.read_text())
    acc = report["accuracy"]

    # the whole log was played and answered, and most of it scored against its own GNSS
    assert report["frames_seen"] == pq.read_metadata(log).num_rows, logs
    assert report["frames_unanswered"] == 0, logs
    assert acc["scored_share"] > 0.8, acc
    # never worse than physics: overall, and on every 30 s window after the first 30 s
    best = min(acc["cv"]["fde_m"], acc["ctrv"]["fde_m"])
    assert acc["served"]["fde_m"] <= best, (acc["served"], best, acc["predictors"])
    roll = acc["rolling_fde"]
    if roll["worst_ratio"] is not None:
        assert roll["worst_ratio"] <= 1.0, roll["windows"]
    assert processes_mentioning(str(tmp_path)) == []
