"""A child of `up` dies with it, even when `up` is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import sys, time
from pathlib import Path
from pipeline.supervisor import Supervisor
sup = Supervisor(Path(sys.argv[1]))
code = "from pipeline.supervisor import die_with_parent as d; d(); import time; time.sleep(120)"
child = sup.start("sleeper", [sys.executable, "-c", code])
print(child.proc.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_child_dies_when_its_parent_is_killed_with_sigkill(tmp_path):
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


LAUNCHER = """
import signal, subprocess, sys, time
# a rank that ignores SIGTERM, in a session of its own (as torchrun starts its ranks)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
rank = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
print(rank.pid, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the launcher leaves its rank behind
time.sleep(120)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_stop_returns_only_once_every_process_of_the_tree_is_gone(tmp_path):
    from pipeline.supervisor import Supervisor

    sup = Supervisor(tmp_path)
    child = sup.start("launcher", [sys.executable, "-c", LAUNCHER])
    deadline = time.monotonic() + 30
    log = tmp_path / "launcher.log"
    while time.monotonic() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.05)
    rank = int(log.read_text().split()[0])
    assert alive(rank)
    sup.stop(child, timeout_s=5)
    assert not alive(rank)  # before: left running (a group signal never reached it)


RANK = """
import time
from trainer.signals import die_with_launcher, install_stop_handler
stop = install_stop_handler()
die_with_launcher()
print("ready", flush=True)
stop.wait(120)
print("stopped", flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_rank_stops_when_its_launcher_is_killed_with_sigkill(tmp_path):
    out = tmp_path / "rank.out"
    launcher_code = (
        "import subprocess, sys, time\n"
        f"r = subprocess.Popen([sys.executable, '-c', {RANK!r}], stdout=open({str(out)!r}, 'w'),"
        " start_new_session=True)\n"
        "print(r.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-c", launcher_code], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    rank = int(launcher.stdout.readline())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "ready" not in out.read_text():
        time.sleep(0.05)
    launcher.kill()
    launcher.wait()
    while time.monotonic() < deadline and alive(rank):
        time.sleep(0.05)
    assert not alive(rank) and "stopped" in out.read_text()  # a clean stop, not a kill
