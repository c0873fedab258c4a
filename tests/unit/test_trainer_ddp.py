"""DDP lockstep loop on CPU with gloo at world sizes 1 and 2 (no broker: in-memory source).

Rank 1 gets no data at all: it must contribute zero-weight batches and never hang a
collective, and every rank must end with the same weights.
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import SensorFrame
from trainer.config import TrainConfig
from trainer.loop import TrainLoop
from trainer.model import trainable_state
from trainer.wire import Delta, Weights

STEPS = 12
NS = 1_000_000_000


def fleet(vehicles: int, seconds: float) -> list[tuple[list[SensorFrame], int]]:
    """Records of simple CTRV vehicles, in time order (one frame per record)."""
    out = []
    for k in range(int(seconds * 10)):
        t = k * 0.1
        for v in range(vehicles):
            w, speed = 0.05 * (v - vehicles / 2), 8.0 + v
            h = w * t
            x = speed * t if abs(w) < 1e-9 else speed / w * math.sin(h)
            y = 0.0 if abs(w) < 1e-9 else speed / w * (1 - math.cos(h))
            heading = math.atan2(math.sin(h), math.cos(h))
            f = SensorFrame(f"veh-{v}", k, round(t * NS), x, y, speed, heading, w, 0.0)
            out.append(([f], round(t * NS)))
    return out


class ListSource:
    def __init__(self, records: list, per_poll: int) -> None:
        self.records, self.per_poll, self.pos = records, per_poll, 0

    def poll(self, timeout_s: float) -> list:
        chunk = self.records[self.pos : self.pos + self.per_poll]
        self.pos += len(chunk)
        return chunk

    def positions(self) -> dict[int, int]:
        return {0: self.pos} if self.records else {}

    def commit(self) -> None:
        pass


class FakeLink:
    """Records pushes; after the first push offers version 5 (the pushed delta applied)."""

    def __init__(self) -> None:
        self.pushes: list[Delta] = []
        self.offer: Weights | None = None

    def push(self, delta: Delta, timeout_s: float) -> None:
        self.pushes.append(delta)
        if self.offer is None:
            self.offer = Weights(
                version=5, tensors={k: v * 0 + 0.01 for k, v in delta.tensors.items()}
            )

    def ready(self) -> bool:
        return True

    def latest(self) -> Weights | None:
        return self.offer


def _rank(rank: int, world: int, store: str, out_dir: str, ckpt_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    cfg = TrainConfig(
        checkpoint_dir=ckpt_dir, batch_size=32, sync_every_steps=5, hidden=32, holdout_fraction=0.0
    )
    records = fleet(6, 8.0) if rank == 0 else []  # rank 1: a partition with no data
    link = FakeLink() if rank == 0 else None
    loop = TrainLoop(cfg, DEFAULT_SPEC, ListSource(records, per_poll=60), link)
    initial = trainable_state(loop.model)
    for _ in range(STEPS):
        loop.ingest(time.monotonic())
        loop.step()
    stopped = loop.step(stop=rank == world - 1)  # one rank asks; every rank must see it
    result = {
        "weights": trainable_state(loop.model),
        "initial": initial,
        "stopped": stopped,
        "base_version": loop.base_version,
        "samples": loop.counters.samples,
        "pushes": len(link.pushes) if link else 0,
        "push_samples": [d.samples for d in link.pushes] if link else [],
    }
    # a restarted group resumes from the checkpoint rank 0 wrote at the last sync
    again = TrainLoop(cfg, DEFAULT_SPEC, ListSource([], 1), None)
    result["resumed"] = (again.counters.steps, again.base_version, again.resumed_offsets)
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    dist.destroy_process_group()


def run_world(world: int, tmp_path: Path) -> list[dict]:
    ctx = mp.start_processes(
        _rank,
        args=(world, str(tmp_path / "store"), str(tmp_path), str(tmp_path / "ckpt")),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"world size {world}: ranks hung")
    return [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(world)]


@pytest.mark.parametrize("world", [1, 2])
def test_lockstep_ranks_stay_equal_and_an_idle_rank_does_not_hang(world: int, tmp_path) -> None:
    results = run_world(world, tmp_path)
    r0 = results[0]
    for r in results:
        assert r["stopped"], "a stop asked by one rank reaches every rank"
        assert r["base_version"] == 5, "every rank loaded the pulled weights"
        for k, v in r0["weights"].items():
            np.testing.assert_array_equal(r["weights"][k], v)
    assert r0["pushes"] == 3  # syncs at steps 5 and 10, and on stop
    assert sum(r0["push_samples"]) == r0["samples"] > 0
    changed = any(not np.array_equal(r0["weights"][k], r0["initial"][k]) for k in r0["weights"])
    assert changed, "training moved the weights"
    steps, version, offsets = r0["resumed"]
    assert (steps, version) == (STEPS + 1, 5) and offsets[0] > 0
