"""``drivestream broker start|stop|status|logs``: the local Kafka broker from the shell."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pipeline.broker import BrokerConfig, LocalBroker, default_data_dir


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
        help="client port, 0 = any free port [env DRIVESTREAM_BROKER_PORT; default %(default)s]",
    )
    parser.add_argument(
        "--heap-mb",
        type=int,
        default=int(os.environ.get("DRIVESTREAM_BROKER_HEAP_MB", "512")),
        help="JVM heap [env DRIVESTREAM_BROKER_HEAP_MB; default %(default)s]",
    )
    parser.add_argument("--lines", type=int, default=50, help="log lines to show with `logs`")


def run(args: argparse.Namespace) -> int:
    broker = LocalBroker(BrokerConfig(data_dir=args.data_dir, port=args.port, heap_mb=args.heap_mb))
    if args.action == "start":
        state = broker.start()
        print(f"broker running: pid {state.pid}, bootstrap {state.bootstrap}")
        print(f"export DRIVESTREAM_BOOTSTRAP={state.bootstrap}")
    elif args.action == "stop":
        print("broker stopped" if broker.stop() else "no broker was running")
    elif args.action == "status":
        found = broker.state()
        if found is None:
            print(json.dumps({"running": False, "data_dir": str(broker.data_dir)}))
            return 1
        print(
            json.dumps(
                {
                    "running": True,
                    "data_dir": str(broker.data_dir),
                    **found.__dict__,
                    "bootstrap": found.bootstrap,
                }
            )
        )
    else:
        print(broker.logs(args.lines))
    return 0
