"""`drivestream serve` / `python -m inference`: flags, signals, exit codes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from schemas.config import add_config_arguments, config_from_args
from schemas.errors import ConfigError, DrivestreamError


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from inference.config import ServeConfig

    add_config_arguments(parser, ServeConfig)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 2 with one line on bad configuration, 1 on a failure
    that stopped serving (e.g. predictions that could not be delivered)."""
    from inference.config import ServeConfig
    from inference.service import InferenceService
    from schemas.kafka import KafkaSettings

    try:
        config = config_from_args(ServeConfig, args)
        trust = config.trust()
        settings = KafkaSettings.from_env(bootstrap=config.bootstrap)
    except ConfigError as exc:
        print(f"drivestream serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(config.log_level.upper())  # also when `drivestream` set it
    logging.getLogger("kafka").setLevel(logging.WARNING)
    service = InferenceService(config, settings)
    service.swapper.configure_trust(trust)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: service.request_stop())
    try:
        service.run()
    except ConfigError as exc:
        print(f"drivestream serve: {exc}", file=sys.stderr)
        return 2
    except DrivestreamError as exc:
        print(f"drivestream serve: {exc}", file=sys.stderr)
        return 1
    return 0
