"""SIGTERM during startup stops the trainer cleanly instead of killing it with -15."""

from __future__ import annotations

import signal

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
