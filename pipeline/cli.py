"""The ``drivestream`` command: one verb per service, every flag with a DRIVESTREAM_* twin.

Stage verbs are registered by name and imported only when used, so ``drivestream broker``
starts without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.supervisor import die_with_parent
from schemas.errors import DrivestreamError

# verb -> (module, add-arguments function, run function, one-line help)
VERBS: dict[str, tuple[str, str, str, str]] = {
    "broker": ("pipeline.broker_cli", "add_arguments", "run", "run the local Kafka broker"),
    "topics": ("pipeline.topics_cli", "add_arguments", "run", "create the pipeline's topics"),
    "simulate": (
        "ingest.cli",
        "add_simulate_arguments",
        "run_simulate",
        "simulate a fleet's sensor log",
    ),
    "import-log": (
        "ingest.cli",
        "add_import_arguments",
        "run_import",
        "import a CSV/Parquet vehicle log",
    ),
    "replay": (
        "ingest.cli",
        "add_replay_arguments",
        "run_replay",
        "replay a sensor log into Kafka",
    ),
    "ps": ("trainer.cli", "add_ps_arguments", "run_ps", "run the parameter server"),
    "train": ("trainer.cli", "add_train_arguments", "run_train", "run DDP trainers (torchrun)"),
    "pretrain": (
        "trainer.pretrain",
        "add_arguments",
        "run",
        "fit a warm start (--init-from) on a simulated log",
    ),
    "serve": ("inference.cli", "add_serve_arguments", "run_serve", "run the inference service"),
    "up": ("pipeline.up", "add_arguments", "run", "run the whole pipeline on the local broker"),
    "report": ("pipeline.report_cli", "add_arguments", "run", "measure latency and accuracy"),
    "tail": ("pipeline.tail", "add_arguments", "run", "print a topic's records as JSON lines"),
}


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``chosen`` verb's module is imported for its flags."""
    parser = argparse.ArgumentParser(
        prog="drivestream",
        description="Real-time train-and-infer pipeline for vehicle position prediction.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (module, add_name, _, help_text) in VERBS.items():
        sub_parser = sub.add_parser(verb, help=help_text, description=help_text)
        sub_parser.set_defaults(_verb=verb)
        if verb == chosen:
            _load(module, add_name)(sub_parser)
    return parser


def _load(module: str, name: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    die_with_parent()
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    module, _, run_name, _ = VERBS[args._verb]
    try:
        return int(_load(module, run_name)(args) or 0)
    except DrivestreamError as exc:
        print(f"drivestream {args._verb}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
