"""``python -m ingest simulate|import-log|replay``."""

from ingest.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
