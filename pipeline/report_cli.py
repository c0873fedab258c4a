"""``drivestream report``: measure latency and accuracy of the predictions topic."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from pipeline.report_client import ReportClient, ReportConfig
from pipeline.report_output import format_table
from schemas.config import add_config_arguments, config_from_args
from schemas.kafka import KafkaSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ReportConfig)
    parser.add_argument("--json", action="store_true", help="print the JSON report to stdout")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(ReportConfig, args)
    settings = KafkaSettings.from_env(bootstrap=config.bootstrap, client_id="drivestream-report")
    client = ReportClient(config, settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.open()
    print(
        f"report: reading {client.names.predictions} "
        f"{'from the beginning' if config.from_beginning else 'live'}; Ctrl-C to finish",
        file=sys.stderr,
    )
    try:
        client.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    report = client.build()
    if args.json:
        print(json.dumps(report.get("latency", {}), indent=2))
    print(format_table(report))
    print(f"report written to {config.out_dir}/", file=sys.stderr)
    return 0 if report["latency"].get("count") else 1
