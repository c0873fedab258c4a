"""Local processes and ports the broker needs: Java, free ports, pids, stopping a JVM."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from schemas.errors import ConfigError

log = logging.getLogger(__name__)

MIN_JAVA = 17


def check_java() -> str:
    """Path of a Java >= 17, or ConfigError saying what to install."""
    java = shutil.which("java", path=java_path())
    if java is None:
        raise ConfigError(f"Java {MIN_JAVA}+ is needed for the local Kafka broker: install a JDK")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise ConfigError(
            f"Java {MIN_JAVA}+ is needed for Kafka 4.x, found: {out.splitlines()[:1]}"
        )
    return java


def java_path() -> str:
    home = os.environ.get("JAVA_HOME")
    path = os.environ.get("PATH", "")
    return f"{home}/bin:{path}" if home else path


def free_port(exclude: Collection[int] = frozenset()) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in exclude:
            return port


def port_is_free(port: int) -> bool:
    """True when a server could listen on ``port`` now. SO_REUSEADDR as the JVM sets it:
    sockets of a killed broker left in TIME_WAIT do not hold the port, a listener does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(paths: list[Path], lines: int) -> list[str]:
    out: list[str] = []
    for path in paths:
        try:
            text = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        out.extend(f"{path.name}: {line}" for line in text[-lines:])
    return out[-lines:]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child of ours not yet reaped) still answers kill(0): gone once every thread
    # is one. Not the main thread alone: a killed JVM's others may still be closing sockets.
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(_thread_alive(t) for t in threads)


def _thread_alive(task: Path) -> bool:
    """Is the thread at ``/proc/<pid>/task/<tid>`` neither a zombie, dead, nor gone? A thread
    that exits after its directory was listed reads as ESRCH (ProcessLookupError)."""
    try:
        state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in "ZX"


def is_our_jvm(pid: int, properties: Path) -> bool:
    """True if ``pid`` is a live kafka.Kafka process started on this server.properties."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):  # gone since pid_alive
        return False
    return b"kafka.Kafka" in cmdline and str(properties).encode() in cmdline


def terminate(pids: Sequence[int], timeout_s: float, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to every pid, SIGKILL those still alive after ``timeout_s``; reap ours."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    left = [pid for pid in pids if pid_alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pid for pid in left if pid_alive(pid)]
    for pid in left:
        log.warning("broker pid %d ignored SIGTERM for %.0fs; killing it", pid, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while any(pid_alive(pid) for pid in left):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
