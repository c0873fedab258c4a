"""`drivestream broker` as a user runs it: start twice gives one broker, stop leaves nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.broker import BrokerConfig, BrokerError, LocalBroker
from pipeline.processes import port_is_free
from schemas.errors import ConfigError

pytestmark = pytest.mark.integration


def drivestream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def broker_jvms(data_dir: Path) -> list[int]:
    """PIDs of kafka.Kafka JVMs started on ``data_dir``."""
    needle = str(data_dir / "server.properties").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().split()[2]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if b"kafka.Kafka" in cmdline and needle in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_start_twice_gives_one_broker_and_stop_frees_everything(tmp_path):
    data_dir = tmp_path / "broker"
    first = drivestream("broker", "start", "--data-dir", str(data_dir), "--port", "0")
    assert first.returncode == 0, first.stderr
    try:
        second = drivestream("broker", "start", "--data-dir", str(data_dir), "--port", "0")
        assert second.returncode == 0, second.stderr
        assert first.stdout == second.stdout  # same pid, same bootstrap
        assert len(broker_jvms(data_dir)) == 1

        status = json.loads(drivestream("broker", "status", "--data-dir", str(data_dir)).stdout)
        assert status["running"] is True
        with socket.create_connection(("127.0.0.1", status["port"]), timeout=5):
            pass
        assert (
            "Kafka Server started"
            in drivestream("broker", "logs", "--data-dir", str(data_dir), "--lines", "400").stdout
        )
    finally:
        stopped = drivestream("broker", "stop", "--data-dir", str(data_dir))
    assert stopped.returncode == 0 and "broker stopped" in stopped.stdout
    assert broker_jvms(data_dir) == []
    assert port_is_free(status["port"])
    after = drivestream("broker", "status", "--data-dir", str(data_dir))
    assert after.returncode == 1 and json.loads(after.stdout)["running"] is False


def test_port_taken_is_a_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done = drivestream("broker", "start", "--data-dir", str(tmp_path), "--port", str(port))
    assert done.returncode == 2
    assert f"port {port} is taken" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_broker_dying_during_start_shows_its_log(tmp_path):
    broker = LocalBroker(BrokerConfig(data_dir=tmp_path, port=0, heap_mb=128))
    # A corrupt meta.properties makes the JVM exit at start-up.
    (tmp_path / "kraft").mkdir()
    (tmp_path / "kraft" / "meta.properties").write_text("version=1\nnode.id=99\ncluster.id=x\n")
    with pytest.raises(BrokerError, match="exited during start"):
        broker.start()
    assert broker_jvms(tmp_path) == []


def test_missing_java_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(ConfigError, match="Java 17"):
        LocalBroker(BrokerConfig(data_dir=tmp_path, port=0)).start()
