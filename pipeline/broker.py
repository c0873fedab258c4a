"""A real Apache Kafka (KRaft) run from Maven jars: one combined broker+controller node, or a
cluster of three.

``LocalBroker`` is a context manager for tests and ``drivestream up``; the same class backs
``drivestream broker start|stop|status|logs``. All state (storage, logs, pids, ports) lives
under one data directory, so a second ``start`` finds and reuses what runs there. A single
broker keeps its files at the top of that directory; each node of a cluster keeps them in
``node-<id>/``, and one ``broker.json`` lists every node.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pipeline.kafka_jars import KAFKA_VERSION, cache_root, ensure_jars
from pipeline.processes import (
    can_connect,
    check_java,
    free_port,
    is_our_jvm,
    pid_alive,
    port_is_free,
    tail,
    terminate,
)
from schemas.errors import ConfigError, DrivestreamError

log = logging.getLogger(__name__)

CLUSTER_SIZES = (1, 3)
"""Nodes a local cluster can have: one, or three (the fewest that survive losing one)."""


class BrokerError(DrivestreamError):
    """The broker could not be started or stopped; the message carries its last log lines."""


def default_data_dir() -> Path:
    return Path(os.environ.get("DRIVESTREAM_BROKER_DIR") or cache_root() / "broker")


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """How to run the local broker."""

    data_dir: Path = field(default_factory=default_data_dir)
    port: int = 9092
    """Client (PLAINTEXT) port of node 1, the next nodes take the ports after it; 0 picks
    free ones."""
    brokers: int = 1
    """Nodes, each a combined broker and controller: 1, or 3 for topics with three replicas."""
    heap_mb: int = 512
    """JVM heap of each node."""
    kafka_version: str = KAFKA_VERSION
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.brokers not in CLUSTER_SIZES:
            raise ConfigError(f"brokers must be 1 or 3, got {self.brokers}")
        if not 0 <= self.port <= 65536 - self.brokers:
            raise ConfigError(f"port must be 0..{65536 - self.brokers}, got {self.port}")
        if self.heap_mb < 128:
            raise ConfigError(f"heap_mb must be >= 128, got {self.heap_mb}")


@dataclass(frozen=True, kw_only=True)
class NodeState:
    """One node of a running cluster: its JVM and its two ports."""

    node_id: int
    pid: int
    port: int
    """Client (PLAINTEXT) port."""
    controller_port: int
    """KRaft quorum port: every node's ``controller.quorum.voters`` names it, so a restarted
    node must come back on it."""


@dataclass(frozen=True)
class BrokerState:
    """What a running cluster left in its data directory (``broker.json``)."""

    nodes: tuple[NodeState, ...]
    version: str

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def node(self, node_id: int) -> NodeState:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ConfigError(f"no node {node_id}: the cluster has nodes 1..{len(self.nodes)}")

    def to_json(self) -> str:
        return json.dumps(
            {"version": self.version, "nodes": [dataclasses.asdict(n) for n in self.nodes]}
        )

    @classmethod
    def from_json(cls, text: str) -> BrokerState:
        data = json.loads(text)
        if "nodes" not in data:  # written before clusters: one node's fields at the top
            data = {"version": data.pop("version"), "nodes": [{"node_id": 1, **data}]}
        return cls(tuple(NodeState(**node) for node in data["nodes"]), data["version"])


def node_home(data_dir: Path, node_id: int, brokers: int) -> Path:
    """Where a node keeps server.properties, kraft/ and logs/: the data directory itself for a
    single broker (as before clusters existed), ``node-<id>/`` in a cluster."""
    return data_dir if brokers == 1 else data_dir / f"node-{node_id}"


class LocalBroker:
    """Start, find, stop and inspect the cluster that lives in ``config.data_dir``."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.data_dir = Path(self.config.data_dir)
        self._started_here = False

    @property
    def state_file(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def bootstrap(self) -> str:
        state = self.state()
        if state is None:
            raise BrokerError(f"no broker is running in {self.data_dir}")
        return state.bootstrap

    # --- lifecycle ------------------------------------------------------------------
    def state(self) -> BrokerState | None:
        """The running cluster's state, or None (a state file whose JVMs are all gone is
        removed). A cluster with some nodes down still runs: ``start()`` brings them back."""
        try:
            state = BrokerState.from_json(self.state_file.read_text())
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None
        if not self.running_nodes(state):
            self.state_file.unlink(missing_ok=True)
            return None
        return state

    def running_nodes(self, state: BrokerState) -> list[NodeState]:
        """The nodes of ``state`` whose JVM is alive."""
        return [node for node in state.nodes if self._is_running(node, state)]

    def start(self) -> BrokerState:
        """Start the cluster, or return the one already running in this data directory; its
        nodes that died are started again, on their own ports."""
        running = self.state()
        if running is None:
            self._check_layout()
            nodes = plan_nodes(self.config.brokers, self.config.port)
            state = self._launch_nodes(BrokerState(nodes, self.config.kafka_version), nodes)
            self._started_here = True
            return state
        if len(running.nodes) != self.config.brokers:
            log.warning(
                "%d node(s) already run in %s, not %d: stop them first for another size",
                len(running.nodes),
                self.data_dir,
                self.config.brokers,
            )
        dead = [node for node in running.nodes if not self._is_running(node, running)]
        if dead:
            _check_free(dead)
            return self._launch_nodes(running, dead)
        self._wait_ready(running, running.nodes)
        log.info("reusing the broker on %s", running.bootstrap)
        return running

    def stop(self) -> bool:
        """SIGTERM every node, SIGKILL those left after the timeout; True if any was running."""
        state = self.state()
        if state is None:
            return False
        # All at once: a node's clean shutdown asks the controller quorum to let it go, which
        # needs a majority of the nodes still there.
        terminate([node.pid for node in self.running_nodes(state)], self.config.stop_timeout_s)
        self.state_file.unlink(missing_ok=True)
        return True

    def stop_node(self, node_id: int) -> None:
        """SIGTERM one node (a clean shutdown); ``start()`` brings it back on its ports."""
        self._end_node(node_id, signal.SIGTERM)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would; ``start()`` brings it back on its ports."""
        self._end_node(node_id, signal.SIGKILL)

    def logs(self, lines: int = 50) -> str:
        """The last ``lines`` of the broker's logs; in a cluster, of each node's, prefixed
        ``node-<id>``."""
        homes = sorted(self.data_dir.glob("node-*"))
        if not homes:
            return "\n".join(tail(_log_files(self.data_dir), lines))
        return "\n".join(f"{h.name} {line}" for h in homes for line in tail(_log_files(h), lines))

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here:
            self.stop()

    # --- internals ------------------------------------------------------------------
    def _home(self, node: NodeState, state: BrokerState) -> Path:
        return node_home(self.data_dir, node.node_id, len(state.nodes))

    def _is_running(self, node: NodeState, state: BrokerState) -> bool:
        return is_our_jvm(node.pid, self._home(node, state) / "server.properties")

    def _check_layout(self) -> None:
        """Refuse to start one size of cluster on the storage of the other."""
        single = (self.data_dir / "kraft" / "meta.properties").exists()
        cluster = any(self.data_dir.glob("node-*/kraft/meta.properties"))
        if self.config.brokers == 1 and cluster:
            raise ConfigError(
                f"{self.data_dir} holds a 3-broker cluster: start it with --brokers 3 "
                "(DRIVESTREAM_BROKERS=3), or pass another --data-dir"
            )
        if self.config.brokers > 1 and single:
            raise ConfigError(
                f"{self.data_dir} holds a single broker: pass another --data-dir for a cluster"
            )

    def _launch_nodes(self, cluster: BrokerState, todo: Sequence[NodeState]) -> BrokerState:
        """Start the JVMs of ``todo`` (nodes of ``cluster``) and wait until they serve."""
        java = check_java()
        jars = ensure_jars(cluster.version)
        for node in todo:
            self._write_config(node, cluster)
        self._format(java, jars, cluster, todo)
        pids = {node.node_id: self._launch(java, jars, self._home(node, cluster)) for node in todo}
        nodes = tuple(dataclasses.replace(n, pid=pids.get(n.node_id, n.pid)) for n in cluster.nodes)
        state = BrokerState(nodes, cluster.version)
        self.state_file.write_text(state.to_json())
        try:
            self._wait_ready(state, [state.node(i) for i in pids])
        except BaseException:
            terminate(list(pids.values()), self.config.stop_timeout_s)
            self.state()  # removes broker.json if no node is left
            raise
        return state

    def _wait_ready(self, state: BrokerState, nodes: Iterable[NodeState]) -> None:
        """Wait until each node's client listener accepts connections: it binds only once the
        node serves (in a cluster, once a majority of the controllers is up)."""
        deadline = time.monotonic() + self.config.start_timeout_s
        waiting = list(nodes)
        while True:
            waiting = [node for node in waiting if not can_connect(node.port)]
            if not waiting:
                return
            gone = [node for node in waiting if not pid_alive(node.pid)]
            if gone:
                raise self._failed(gone[0], state, "exited during start; last log lines")
            if time.monotonic() > deadline:
                wait_s = self.config.start_timeout_s
                raise self._failed(waiting[0], state, f"was not ready after {wait_s:.0f}s")
            time.sleep(0.1)

    def _failed(self, node: NodeState, state: BrokerState, what: str) -> BrokerError:
        name = "the Kafka broker" if len(state.nodes) == 1 else f"Kafka node {node.node_id}"
        last = "\n".join(tail(_log_files(self._home(node, state)), 20))
        return BrokerError(f"{name} {what}:\n{last}")

    def _end_node(self, node_id: int, sig: int) -> None:
        state = self.state()
        if state is None:
            raise BrokerError(f"no broker is running in {self.data_dir}")
        node = state.node(node_id)
        if self._is_running(node, state):
            terminate([node.pid], self.config.stop_timeout_s, sig)

    def _write_config(self, node: NodeState, cluster: BrokerState) -> None:
        home = self._home(node, cluster)
        (home / "logs").mkdir(parents=True, exist_ok=True)
        props = server_properties(node, cluster.nodes, home)
        (home / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _java_cmd(self, java: str, jars: Path, log_dir: Path, main: str, *args: str) -> list[str]:
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
            f"-Dkafka.logs.dir={log_dir}",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{jars}/*",
            main,
            *args,
        ]

    def _format(
        self, java: str, jars: Path, cluster: BrokerState, todo: Iterable[NodeState]
    ) -> None:
        """Format the storage of the nodes in ``todo`` that have none (formatted storage keeps
        its topics and offsets across restarts), all with the cluster's one id."""
        homes = [self._home(node, cluster) for node in todo]
        fresh = [home for home in homes if not (home / "kraft" / "meta.properties").exists()]
        if not fresh:
            return
        cid = _formatted_cluster_id(self._home(n, cluster) for n in cluster.nodes) or cluster_id()
        runs = []
        for home in fresh:  # side by side: each is a JVM start of a few seconds
            args = ("format", "-t", cid, "-c", str(home / "server.properties"))
            cmd = self._java_cmd(java, jars, home / "logs", "kafka.tools.StorageTool", *args)
            runs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outputs = [run.communicate()[0] for run in runs]  # all of them, even if one failed
        for home, run, out in zip(fresh, runs, outputs, strict=True):
            if run.returncode != 0:
                tail = "\n".join(out.decode(errors="replace").strip().splitlines()[-10:])
                raise BrokerError(f"formatting KRaft storage in {home} failed:\n{tail}")

    def _launch(self, java: str, jars: Path, home: Path) -> int:
        props = str(home / "server.properties")
        cmd = self._java_cmd(java, jars, home / "logs", "kafka.Kafka", props)
        # Own session: the broker outlives `drivestream broker start` and gets no Ctrl-C meant
        # for the shell; stop() signals it by pid.
        with (home / "logs" / "broker.out").open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return proc.pid


def _check_free(nodes: Iterable[NodeState]) -> None:
    """Before a node comes back: the ports the other nodes know it by must be free."""
    for node in nodes:
        for port in (node.port, node.controller_port):
            if not port_is_free(port):
                raise ConfigError(
                    f"port {port} of node {node.node_id} is taken by another process; stop it, "
                    "or stop the cluster (drivestream broker stop) and start it anew"
                )


def plan_nodes(brokers: int, port: int) -> tuple[NodeState, ...]:
    """Ports for a new cluster: client ports ``port``, ``port + 1``... (free ones for 0) and
    free controller ports; pids are filled in at launch."""
    clients = [port + i for i in range(brokers)] if port else []
    for taken in clients:
        if not port_is_free(taken):
            raise ConfigError(
                f"port {taken} is taken by another process; stop it, or pass --port 0 "
                "(DRIVESTREAM_BROKER_PORT=0) for a free port"
            )
    used = set(clients)

    def pick() -> int:
        chosen = free_port(exclude=used)
        used.add(chosen)
        return chosen

    clients = clients or [pick() for _ in range(brokers)]
    return tuple(
        NodeState(node_id=i, pid=0, port=client, controller_port=pick())
        for i, client in enumerate(clients, start=1)
    )


def server_properties(node: NodeState, voters: Sequence[NodeState], home: Path) -> dict[str, str]:
    """The server.properties of ``node`` in the cluster of ``voters`` (every node, itself
    included): each node is a broker and a KRaft controller, on 127.0.0.1."""
    replicas, min_isr = (3, 2) if len(voters) >= 3 else (1, 1)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": ",".join(
            f"{v.node_id}@127.0.0.1:{v.controller_port}" for v in voters
        ),
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(home / "kraft"),
        "num.partitions": "4",
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",  # lets serve detect a dead peer in ~1 s
        # exactly-once serve: a crashed instance's open transaction is aborted soon after it
        # times out (10 s), not up to a minute later
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "auto.create.topics.enable": "false",
    }
    if replicas > 1:  # topics created without a replication factor get the internal ones'
        props["default.replication.factor"] = str(replicas)
        props["min.insync.replicas"] = str(min_isr)
    return props


def cluster_id() -> str:
    """URL-safe base64 of 16 random bytes without padding, not starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _formatted_cluster_id(homes: Iterable[Path]) -> str | None:
    """The cluster id some node's storage was formatted with, if any was."""
    for home in homes:
        with contextlib.suppress(FileNotFoundError):
            meta = (home / "kraft" / "meta.properties").read_text()
            match = re.search(r"^cluster\.id=(\S+)$", meta, re.MULTILINE)
            if match:
                return match.group(1)
    return None


def _log_files(home: Path) -> list[Path]:
    return [home / "logs" / "server.log", home / "logs" / "broker.out"]
