"""``drivestream up``: the whole pipeline on one machine, measured from the user's side.

Starts (or reuses) the local broker, creates the topics, simulates a fleet (or takes a
log), runs the parameter server, the trainer group, the inference service and the replayer
as child processes, watches the predictions topic with the report client, prints a live
status line, and at the end the report. Every child is stopped, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.broker import BrokerConfig, LocalBroker
from pipeline.processes import free_port, port_is_free
from pipeline.report_client import ReportClient, ReportConfig
from pipeline.report_output import format_table
from pipeline.supervisor import Supervisor, wait_until
from schemas.config import add_config_arguments, config_from_args, setting
from schemas.errors import ConfigError
from schemas.kafka import KafkaSettings, ensure_topics
from schemas.signing import load_or_create_private_key, public_key_path
from schemas.topics import TopicNames, default_topics

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0
SIM_DURATION_S = 180.0
#: Training and the parameter server yield the CPU to the latency-critical path
#: (replay -> inference -> report) when they share a machine.
BACKGROUND_NICE = 10


@dataclass(frozen=True, kw_only=True)
class UpConfig:
    """What ``up`` runs and for how long."""

    bootstrap: str = setting("", "Kafka host:port ('' = local broker)")
    topic_prefix: str = setting("", "topic prefix ('' = fresh per run)")
    duration_s: float = setting(0.0, "how long to stream (0: a --log to its end, else 180 s)")
    vehicles: int = setting(16, "simulated fleet size")
    seed: int = setting(7, "simulation seed")
    log: str = setting("", "replay this Parquet sensor log, not a simulation")
    truth: str = setting("", "ground truth Parquet for --log")
    speed: str = setting("1", "replay speed factor or 'max'")
    nproc: int = setting(2, "trainer ranks")
    partitions: int = setting(4, "partitions of sensors/predictions")
    budget_ms: float = setting(50.0, "latency budget per frame")
    device: str = setting("auto", "auto | cpu | cuda")
    export_every_s: float = setting(3.0, "model export period (s)")
    run_dir: str = setting("runs", "where runs keep logs and reports")
    keep_broker: bool = setting(False, "leave a broker we started running")
    broker_port: int = setting(9092, "local broker port (taken 9092 -> a free one; 0 = free)")
    drain_s: float = setting(30.0, "wait this long for the last answers")

    def __post_init__(self) -> None:
        if self.duration_s < 0:
            raise ConfigError(f"duration_s must be >= 0, got {self.duration_s}")
        if self.nproc < 1 or self.vehicles < 1:
            raise ConfigError("nproc and vehicles must be >= 1")
        if self.log and not Path(self.log).exists():
            raise ConfigError(f"log {self.log} does not exist")

    @property
    def sim_duration_s(self) -> float:
        return self.duration_s or SIM_DURATION_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, UpConfig)


def run(args: argparse.Namespace) -> int:
    return Up(config_from_args(UpConfig, args)).run()


class Up:
    """One run of the whole pipeline; ``run()`` returns the exit code."""

    def __init__(self, config: UpConfig) -> None:
        self.config = config
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = Path(config.run_dir) / stamp
        self.names = TopicNames(config.topic_prefix or f"run-{stamp}-")
        self.supervisor = Supervisor(self.run_dir / "logs")
        self.broker: LocalBroker | None = None

    # --- steps --------------------------------------------------------------------------
    def _bootstrap(self) -> str:
        if self.config.bootstrap:
            return self.config.bootstrap
        port = self.config.broker_port
        if port == 9092 and not port_is_free(port):
            port = 0  # something else serves 9092: run ours beside it
        self.broker = LocalBroker(BrokerConfig(port=port))
        running = self.broker.state()
        state = self.broker.start()
        if running is not None:
            self.broker = None  # not ours to stop
        _say(f"broker   {state.bootstrap} ({'reused' if running else 'started'})")
        return state.bootstrap

    def _sensor_log(self) -> tuple[str, str]:
        if self.config.log:
            _describe_log(self.config.log, self.config.duration_s)
            return self.config.log, self.config.truth
        from ingest.logs import write_table
        from ingest.simulator import SimConfig, simulate

        sim = SimConfig(
            vehicles=self.config.vehicles,
            duration_s=self.config.sim_duration_s,
            seed=self.config.seed,
        )
        log_table, truth = simulate(sim)
        log_path = write_table(log_table, self.run_dir / "sensors.parquet")
        truth_path = write_table(truth, self.run_dir / "truth.parquet")
        _say(
            f"simulate {sim.vehicles} vehicles x {sim.duration_s:g} s: {log_table.num_rows} frames"
        )
        return str(log_path), str(truth_path)

    def _start_services(self, bootstrap: str) -> None:
        cli = [sys.executable, "-m", "pipeline.cli"]
        common = ["--bootstrap", bootstrap, "--topic-prefix", self.names.prefix]
        # the key exists before either service starts: serve reads the public half at start
        signing_key = self.run_dir / "ps" / "signing.key"
        load_or_create_private_key(signing_key)
        self.supervisor.start(
            "ps",
            [
                *cli,
                "ps",
                *common,
                "--signing-key",
                str(signing_key),
                "--checkpoint-dir",
                str(self.run_dir / "ps"),
                "--registry-dir",
                str(self.run_dir / "models"),
                "--export-every-s",
                str(self.config.export_every_s),
            ],
            nice=BACKGROUND_NICE,
        )
        self.supervisor.start(
            "train",
            [
                *cli,
                "train",
                *common,
                "--nproc",
                str(self.config.nproc),
                "--checkpoint-dir",
                str(self.run_dir / "trainer"),
                "--device",
                self.config.device,
            ],
            nice=BACKGROUND_NICE,
        )
        self.metrics_port = free_port()
        serve = ["--budget-ms", str(self.config.budget_ms), "--device", self.config.device]
        serve += ["--metrics-port", str(self.metrics_port), "--metrics-host", "127.0.0.1"]
        serve += ["--trusted-key-files", str(public_key_path(signing_key))]
        self.supervisor.start("serve", [*cli, "serve", *common, *serve])

    def _serving_ready(self) -> bool:
        """The inference service answers /healthz and owns every sensors partition."""
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                health = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        return (
            bool(health.get("ok")) and len(health.get("partitions", [])) == self.config.partitions
        )

    def _wait_for_services(self) -> None:
        _say("waiting for the inference service to join its consumer group ...")
        ready = wait_until(
            lambda: self._serving_ready() or bool(self.supervisor.failed()), READY_TIMEOUT_S
        )
        if not ready:
            raise ConfigError(
                f"the inference service was not ready after {READY_TIMEOUT_S:.0f}s; "
                f"see {self.supervisor.log_dir}/serve.log"
            )

    def _start_replay(self, bootstrap: str, log_path: str) -> None:
        self.supervisor.start(
            "replay",
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "replay",
                log_path,
                "--bootstrap",
                bootstrap,
                "--topic",
                self.names.sensors,
                "--speed",
                self.config.speed,
                "--no-progress",
            ],
        )

    # --- the run ------------------------------------------------------------------------
    def run(self) -> int:
        # SIGTERM ends up like Ctrl-C; SIGINT is set explicitly because a process started
        # in the background by a shell inherits SIGINT ignored, and Python then never
        # installs its KeyboardInterrupt handler (up ignored Ctrl-C from such a parent)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        previous_int = signal.signal(signal.SIGINT, _interrupt)
        client: ReportClient | None = None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            bootstrap = self._bootstrap()
            settings = KafkaSettings.from_env(bootstrap=bootstrap, client_id="drivestream-up")
            ensure_topics(settings, default_topics(self.config.partitions, self.names.prefix))
            _say(f"topics   {self.names.prefix}* on {bootstrap}")
            log_path, truth_path = self._sensor_log()
            self._start_services(bootstrap)
            client = ReportClient(
                ReportConfig(
                    bootstrap=bootstrap,
                    topic_prefix=self.names.prefix,
                    from_beginning=True,
                    budget_ms=self.config.budget_ms,
                    truth=truth_path,
                    out_dir=str(self.run_dir / "report"),
                ),
                settings,
            )
            client.open()
            self._wait_for_services()
            if self._crashed():
                return 1
            self._start_replay(bootstrap, log_path)
            self._watch(client)
        except KeyboardInterrupt:
            _say("\ninterrupted: stopping every service")
        finally:
            self.supervisor.stop_all()
            if client is not None:
                client.close()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
            if self.broker is not None and not self.config.keep_broker:
                self.broker.stop()
        return self._finish(client)

    def _watch(self, client: ReportClient) -> None:
        replay = next(c for c in self.supervisor.children if c.name == "replay")
        start = time.monotonic()
        last_status = 0.0
        while True:
            client.poll(timeout_ms=100)
            now = time.monotonic()
            if now - last_status >= 1.0:
                last_status = now
                _status(now - start, len(client.frames), client.live())
            if self._crashed():
                return
            if not replay.running:
                break
            if self.config.duration_s and now - start > self.config.duration_s:
                break  # a log longer than asked for: stop the replay here
        if replay.running:
            self.supervisor.stop(replay)
        # Let the services answer what is still in flight.
        wait_until(lambda: self._drained(client), self.config.drain_s, interval_s=0.0)
        _status(time.monotonic() - start, len(client.frames), client.live())
        sys.stderr.write("\n")

    def _drained(self, client: ReportClient) -> bool:
        client.poll(timeout_ms=100)
        client.catch_up_frames(timeout_s=1.0)
        return bool(client.frames) and client.frames.keys() <= client.answered()

    def _crashed(self) -> bool:
        failed = [c for c in self.supervisor.failed() if c.name != "replay"]
        for child in failed:
            _say(
                f"\n{child.name} exited with {child.proc.returncode}; its log ends:\n{child.tail()}"
            )
        return bool(failed)

    def _finish(self, client: ReportClient | None) -> int:
        if client is None:
            return 1
        report = client.build()
        print(format_table(report))
        _say(f"report, plots and logs in {self.run_dir}/")
        failed = self.supervisor.failed()
        return 1 if failed or not report["latency"].get("count") else 0


def _interrupt(signum: int, frame: object) -> None:
    """Whatever ``up`` is doing (starting, waiting, draining), stop it now."""
    raise KeyboardInterrupt


def _describe_log(path: str, duration_s: float) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["vehicle_id", "t_event_ns"])
    t = table.column("t_event_ns").to_numpy()
    span = (int(t.max()) - int(t.min())) / 1e9 if len(t) else 0.0
    vehicles = len(set(table.column("vehicle_id").to_pylist()))
    until = f"stopping after {duration_s:g} s" if duration_s and duration_s < span else "to its end"
    _say(f"log      {path}: {len(t)} frames of {vehicles} vehicle(s) over {span:.1f} s; {until}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _status(elapsed: float, frames: int, live: dict[str, Any]) -> None:
    version = live["model_version"]
    sys.stderr.write(
        f"\r{elapsed:6.0f}s  frames {frames:7d}  predictions {live['predictions']:7d}  "
        f"model {'v' + str(version) if version >= 0 else 'none':>5s}  "
        f"p50 {live['p50_ms']:6.1f} ms  p99 {live['p99_ms']:6.1f} ms  "
        f"fallback {100 * live['fallback_share']:5.1f} %"
    )
    sys.stderr.flush()
