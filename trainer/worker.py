"""One trainer rank under torchrun: ``python -m trainer.worker`` (started by ``train``).

Installs the SIGTERM/SIGINT handler before importing torch, then runs
:func:`trainer.rank.run_worker` until a signal or ``--duration-s``.
"""

from __future__ import annotations

import argparse
import sys

from trainer.signals import die_with_launcher, exit_when_stuck, install_stop_handler


def main(argv: list[str] | None = None) -> int:
    stop = install_stop_handler()  # first: a SIGTERM during startup is a clean stop
    die_with_launcher()
    exit_when_stuck(stop)
    from schemas.config import add_config_arguments, config_from_args
    from schemas.errors import DrivestreamError
    from trainer.cli import setup_logging
    from trainer.config import TrainConfig
    from trainer.rank import run_worker

    setup_logging()
    parser = argparse.ArgumentParser(prog="python -m trainer.worker", description=__doc__)
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(argv)
    try:
        return run_worker(config_from_args(TrainConfig, args), stop)
    except DrivestreamError as exc:
        print(f"trainer worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
