"""Command-line verbs of the ingest stage: simulate, import-log, replay.

Each verb is an ``add_*_arguments(parser)`` / ``run_*(args) -> int`` pair that both
``python -m ingest`` and the ``drivestream`` command register.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schemas.config import add_config_arguments, config_from_args, setting
from schemas.errors import ConfigError
from schemas.kafka import BOOTSTRAP_ENV, KafkaSettings

# --- simulate ----------------------------------------------------------------------------


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    from ingest.simulator import SimConfig

    parser.add_argument("--out", default="sim_log.parquet", help="sensor log to write (Parquet)")
    parser.add_argument(
        "--truth", default=None, help="ground truth to write [default: <out>.truth.parquet]"
    )
    parser.add_argument(
        "--no-evaluate", action="store_true", help="skip the CV/CTRV baseline errors"
    )
    add_config_arguments(parser, SimConfig)


def truth_path_for(log_path: str | Path) -> Path:
    """Where ``simulate`` puts the truth next to a log: ``x.parquet`` -> ``x.truth.parquet``."""
    p = Path(log_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".truth.parquet")


def run_simulate(args: argparse.Namespace) -> int:
    import time

    from ingest.evaluate import baseline_errors
    from ingest.logs import write_table
    from ingest.simulator import SimConfig, simulate

    config = config_from_args(SimConfig, args)
    t0 = time.perf_counter()
    log_table, truth = simulate(config)
    elapsed = time.perf_counter() - t0
    out = write_table(log_table, args.out)
    truth_out = write_table(truth, args.truth or truth_path_for(args.out))
    print(
        f"simulated {config.vehicles} vehicles x {config.duration_s:g} s in {elapsed:.2f} s: "
        f"{log_table.num_rows} frames -> {out}, truth {truth.num_rows} rows -> {truth_out}"
    )
    if not args.no_evaluate:
        for model in ("cv", "ctrv"):
            print("  " + baseline_errors(log_table, truth, model).describe())
    return 0


# --- import-log --------------------------------------------------------------------------

_MAPPING_FLAGS = {
    "time": "time column",
    "time_unit": "time unit: ns, us, ms, s, or iso (date-time strings)",
    "lat": "latitude column (degrees)",
    "lon": "longitude column (degrees)",
    "x": "east position column (metres; replaces lat/lon)",
    "y": "north position column (metres)",
    "speed": "speed column",
    "speed_unit": "m/s, km/h, mph, knots",
    "heading": "heading/course/bearing column",
    "heading_unit": "deg or rad",
    "heading_convention": "compass (clockwise from north) or enu (CCW from east)",
    "yaw_rate": "yaw rate column",
    "yaw_rate_unit": "deg/s or rad/s",
    "yaw_rate_sign": "ccw (left turn positive) or cw",
    "accel": "longitudinal acceleration column (m/s^2)",
    "vehicle_id": "vehicle id column",
    "gnss_quality": "GNSS fix quality column",
}


def _import_settings() -> type:
    """Flags of ``import-log`` as a config dataclass, so each has a DRIVESTREAM_* twin."""
    from ingest.mapping import PRESETS

    fields: list[tuple[str, type, object]] = [
        ("out", str, setting("", "canonical sensor log to write (Parquet), required")),
        ("preset", str, setting("", f"mapping preset: {', '.join(sorted(PRESETS))}")),
        ("mapping", str, setting("", "JSON mapping file (keys as the --map-* flags)")),
        ("vehicle_id", str, setting("", "vehicle id ('' = id column, else the file name)")),
        ("origin", str, setting("", "LAT,LON of the local frame ('' = first fix)")),
        ("rate_hz", float, setting(10.0, "output frame rate; fixes are interpolated (0 = keep)")),
        ("max_fix_gap_s", float, setting(2.0, "leave a gap where fixes are further apart")),
        ("force", bool, setting(False, "use stated units even where the data contradict them")),
        ("repeat_window_s", float, setting(1.0, "a repeated fix is kept once per window")),
        ("derive_window_s", float, setting(1.0, "window to derive speed/heading/yaw rate")),
        ("print_mapping", bool, setting(False, "print the mapping used")),
    ]
    fields += [(f"map_{name}", str, setting("", text)) for name, text in _MAPPING_FLAGS.items()]
    return dataclasses.make_dataclass("ImportSettings", fields, frozen=True, kw_only=True)


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Import a CSV/TSV/Parquet vehicle log. Columns, units and conventions are detected "
        "and checked against the GNSS track; flags state them instead (a column flag of "
        "'none' ignores that quantity). The decisions are printed to stderr."
    )
    parser.add_argument("source", help="CSV/TSV or Parquet log to import")
    add_config_arguments(parser, _import_settings())


def run_import(args: argparse.Namespace) -> int:
    from ingest.auto import import_file
    from ingest.importer import ImportOptions
    from ingest.logs import write_table
    from ingest.mapping import given_fields

    cfg: Any = config_from_args(_import_settings(), args)
    if not cfg.out:
        raise ConfigError("--out (DRIVESTREAM_OUT) is required: where to write the Parquet log")
    overrides = {n: getattr(cfg, f"map_{n}") or None for n in _MAPPING_FLAGS}
    given = given_fields(cfg.preset or None, cfg.mapping or None, **overrides)
    origin = None
    if cfg.origin:
        try:
            lat, lon = (float(v) for v in cfg.origin.split(","))
        except ValueError:
            raise ConfigError(f"--origin must be LAT,LON, got {cfg.origin!r}") from None
        origin = (lat, lon)
    options = ImportOptions(
        vehicle_id=cfg.vehicle_id or None,
        origin=origin,
        repeat_window_s=cfg.repeat_window_s,
        derive_window_s=cfg.derive_window_s,
        rate_hz=cfg.rate_hz,
        max_fix_gap_s=cfg.max_fix_gap_s,
    )
    table, report, lines, mapping = import_file(args.source, given, options, force=cfg.force)
    print("\n".join(lines), file=sys.stderr)
    if cfg.print_mapping:
        print(mapping.to_json())
    out = write_table(table, cfg.out)
    print(report.describe())
    print(f"wrote {out}")
    return 0


# --- replay ------------------------------------------------------------------------------


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    from ingest.replayer import ReplayConfig

    parser.add_argument("log", help="canonical sensor log (Parquet)")
    parser.add_argument(
        "--bootstrap",
        default=None,
        help=f"Kafka bootstrap host:port [env {BOOTSTRAP_ENV}; default 127.0.0.1:9092]",
    )
    add_config_arguments(parser, ReplayConfig)


@contextlib.contextmanager
def _stop_on_signals(stop) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """SIGINT/SIGTERM ask the replay to stop (it flushes and reports); a second one aborts."""
    if threading_main() is False:
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hits = []

    def handler(signum: int, frame: object) -> None:
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
        stop()

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_replay(args: argparse.Namespace) -> int:
    from ingest.logs import read_log
    from ingest.replayer import ReplayConfig, Replayer

    config = config_from_args(ReplayConfig, args)
    settings = KafkaSettings.from_env(bootstrap=getattr(args, "bootstrap", None))
    table = read_log(args.log)
    replayer = Replayer(table, config, settings=settings)
    with _stop_on_signals(replayer.stop):
        summary = replayer.run()
    print(summary.describe())
    return 1 if summary.errors else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ingest VERB ...``"""
    parser = argparse.ArgumentParser(prog="python -m ingest", description="drivestream ingest")
    sub = parser.add_subparsers(dest="verb", required=True)
    verbs = {
        "simulate": (add_simulate_arguments, run_simulate, "simulate a fleet's sensor log"),
        "import-log": (add_import_arguments, run_import, "import a CSV/Parquet vehicle log"),
        "replay": (add_replay_arguments, run_replay, "replay a sensor log into Kafka"),
    }
    for verb, (add, run, help_text) in verbs.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return int(args._run(args))
    except ConfigError as exc:
        print(f"{args.verb}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os._exit(1)
