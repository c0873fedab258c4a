"""Offline training on a recorded log in sensor time: ``drivestream pretrain``.

:func:`replay_log` drives the production :class:`~trainer.loop.TrainLoop` (world size 1,
gloo, no parameter server) over a canonical sensor log, releasing frames by their sensor
clock and stepping at ``steps_per_s`` of log time. It is the one offline driver: the
``pretrain`` verb uses it to fit a warm start on a simulated fleet log
(``drivestream simulate --out sim.parquet``), and bench/bench_online.py to score online
learning test-then-train exactly as the trainer does it.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from schemas.config import add_config_arguments, config_from_args
from schemas.errors import ConfigError, DrivestreamError
from schemas.model_spec import DEFAULT_SPEC, InputSpec
from schemas.sensor import SensorFrame, table_to_frames
from trainer.config import PretrainConfig, TrainConfig
from trainer.loop import TrainLoop
from trainer.model import save_prior

log = logging.getLogger("trainer.pretrain")


class LogSource:
    """A FrameSource over a list of frames: :meth:`advance` releases them by sensor time."""

    def __init__(self, frames: list[SensorFrame]) -> None:
        self.frames = sorted(frames, key=lambda f: f.t_event_ns)
        self._times = [f.t_event_ns for f in self.frames]
        self.pos = self.released = 0

    @property
    def start_ns(self) -> int:
        return self._times[0] if self._times else 0

    @property
    def end_ns(self) -> int:
        return self._times[-1] if self._times else 0

    def advance(self, t_ns: int) -> None:
        """Make every frame with t_event_ns <= ``t_ns`` available to :meth:`poll`."""
        self.released = bisect.bisect_right(self._times, t_ns)

    def poll(self, timeout_s: float) -> list[tuple[list[SensorFrame], int]]:
        out = [([f], f.t_event_ns) for f in self.frames[self.pos : self.released]]
        self.pos = self.released
        return out

    def positions(self) -> dict[int, int]:
        return {0: self.pos}

    def commit(self) -> None:
        pass


@contextmanager
def local_group() -> Iterator[None]:
    """A one-process gloo group (what TrainLoop's collectives need), torn down after."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def replay_log(
    cfg: TrainConfig,
    frames: list[SensorFrame],
    spec: InputSpec = DEFAULT_SPEC,
    on_scored: Callable | None = None,
    on_step: Callable[[TrainLoop, int], None] | None = None,
) -> TrainLoop:
    """Run a TrainLoop over ``frames`` in sensor time; returns it when the log is spent.

    Needs a process group (:func:`local_group`). ``on_step(loop, t_ns)`` runs before each
    step's ingest (e.g. to snapshot the model at a serving export cadence).
    """
    source = LogSource(frames)
    with tempfile.TemporaryDirectory(prefix="ds-offline-") as ckpt:
        loop = TrainLoop(replace(cfg, checkpoint_dir=ckpt), spec, source, None, on_scored=on_scored)
        period_ns = round(1e9 / cfg.steps_per_s)
        t = source.start_ns
        while t <= source.end_ns + period_ns:
            source.advance(t)
            if on_step is not None:
                on_step(loop, t)
            loop.ingest(time.monotonic())
            loop.step()
            t += period_ns
    return loop


def pretrain(cfg: PretrainConfig) -> TrainLoop:
    """Fit a warm start on ``cfg.log`` and write its weights to ``cfg.out``."""
    try:
        frames = table_to_frames(pq.read_table(cfg.log))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--log {cfg.log}: cannot read a sensor log: {exc}") from exc
    if not frames:
        raise ConfigError(f"--log {cfg.log} holds no frames")
    torch.set_num_threads(cfg.threads)
    with local_group():
        started = time.monotonic()
        loop = replay_log(cfg.train(), frames)
        save_prior(cfg.out, loop.model)
    log.info(
        "wrote %s after %d steps, %d samples in %.0f s",
        cfg.out,
        loop.counters.steps,
        loop.counters.samples,
        time.monotonic() - started,
    )
    return loop


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``pretrain``: every PretrainConfig field (--log, --out, --hidden, ...)."""
    add_config_arguments(parser, PretrainConfig)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO)
    try:
        pretrain(config_from_args(PretrainConfig, args))
    except DrivestreamError as exc:
        print(f"pretrain: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.pretrain", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
