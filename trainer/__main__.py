"""``python -m trainer {train,ps}``."""

from __future__ import annotations

import argparse
import sys

from trainer.signals import install_stop_handler


def main(argv: list[str] | None = None) -> int:
    install_stop_handler()  # first: a SIGTERM during startup is a clean stop, not -15
    from trainer import cli

    parser = argparse.ArgumentParser(prog="python -m trainer", description="drivestream trainer")
    verbs = parser.add_subparsers(dest="verb", required=True)
    train = verbs.add_parser("train", help="run a DDP trainer group (torchrun)")
    cli.add_train_arguments(train)
    train.set_defaults(run=cli.run_train)
    ps = verbs.add_parser("ps", help="run the parameter server")
    cli.add_ps_arguments(ps)
    ps.set_defaults(run=cli.run_ps)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
