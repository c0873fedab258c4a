"""SIGTERM during startup stops the trainer cleanly instead of killing it with -15."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

import trainer.launch
import trainer.signals
from trainer import __main__ as entry
from trainer.config import TrainConfig


@pytest.fixture
def restore_handlers():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    trainer.signals._stop = None
    yield
    trainer.signals._stop = None
    for s, h in old.items():
        signal.signal(s, h)


def test_handler_is_installed_before_the_launcher_starts(restore_handlers, monkeypatch) -> None:
    seen = {}

    def fake_launch(cfg: TrainConfig, stop) -> int:
        seen["handler"] = signal.getsignal(signal.SIGTERM)
        if seen["handler"] is signal.SIG_DFL:  # raising now would kill the test run
            return 1
        signal.raise_signal(signal.SIGTERM)  # a SIGTERM while still starting up
        seen["stop"] = stop.is_set()
        return 0

    monkeypatch.setattr(trainer.launch, "launch", fake_launch)
    assert entry.main(["train", "--bootstrap", "127.0.0.1:9"]) == 0
    assert seen["handler"] not in (signal.SIG_DFL, signal.SIG_IGN) and seen["stop"]


def test_stop_asked_before_launch_starts_no_ranks(restore_handlers, monkeypatch) -> None:
    def no_popen(*a, **kw):
        raise AssertionError("torchrun started after a stop was requested")

    monkeypatch.setattr(trainer.launch.subprocess, "Popen", no_popen)
    stop = trainer.signals.install_stop_handler()
    signal.raise_signal(signal.SIGTERM)
    assert trainer.launch.launch(TrainConfig(), stop) == 0


class _Proc:
    """A torchrun that exits with ``rc`` at once."""

    pid = 0

    def __init__(self, rc: int) -> None:
        self.returncode = rc

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode

    def poll(self) -> int:
        return self.returncode


def _scripted(monkeypatch, codes: list[int]) -> list[list[str]]:
    started: list[list[str]] = []

    def popen(cmd, *a, **kw):
        started.append(cmd)
        return _Proc(codes[len(started) - 1])

    monkeypatch.setattr(trainer.launch.subprocess, "Popen", popen)
    monkeypatch.setattr(trainer.launch, "RESTART_PAUSES_S", (0.0,))
    return started


def test_a_failed_group_is_started_again_as_a_fresh_torchrun(restore_handlers, monkeypatch):
    started = _scripted(monkeypatch, [1, 1, 0])  # a rank died twice, then the group ran out
    assert trainer.launch.launch(TrainConfig(max_restarts=2)) == 0
    assert len(started) == 3
    assert all("--max-restarts=0" in cmd and "--standalone" in cmd for cmd in started)


def test_restarts_in_a_row_are_bounded(restore_handlers, monkeypatch):
    started = _scripted(monkeypatch, [1, 1, 1, 0])
    assert trainer.launch.launch(TrainConfig(max_restarts=2)) == 1
    assert len(started) == 3  # the first run and two restarts


def test_a_stop_during_the_pause_before_a_restart_starts_nothing(restore_handlers, monkeypatch):
    started = _scripted(monkeypatch, [1, 0])
    monkeypatch.setattr(trainer.launch, "RESTART_PAUSES_S", (30.0,))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert trainer.launch.launch(TrainConfig(max_restarts=3), stop) == 0
    assert len(started) == 1


def test_a_rank_stuck_after_a_stop_request_exits_by_itself(tmp_path):
    """A rank blocked on a dead peer never reads the stop event: the watchdog ends it."""
    code = (
        "import signal, time\n"
        "from trainer.signals import exit_when_stuck, install_stop_handler, set_stop_grace\n"
        "stop = install_stop_handler()\n"
        "exit_when_stuck(stop)\n"
        "set_stop_grace(0.5)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)  # blocked: never looks at stop\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    assert rc == 143 and "no clean stop" in (proc.stderr.read() if proc.stderr else "")
