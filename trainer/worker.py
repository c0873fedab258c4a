"""One trainer rank under torchrun: ``python -m trainer.worker`` (started by ``train``).

Reads RANK/WORLD_SIZE/LOCAL_RANK from torchrun's environment (or runs alone as rank 0 of
1), joins the process group (NCCL on GPU, gloo on CPU), wires the rank to Kafka and runs
the lockstep loop until SIGTERM/SIGINT or ``--duration-s``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading

import torch
import torch.distributed as dist

from schemas import topics
from schemas.config import add_config_arguments, config_from_args
from schemas.errors import ConfigError, DrivestreamError
from schemas.kafka import KafkaSettings
from schemas.model_spec import DEFAULT_SPEC
from trainer.cli import setup_logging
from trainer.config import TrainConfig
from trainer.kafka_io import KafkaFrameSource, KafkaPSLink
from trainer.loop import TrainLoop

log = logging.getLogger("trainer.worker")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init_distributed(cfg: TrainConfig) -> torch.device:
    if "RANK" not in os.environ:  # started by hand: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible; use --device cpu")
    if use_cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device


def run_worker(cfg: TrainConfig) -> int:
    torch.set_num_threads(1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    device = _init_distributed(cfg)
    rank, world = dist.get_rank(), dist.get_world_size()
    settings = KafkaSettings.from_env(bootstrap=cfg.bootstrap)
    link = None
    source = None
    try:
        if rank == 0:
            link = KafkaPSLink(
                settings,
                cfg.topic_prefix + topics.PS_UPDATES,
                cfg.topic_prefix + topics.PS_WEIGHTS,
            )
        # the loop restores the checkpoint first: its offsets decide where sources start
        loop = TrainLoop(cfg, DEFAULT_SPEC, _LazySource(), link, device)
        source = KafkaFrameSource(
            settings,
            cfg.topic_prefix + topics.SENSORS,
            cfg.group_id,
            rank,
            world,
            offsets=loop.resumed_offsets,
        )
        loop.source = source
        log.info(
            "rank %d/%d on %s owns sensors partitions %s (start %s)",
            rank,
            world,
            device,
            source.partitions,
            source.positions() or "committed/earliest",
        )
        loop.run(stop.is_set)
        if rank == 0:
            log.info("stopped: %s", loop.status_line())
        return 0
    finally:
        if source is not None:
            source.close()
        if link is not None:
            link.close()
        dist.destroy_process_group()


class _LazySource:
    """Placeholder until the Kafka source exists (setup runs no ingest or sync)."""

    def poll(self, timeout_s: float) -> list:
        return []

    def positions(self) -> dict[int, int]:
        return {}

    def commit(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(prog="python -m trainer.worker", description=__doc__)
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(argv)
    try:
        return run_worker(config_from_args(TrainConfig, args))
    except DrivestreamError as exc:
        print(f"trainer worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
