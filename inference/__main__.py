"""`python -m inference [flags]`: the inference service (same as `drivestream serve`)."""

from __future__ import annotations

import argparse
import sys

from inference.cli import add_serve_arguments, run_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference",
        description="Answer every sensor frame with predicted positions (ONNX model or physics).",
    )
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
