"""pid_alive while a process's threads come and go (a killed JVM's, in the fault tests)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pipeline.processes import is_our_jvm, pid_alive


@pytest.fixture
def second_thread():
    """A live second thread of this process: its tid."""
    started, stop = threading.Event(), threading.Event()
    tids: list[int] = []

    def run() -> None:
        tids.append(threading.get_native_id())
        started.set()
        stop.wait()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait()
    yield tids[0]
    stop.set()
    t.join()


def _gone(monkeypatch, tids: set[int]) -> None:
    """Reading these threads' stat fails as it does once they exited after being listed."""
    read = Path.read_text

    def read_text(self: Path, *args, **kwargs) -> str:
        if (
            self.name == "stat"
            and self.parent.parent.name == "task"
            and int(self.parent.name) in tids
        ):
            raise ProcessLookupError(3, "No such process")
        return read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)


def test_a_thread_that_exits_while_listed_leaves_the_process_alive(monkeypatch, second_thread):
    _gone(monkeypatch, {os.getpid()})  # listed first: the live second thread still decides
    assert pid_alive(os.getpid())


def test_a_process_whose_every_thread_exits_while_listed_is_gone(monkeypatch, second_thread):
    _gone(monkeypatch, {int(t.name) for t in Path(f"/proc/{os.getpid()}/task").iterdir()})
    assert not pid_alive(os.getpid())


def test_a_process_that_does_not_exist_is_not_alive():
    assert not pid_alive(2**22 + 12345)  # above pid_max's 2**22 ceiling


def test_a_process_gone_before_its_command_line_is_read_is_not_our_jvm(monkeypatch, tmp_path):
    read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "cmdline":
            raise ProcessLookupError(3, "No such process")
        return read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert not is_our_jvm(os.getpid(), tmp_path / "server.properties")
