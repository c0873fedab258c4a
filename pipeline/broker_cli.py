"""``drivestream broker start|stop|status|logs``: the local Kafka broker from the shell."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from pipeline.broker import CLUSTER_SIZES, BrokerConfig, BrokerState, LocalBroker, default_data_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status", "logs"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="storage, logs and pid of the broker [env DRIVESTREAM_BROKER_DIR; "
        "default %(default)s]",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("DRIVESTREAM_BROKER_PORT", "9092")),
        help="client port (of node 1; the others take the next ones), 0 = any free port "
        "[env DRIVESTREAM_BROKER_PORT; default %(default)s]",
    )
    parser.add_argument(
        "--brokers",
        type=int,
        choices=CLUSTER_SIZES,
        default=int(os.environ.get("DRIVESTREAM_BROKERS", "1")),
        help="nodes to start, each a broker and controller; 3 gives topics three replicas "
        "(stop, status and logs find out themselves) [env DRIVESTREAM_BROKERS; default "
        "%(default)s]",
    )
    parser.add_argument(
        "--heap-mb",
        type=int,
        default=int(os.environ.get("DRIVESTREAM_BROKER_HEAP_MB", "512")),
        help="JVM heap of each node [env DRIVESTREAM_BROKER_HEAP_MB; default %(default)s]",
    )
    parser.add_argument("--lines", type=int, default=50, help="log lines to show with `logs`")


def run(args: argparse.Namespace) -> int:
    broker = LocalBroker(
        BrokerConfig(
            data_dir=args.data_dir, port=args.port, brokers=args.brokers, heap_mb=args.heap_mb
        )
    )
    if args.action == "start":
        state = broker.start()
        pids = ", ".join(str(node.pid) for node in state.nodes)
        nodes = f"pid {pids}" if len(state.nodes) == 1 else f"{len(state.nodes)} nodes, pids {pids}"
        print(f"broker running: {nodes}, bootstrap {state.bootstrap}")
        print(f"export DRIVESTREAM_BOOTSTRAP={state.bootstrap}")
    elif args.action == "stop":
        print("broker stopped" if broker.stop() else "no broker was running")
    elif args.action == "status":
        found = broker.state()
        if found is None:
            print(json.dumps({"running": False, "data_dir": str(broker.data_dir)}))
            return 1
        print(
            json.dumps({"running": True, "data_dir": str(broker.data_dir), **status(broker, found)})
        )
    else:
        print(broker.logs(args.lines))
    return 0


def status(broker: LocalBroker, state: BrokerState) -> dict[str, Any]:
    """A running cluster for ``status``: a single broker's fields flat, as before clusters;
    a cluster's nodes listed, each saying whether it runs."""
    if len(state.nodes) == 1:
        (node,) = state.nodes
        return {
            "pid": node.pid,
            "port": node.port,
            "controller_port": node.controller_port,
            "version": state.version,
            "bootstrap": state.bootstrap,
        }
    running = broker.running_nodes(state)
    nodes = [{**dataclasses.asdict(node), "running": node in running} for node in state.nodes]
    return {"version": state.version, "bootstrap": state.bootstrap, "nodes": nodes}
