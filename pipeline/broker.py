"""A real single-node Apache Kafka broker (KRaft, broker+controller) run from Maven jars.

``LocalBroker`` is a context manager for tests and ``drivestream up``; the same class backs
``drivestream broker start|stop|status|logs``. All state (storage, logs, pid, ports) lives
under one data directory, so a second ``start`` finds and reuses the running broker.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pipeline.kafka_jars import KAFKA_VERSION, cache_root, ensure_jars
from schemas.errors import ConfigError, DrivestreamError

log = logging.getLogger(__name__)

MIN_JAVA = 17


class BrokerError(DrivestreamError):
    """The broker could not be started or stopped; the message carries its last log lines."""


def default_data_dir() -> Path:
    return Path(os.environ.get("DRIVESTREAM_BROKER_DIR") or cache_root() / "broker")


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """How to run the local broker."""

    data_dir: Path = field(default_factory=default_data_dir)
    port: int = 9092
    """Client (PLAINTEXT) port; 0 picks a free one."""
    heap_mb: int = 512
    kafka_version: str = KAFKA_VERSION
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.heap_mb < 128:
            raise ConfigError(f"heap_mb must be >= 128, got {self.heap_mb}")


@dataclass(frozen=True)
class BrokerState:
    """What a running broker left in its data directory."""

    pid: int
    port: int
    controller_port: int
    version: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalBroker:
    """Start, find, stop and inspect the broker that lives in ``config.data_dir``."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.data_dir = Path(self.config.data_dir)
        self._started_here = False

    # --- paths ----------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def bootstrap(self) -> str:
        state = self.state()
        if state is None:
            raise BrokerError(f"no broker is running in {self.data_dir}")
        return state.bootstrap

    # --- lifecycle ------------------------------------------------------------------
    def state(self) -> BrokerState | None:
        """The running broker's state, or None (stale state files are removed)."""
        try:
            state = BrokerState(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None
        if not _is_our_jvm(state.pid, self.data_dir):
            self.state_file.unlink(missing_ok=True)
            return None
        return state

    def start(self) -> BrokerState:
        """Start the broker, or return the one already running in this data directory."""
        running = self.state()
        if running is not None:
            _wait_ready(running, self.config.start_timeout_s, self._server_log)
            log.info("reusing broker pid %d on %s", running.pid, running.bootstrap)
            return running
        java = check_java()
        jars = ensure_jars(self.config.kafka_version)
        port = self.config.port or free_port()
        if not port_is_free(port):
            raise ConfigError(
                f"port {port} is taken by another process; stop it, or pass --port 0 "
                "(DRIVESTREAM_BROKER_PORT=0) for a free port"
            )
        controller_port = free_port(exclude={port})
        props = self._write_config(port, controller_port)
        self._format(java, jars, props)
        proc = self._launch(java, jars, props)
        state = BrokerState(proc.pid, port, controller_port, self.config.kafka_version)
        self.state_file.write_text(json.dumps(state.__dict__))
        try:
            _wait_ready(state, self.config.start_timeout_s, self._server_log, proc)
        except BaseException:
            self.stop()
            raise
        self._started_here = True
        return state

    def stop(self) -> bool:
        """SIGTERM the broker, SIGKILL after the timeout; True if one was running."""
        state = self.state()
        if state is None:
            return False
        _terminate(state.pid, self.config.stop_timeout_s)
        self.state_file.unlink(missing_ok=True)
        return True

    def logs(self, lines: int = 50) -> str:
        return "\n".join(_tail(self._server_log(), lines))

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here:
            self.stop()

    # --- internals ------------------------------------------------------------------
    def _server_log(self) -> list[Path]:
        return [self.log_dir / "server.log", self.log_dir / "broker.out"]

    def _write_config(self, port: int, controller_port: int) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        storage = self.data_dir / "kraft"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(storage),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",  # lets serve detect a dead peer in ~1 s
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "auto.create.topics.enable": "false",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java_cmd(self, java: str, jars: Path, main: str, *args: str) -> list[str]:
        log4j = resources.files("pipeline") / "kafka" / "log4j2.xml"
        return [
            java,
            f"-Xmx{self.config.heap_mb}m",
            f"-Xms{min(self.config.heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:MaxInlineLevel=15",
            "-XX:TieredStopAtLevel=1" if main != "kafka.Kafka" else "-XX:+TieredCompilation",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.log_dir}",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{jars}/*",
            main,
            *args,
        ]

    def _format(self, java: str, jars: Path, props: Path) -> None:
        meta = self.data_dir / "kraft" / "meta.properties"
        if meta.exists():
            return  # formatted before: keep topics and offsets across restarts
        cmd = self._java_cmd(
            java, jars, "kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(props)
        )
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
            raise BrokerError(f"formatting KRaft storage in {self.data_dir} failed:\n{tail}")

    def _launch(self, java: str, jars: Path, props: Path) -> subprocess.Popen[bytes]:
        out = (self.log_dir / "broker.out").open("ab")
        cmd = self._java_cmd(java, jars, "kafka.Kafka", str(props))
        # Own session: the broker outlives `drivestream broker start` and gets no Ctrl-C meant
        # for the shell; stop() signals it by pid.
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def check_java() -> str:
    """Path of a Java >= 17, or ConfigError saying what to install."""
    java = shutil.which("java", path=_java_path())
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


def _java_path() -> str:
    home = os.environ.get("JAVA_HOME")
    path = os.environ.get("PATH", "")
    return f"{home}/bin:{path}" if home else path


def cluster_id() -> str:
    """URL-safe base64 of 16 random bytes without padding, not starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def free_port(exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
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


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_ready(
    state: BrokerState,
    timeout_s: float,
    logs: object,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until the client listener accepts connections: it binds only once serving."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _can_connect(state.port):
            return
        if (proc is not None and proc.poll() is not None) or not _pid_alive(state.pid):
            tail = "\n".join(_tail(logs(), 20))  # type: ignore[operator]
            raise BrokerError(f"the Kafka broker exited during start; last log lines:\n{tail}")
        time.sleep(0.1)
    tail = "\n".join(_tail(logs(), 20))  # type: ignore[operator]
    raise BrokerError(f"the Kafka broker was not ready after {timeout_s:.0f}s:\n{tail}")


def _tail(paths: list[Path], lines: int) -> list[str]:
    out: list[str] = []
    for path in paths:
        try:
            text = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        out.extend(f"{path.name}: {line}" for line in text[-lines:])
    return out[-lines:]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _is_our_jvm(pid: int, data_dir: Path) -> bool:
    """True if ``pid`` is a live kafka.Kafka process started on this data directory."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, PermissionError):
        return False
    return b"kafka.Kafka" in cmdline and str(data_dir / "server.properties").encode() in cmdline


def _terminate(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            _reap(pid)
            return
        time.sleep(0.1)
    log.warning("broker pid %d ignored SIGTERM for %.0fs; killing it", pid, timeout_s)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _pid_alive(pid):
        time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
