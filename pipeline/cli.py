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

from schemas.errors import DrivestreamError

# verb -> (module, add-arguments function, run function, one-line help)
VERBS: dict[str, tuple[str, str, str, str]] = {
    "broker": ("pipeline.broker_cli", "add_arguments", "run", "run the local Kafka broker"),
    "topics": ("pipeline.topics_cli", "add_arguments", "run", "create the pipeline's topics"),
    "report": ("pipeline.report_cli", "add_arguments", "run", "measure latency and accuracy"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drivestream",
        description="Real-time train-and-infer pipeline for vehicle position prediction.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (module, add_name, _, help_text) in VERBS.items():
        sub_parser = sub.add_parser(verb, help=help_text, description=help_text)
        sub_parser.set_defaults(_verb=verb)
        if "--help" in sys.argv or "-h" in sys.argv or _wants(verb):
            _load(module, add_name)(sub_parser)
    return parser


def _wants(verb: str) -> bool:
    return verb in sys.argv[1:3]


def _load(module: str, name: str) -> Callable[..., object]:
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args(argv)
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
