"""The body of one trainer rank (entry point: ``python -m trainer.worker``).

Reads RANK/WORLD_SIZE/LOCAL_RANK from torchrun's environment (or runs alone as rank 0 of
1), joins the process group (NCCL on GPU, gloo on CPU), wires the rank to Kafka and runs
the lockstep loop until ``stop`` is set (SIGTERM/SIGINT) or ``--duration-s``.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from schemas import topics
from schemas.errors import ConfigError
from schemas.kafka import KafkaSettings
from schemas.model_spec import DEFAULT_SPEC
from trainer.config import TrainConfig
from trainer.kafka_io import KafkaFrameSource, KafkaPSLink
from trainer.loop import FINAL_PUSH_WAIT_S, PUSH_TIMEOUT_S, NullSource, TrainLoop
from trainer.signals import set_stop_grace

log = logging.getLogger("trainer.worker")

RANK_STOP_GRACE_S = FINAL_PUSH_WAIT_S + PUSH_TIMEOUT_S + 5.0
"""A running rank's time to stop cleanly after SIGTERM (under torchrun's 30 s)."""
GROUP_TIMEOUT = timedelta(seconds=RANK_STOP_GRACE_S + 15.0)
"""How long a collective (or building the group) waits for a peer: longer than a peer's
final sync, so only a dead or unreachable peer runs into it."""


def _init_distributed(cfg: TrainConfig) -> torch.device:
    # started by hand: a group of one, rendezvous in process (no port, no env)
    alone = "RANK" not in os.environ
    store = dist.HashStore() if alone else None
    rank, world = (0, 1) if alone else (-1, -1)  # -1: from torchrun's environment
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible; use --device cpu")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl",
            device_id=device,
            store=store,
            rank=rank,
            world_size=world,
            timeout=GROUP_TIMEOUT,
        )
    else:
        device = torch.device("cpu")
        dist.init_process_group(
            "gloo", store=store, rank=rank, world_size=world, timeout=GROUP_TIMEOUT
        )
    return device


def run_worker(cfg: TrainConfig, stop: threading.Event) -> int:
    torch.set_num_threads(1)
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
        loop = TrainLoop(cfg, DEFAULT_SPEC, NullSource(), link, device)
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
        set_stop_grace(RANK_STOP_GRACE_S)  # the final sync may wait for the server and the broker
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
