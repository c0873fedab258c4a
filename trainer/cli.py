"""Verbs ``train`` and ``ps`` for ``python -m trainer`` and the ``drivestream`` CLI."""

from __future__ import annotations

import argparse
import logging
import sys

from schemas.config import add_config_arguments, config_from_args
from schemas.errors import DrivestreamError
from trainer.config import PSConfig, TrainConfig
from trainer.signals import install_stop_handler

LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


def setup_logging() -> None:
    """One line per event; kafka-python's INFO chatter (connects, metadata) kept out."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("kafka").setLevel(logging.WARNING)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``train``: every TrainConfig field (e.g. --nproc, --bootstrap, --duration-s)."""
    add_config_arguments(parser, TrainConfig)


def run_train(args: argparse.Namespace) -> int:
    """Start ``--nproc`` DDP ranks under torchrun and wait for them."""
    stop = install_stop_handler()  # before the slow part: SIGTERM at startup stops cleanly
    from trainer.launch import launch

    setup_logging()
    try:
        cfg = config_from_args(TrainConfig, args)
    except DrivestreamError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    return launch(cfg, stop)


def add_ps_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ps``: every PSConfig field (--checkpoint-dir, --registry-dir, ...)."""
    add_config_arguments(parser, PSConfig)


def run_ps(args: argparse.Namespace) -> int:
    """Run the parameter server until SIGTERM/SIGINT or ``--duration-s``."""
    stop = install_stop_handler()  # before importing torch: SIGTERM at startup stops cleanly
    from trainer.ps import serve

    setup_logging()
    try:
        return serve(config_from_args(PSConfig, args), stop)
    except DrivestreamError as exc:
        print(f"ps: {exc}", file=sys.stderr)
        return 2
