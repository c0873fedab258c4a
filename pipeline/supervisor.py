"""Child processes of ``drivestream up``: started in their own process groups, logged to
files, and always stopped as whole groups (SIGTERM, then SIGKILL) so nothing is orphaned.
On Linux each child also asks the kernel for SIGTERM when its parent dies (see
:func:`die_with_parent`, called first thing by ``pipeline.cli``), so even a SIGKILLed ``up``
leaves no service running (torchrun passes it on to its ranks)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PARENT_ENV = "DRIVESTREAM_PARENT_PID"
"""Set for every child: the pid it must not outlive."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])


class Supervisor:
    """Starts named children and stops every one of them, whatever happens."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._env = {**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}

    def start(self, name: str, argv: Sequence[str], nice: int = 0) -> Child:
        """Start ``argv`` logging to ``<log_dir>/<name>.log``; ``nice`` lowers its priority."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        log.info("started %s (pid %d), log %s", name, proc.pid, log_path)
        return child

    def failed(self) -> list[Child]:
        """Children that exited non-zero."""
        return [c for c in self.children if c.proc.poll() not in (None, 0)]

    def stop(self, child: Child, timeout_s: float = 20.0) -> int | None:
        """SIGTERM the child, then SIGKILL whatever is left of its process group.

        Only the leader gets SIGTERM: launchers such as torchrun forward it to their workers
        and shut down cleanly, which a group-wide signal would interrupt.
        """
        tree = _descendants(child.proc.pid)  # torchrun's ranks run in sessions of their own
        if child.running:
            child.proc.send_signal(signal.SIGTERM)
        try:
            child.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0fs; killing it", child.name, timeout_s)
        # Let the launcher's own shutdown of its ranks finish, then take down whatever is
        # left of its group and its tree, and return only once they are gone (a SIGKILLed
        # rank takes a moment to die, and `up` must not exit while one is still there).
        wait_until(lambda: not _any_alive(tree), timeout_s if child.proc.returncode == 0 else 1)
        _signal_group(child.proc.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            code = child.proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        gone = lambda: not _group_alive(child.proc.pid) and not _any_alive(tree)  # noqa: E731
        if not wait_until(gone, 10, 0.05):
            log.warning("%s: processes outlived SIGKILL", child.name)
        return code

    def stop_all(self, timeout_s: float = 20.0) -> None:
        for child in reversed(self.children):
            if child.running or _group_alive(child.proc.pid):
                self.stop(child, timeout_s)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGTERM this process when the supervisor that started it dies (Linux; else no-op).

    Done in the child itself rather than in a pre-exec hook (unsafe with threads in the
    parent); if the parent died before the request took effect, exit now.
    """
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit() or sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):
        raise SystemExit(f"parent {parent} is gone; not starting")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _proc_stats() -> dict[int, list[str]]:
    """pid -> the fields of /proc/<pid>/stat after the command name (state, ppid, pgrp...)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue
    return out


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (Linux; else empty)."""
    if sys.platform != "linux":
        return set()
    children: dict[int, list[int]] = {}
    for p, fields in _proc_stats().items():
        children.setdefault(int(fields[1]), []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _any_alive(pids: set[int]) -> bool:
    """Whether any of ``pids`` still runs (zombies do not count)."""
    if not pids:
        return False
    stats = _proc_stats()
    return any(p in stats and stats[p][0] != "Z" for p in pids)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, already dead, do not count)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if sys.platform != "linux":
        return True
    return any(f[2] == str(pgid) and f[0] != "Z" for f in _proc_stats().values())


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
