"""The lockstep DDP training loop of one rank, independent of Kafka.

Every step, every rank: ingests what its source has, scores new samples with the current
model before training on them (test-then-train), then runs one collective step on a batch
from its replay buffer (bounded by the buffer's reuse budget, so it may be small or empty).
A rank with no draws contributes a zero-weight batch, and the decision to step (and to
stop) is taken from an all-reduced count, so uneven partitions never hang a collective.
Every ``sync_every_steps`` rank 0 pushes the group's delta to the parameter server
(waiting for delivery), pulls the newest weights and broadcasts them; it also checkpoints.
While the server has not yet processed the previous push, rank 0 holds the next one back
and the delta keeps accumulating (one fresh delta instead of a stale backlog).

A push the broker does not acknowledge (the broker is down) stops nothing: the group keeps
training from its buffers, and rank 0 tries again with backoff, each time with the whole
change since the same anchor, named by ``anchor_id``. An unacknowledged push may still land
later; the server merges only what a delta adds to the last one it merged from that anchor,
so nothing is applied twice.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from schemas.errors import CheckpointError
from schemas.model_spec import InputSpec
from schemas.sensor import SensorFrame
from trainer import metrics as m
from trainer.checkpoint import read_if_exists, write_atomic
from trainer.config import TrainConfig
from trainer.kafka_io import PushError
from trainer.model import (
    build_model,
    build_optimizer,
    displacement_loss,
    load_prior,
    load_trainable,
    trainable_state,
)
from trainer.replay import ReplayBuffer
from trainer.windowing import Sample, Windower, stack
from trainer.wire import Delta, Tensors, Weights

log = logging.getLogger(__name__)

METRICS_DECAY = 0.97
"""Per-sync decay of the online error sums (about a 20-sync half-life)."""
IDLE_VEHICLE_NS = 60 * 1_000_000_000
"""A vehicle silent this long (sensor clock) loses its window buffer."""
FINAL_PUSH_WAIT_S = 10.0
"""How long the stop sync waits for the server to process the previous push."""
PUSH_TIMEOUT_S = 10.0
"""Longest wait for the broker to acknowledge a push (training waits meanwhile)."""
RETRY_TIMEOUT_S = 2.0
"""The same while earlier pushes failed: a broker that is down costs little training."""
MAX_BACKOFF_S = 15.0
"""Longest pause between push attempts while the broker does not acknowledge."""


class FrameSource(Protocol):
    """Where a rank's frames come from (Kafka partitions in production, lists in tests)."""

    def poll(self, timeout_s: float) -> list[tuple[list[SensorFrame], int]]:
        """Records as (frames, t_produce_ns); may return early or empty."""
        ...

    def positions(self) -> dict[int, int]:
        """Next offset per owned partition."""
        ...

    def commit(self) -> None: ...


class NullSource:
    """A source with no data: a placeholder until the real one exists, and for benchmarks."""

    def poll(self, timeout_s: float) -> list[tuple[list[SensorFrame], int]]:
        return []

    def positions(self) -> dict[int, int]:
        return {}

    def commit(self) -> None:
        pass


class PSLink(Protocol):
    """Rank 0's channel to the parameter server."""

    def push(self, delta: Delta, timeout_s: float) -> None:
        """Deliver ``delta``; return only once it is durably on its way to the server, raise
        :class:`~trainer.kafka_io.PushError` if it is not acknowledged in ``timeout_s``."""
        ...

    def ready(self) -> bool:
        """Whether the server's published weights have processed the previous push."""
        ...

    def latest(self) -> Weights | None:
        """Newest weights received so far (non-blocking)."""
        ...


@dataclass
class Counters:
    steps: int = 0
    samples: int = 0
    scored: int = 0
    pushes: int = 0
    pulls: int = 0
    held: int = 0
    """Syncs whose push was held back (the server had not processed the previous one)."""
    failed_pushes: int = 0
    """Pushes the broker did not acknowledge (retried with the whole delta)."""
    empty_steps: int = 0


@dataclass
class PushBackoff:
    """When rank 0 tries again after pushes the broker did not acknowledge."""

    failures: int = 0
    """Consecutive unacknowledged pushes."""
    retry_at: float = 0.0
    """Monotonic time before which no push is tried."""

    def due(self, now: float) -> bool:
        return now >= self.retry_at

    def timeout_s(self) -> float:
        return RETRY_TIMEOUT_S if self.failures else PUSH_TIMEOUT_S

    def failed(self, now: float) -> float:
        """Count a failure; returns the pause before the next attempt."""
        self.failures += 1
        pause = min(MAX_BACKOFF_S, 2.0 ** (self.failures - 1))
        self.retry_at = now + pause
        return pause

    def delivered(self) -> int:
        """Reset; returns how many attempts had failed before this one."""
        failed, self.failures, self.retry_at = self.failures, 0, 0.0
        return failed


class TrainLoop:
    """One rank of a trainer group; call :meth:`run` (or :meth:`step` in tests)."""

    def __init__(
        self,
        cfg: TrainConfig,
        spec: InputSpec,
        source: FrameSource,
        link: PSLink | None,
        device: torch.device | None = None,
        on_scored: Callable[[list[Sample], np.ndarray], None] | None = None,
    ) -> None:
        self.cfg, self.spec, self.source, self.link = cfg, spec, source, link
        self.on_scored = on_scored
        """Called with each scored batch and the model's predictions (offline benchmarks)."""
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = device or torch.device("cpu")
        model = build_model(spec, cfg.hidden, cfg.seed)
        if cfg.init_from:  # the server must start from the same file (ps --init-from)
            load_prior(cfg.init_from, model)
        self.model = model.to(self.device)
        self.optim = build_optimizer(self.model, cfg.lr, cfg.residual_lr, cfg.weight_decay)
        self.windower = Windower(spec, cfg.window())
        self.replay = ReplayBuffer(
            spec, cfg.replay_capacity, cfg.max_reuse, seed=cfg.seed + self.rank
        )
        self.metrics = m.OnlineMetrics(spec.horizons_s)
        self.counters = Counters()
        self.base_version = 0
        self.anchor: Tensors = trainable_state(self.model)
        self.anchor_id = secrets.token_hex(8)
        self.backoff = PushBackoff()
        self.group_metrics: dict[str, float] = {}
        self._label_ns = 0
        self._label_produce_ns = 0
        self._samples_since_sync = 0
        self._unpushed_samples = 0
        self._unpushed_steps = 0
        self.ckpt_path = Path(cfg.checkpoint_dir) / f"trainer-{cfg.group_id}.pt"
        self.resumed_offsets: dict[int, int] = {}
        self._restore_or_pull()
        self.ddp = DDP(self.model)  # broadcasts rank 0's parameters to every rank

    # ---- setup ----------------------------------------------------------------------------

    def _restore_or_pull(self) -> None:
        """Rank 0 picks the starting point (checkpoint, else newest server weights)."""
        payload: list[Any] = [None]
        if self.rank == 0:
            raw = read_if_exists(self.ckpt_path)
            if raw is not None:
                try:
                    payload[0] = torch.load(io.BytesIO(raw), weights_only=True)
                except Exception as exc:  # torch raises many types for a torn/foreign file
                    raise CheckpointError(
                        f"cannot load {self.ckpt_path}: {exc}; move it away to start fresh"
                    ) from exc
                log.info("resuming from %s", self.ckpt_path)
        dist.broadcast_object_list(payload, src=0)
        ckpt = payload[0]
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.optim.load_state_dict(ckpt["optim"])
            self.base_version = int(ckpt["base_version"])
            self.anchor = {k: v.numpy() for k, v in ckpt["anchor"].items()}
            self.anchor_id = str(ckpt.get("anchor_id") or self.anchor_id)
            self.counters.steps = int(ckpt["steps"])
            self.counters.samples = int(ckpt["samples"])
            self._unpushed_samples = int(ckpt.get("unpushed_samples", 0))
            self._unpushed_steps = int(ckpt.get("unpushed_steps", 0))
            self.resumed_offsets = {int(p): int(o) for p, o in ckpt["offsets"].items()}
        # a checkpoint holding a held-back delta keeps it: it is pushed at the next sync
        self._pull(offer=self._unpushed_steps == 0)

    # ---- the step -------------------------------------------------------------------------

    def ingest(self, deadline: float) -> None:
        """Poll the source until ``deadline``; score and buffer the samples completed."""
        new = []
        while True:
            left = deadline - time.monotonic()
            for frames, produced in self.source.poll(max(0.0, left)):
                new.extend(self.windower.add_many(frames, produced))
            if left <= 0:
                break
        if not new:
            return
        windows, targets = stack(new)
        holdout = np.array([s.holdout for s in new])
        with torch.no_grad():
            self.model.eval()
            pred = self.model(torch.from_numpy(windows).to(self.device)).cpu().numpy()
        preds = {
            "model": pred,
            "cv": m.constant_velocity(windows, self.spec.horizons_s),
            "ctrv": m.ctrv(windows, self.spec.horizons_s),
        }
        self.metrics.update(holdout, targets, preds)
        self.counters.scored += len(new)
        if self.on_scored is not None:
            self.on_scored(new, pred)
        self.replay.add([s for s in new if not s.holdout])

    def step(self, stop: bool = False) -> bool:
        """One lockstep training step; returns True when any rank asked to stop."""
        batch = self.replay.sample(self.cfg.batch_size, self.cfg.fresh_fraction)
        n_local = len(batch)
        flags = torch.tensor([float(n_local), float(stop)], dtype=torch.float64, device=self.device)
        dist.all_reduce(flags)
        n_total, stop_any = int(flags[0].item()), flags[1].item() > 0
        if n_total > 0:
            if n_local:
                x = torch.from_numpy(batch.windows).to(self.device)
                y = torch.from_numpy(batch.targets).to(self.device)
                w = torch.ones(n_local, device=self.device)
            else:  # zero-weight batch: joins the gradient all-reduce, changes nothing
                x = torch.zeros(1, self.spec.history, len(self.spec.features), device=self.device)
                y = torch.zeros(1, len(self.spec.horizons_s), 2, device=self.device)
                w = torch.zeros(1, device=self.device)
            self.ddp.train()
            # DDP averages gradients over ranks; scale so the result is the global mean
            loss = displacement_loss(self.ddp(x), y, w, self.cfg.huber_m) * (self.world / n_total)
            self.optim.zero_grad(set_to_none=False)
            loss.backward()
            self.optim.param_groups[-1]["lr"] = self.residual_lr()
            self.optim.step()
        else:
            self.counters.empty_steps += 1
        self.counters.steps += 1
        self._samples_since_sync += batch.fresh
        self._label_ns = max(self._label_ns, batch.label_ns)
        self._label_produce_ns = max(self._label_produce_ns, batch.label_produce_ns)
        self._unpushed_steps += 1
        if self.counters.steps % self.cfg.sync_every_steps == 0 or stop_any:
            self.sync(final=stop_any)
        return stop_any

    def residual_lr(self) -> float:
        """The residual network's lr, ramped over its first trained samples: it has many
        weights and, fitted to one vehicle's first seconds, learns the manoeuvre of the
        moment (which a served model, a few seconds behind, no longer meets). The count is
        the group's (all-reduced at sync), so every rank uses the same lr."""
        ramp = self.cfg.residual_warmup_samples
        return self.cfg.residual_lr * (min(1.0, self.counters.samples / ramp) if ramp else 1.0)

    # ---- sync with the parameter server ---------------------------------------------------

    def sync(self, final: bool = False) -> None:
        """Gather group stats, push the delta, pull newer weights, checkpoint, commit.

        ``final`` (the stop sync) waits up to ``FINAL_PUSH_WAIT_S`` for the server to process
        the previous push so the last delta goes out; if it does not (or the broker does not
        acknowledge it), it stays in the checkpoint (model minus anchor) and is pushed later.
        """
        stats = torch.tensor(
            [self._label_ns, self._label_produce_ns], dtype=torch.int64, device=self.device
        )
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        samples = torch.tensor([self._samples_since_sync], dtype=torch.int64, device=self.device)
        dist.all_reduce(samples)
        err = torch.from_numpy(self.metrics.to_array()).to(self.device)
        dist.all_reduce(err)
        offsets: list[Any] = [None] * self.world
        dist.all_gather_object(offsets, self.source.positions())
        group = m.OnlineMetrics(self.spec.horizons_s)
        group.add_array(err.cpu().numpy())
        self.group_metrics = group.summary()
        self.metrics.decay(METRICS_DECAY)
        self._samples_since_sync = 0
        self.windower.evict_idle(self.windower.newest_ns - IDLE_VEHICLE_NS)
        merged = {int(p): int(o) for part in offsets for p, o in part.items()}
        self.counters.samples += int(samples.item())
        self._unpushed_samples += int(samples.item())
        pushed = False
        if self.rank == 0 and self.link is not None and self._may_push(final):
            pushed = self._push(self._delta(stats, merged))
            if pushed:  # what was pushed must never be pushed again
                self.anchor = trainable_state(self.model)
                self._new_anchor()
                self._unpushed_samples = self._unpushed_steps = 0
        # pulling while a push is held back would overwrite the unpushed training
        self._pull(offer=pushed)
        if self.rank == 0:
            self._checkpoint(merged)
        self.source.commit()

    def _may_push(self, final: bool) -> bool:
        """The server processed the previous push (the stop sync waits a little for it),
        and no backoff after unacknowledged pushes is running."""
        assert self.link is not None
        if not self.backoff.due(time.monotonic()):
            self.counters.held += 1
            return False
        deadline = time.monotonic() + (FINAL_PUSH_WAIT_S if final else 0.0)
        while not self.link.ready():
            if time.monotonic() >= deadline:
                self.counters.held += 1
                return False
            time.sleep(0.05)
        return True

    def _delta(self, stats: torch.Tensor, offsets: dict[int, int]) -> Delta:
        """Everything trained since the anchor, as one delta measured from it."""
        current = trainable_state(self.model)
        return Delta(
            group=self.cfg.group_id,
            base_version=self.base_version,
            tensors={k: current[k] - self.anchor[k] for k in current},
            steps=self._unpushed_steps,
            samples=self._unpushed_samples,
            trained_until_ns=int(stats[0].item()),
            trained_until_produce_ns=int(stats[1].item()),
            sensor_offsets=offsets,
            metrics=self.group_metrics,
            anchor_id=self.anchor_id,
        )

    def _push(self, delta: Delta) -> bool:
        """Push ``delta``; False (and a backoff) when the broker did not acknowledge it."""
        assert self.link is not None
        try:
            self.link.push(delta, timeout_s=self.backoff.timeout_s())
        except PushError as exc:
            self.counters.failed_pushes += 1
            pause = self.backoff.failed(time.monotonic())
            if self.backoff.failures == 1 or self.backoff.failures % 10 == 0:
                log.warning(
                    "%s; training goes on, the delta (%d steps) waits: attempt %d, next in %.0f s",
                    exc,
                    delta.steps,
                    self.backoff.failures,
                    pause,
                )
            return False
        failed = self.backoff.delivered()
        if failed:
            log.info("push delivered after %d unacknowledged attempts", failed)
        self.counters.pushes += 1
        return True

    def _new_anchor(self) -> None:
        """The anchor moved: later deltas are measured from it, under a new name."""
        self.anchor_id = secrets.token_hex(8)

    def _pull(self, offer: bool = True) -> None:
        """Rank 0 offers newer server weights (if ``offer``); every rank loads the same ones."""
        payload: list[Any] = [None]
        if self.rank == 0 and self.link is not None and offer:
            w = self.link.latest()
            if w is not None and w.version > self.base_version:
                payload[0] = (w.version, w.tensors)
        dist.broadcast_object_list(payload, src=0)
        if payload[0] is not None:
            version, tensors = payload[0]
            load_trainable(self.model, tensors)
            self.anchor = {k: np.array(v, dtype=np.float32) for k, v in tensors.items()}
            self._new_anchor()
            self.base_version = int(version)
            self.counters.pulls += 1

    def _checkpoint(self, offsets: dict[int, int]) -> None:
        buf = io.BytesIO()
        torch.save(
            {
                "model": self.model.state_dict(),
                "optim": self.optim.state_dict(),
                "base_version": self.base_version,
                "anchor": {k: torch.from_numpy(v) for k, v in self.anchor.items()},
                "anchor_id": self.anchor_id,
                "steps": self.counters.steps,
                "samples": self.counters.samples,
                "unpushed_samples": self._unpushed_samples,
                "unpushed_steps": self._unpushed_steps,
                "offsets": offsets,
            },
            buf,
        )
        write_atomic(self.ckpt_path, buf.getvalue())

    # ---- driver ---------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Step at ``steps_per_s`` until any rank's ``should_stop()`` or the duration ends."""
        period = 1.0 / self.cfg.steps_per_s
        start = last_status = time.monotonic()
        while True:
            self.ingest(time.monotonic() + period)
            over = self.cfg.duration_s > 0 and time.monotonic() - start >= self.cfg.duration_s
            if self.step(stop=should_stop() or over):
                break
            if self.rank == 0 and time.monotonic() - last_status >= self.cfg.status_every_s:
                last_status = time.monotonic()
                log.info("%s", self.status_line())

    def status_line(self) -> str:
        g = self.group_metrics
        h = f"{self.spec.max_horizon_s:g}"
        fde = "/".join(f"{g.get(f'holdout.{p}.fde@{h}', float('nan')):.2f}" for p in m.PREDICTORS)
        dropped = {k: n for k, n in self.windower.stats.as_dict().items() if k != "samples" and n}
        return (
            f"train rank=0/{self.world} steps={self.counters.steps} "
            f"samples={self.counters.samples} version={self.base_version} "
            f"buffer={len(self.replay)} vehicles={len(self.windower)} "
            f"holdout_fde@{h}s model/cv/ctrv={fde} "
            f"not_sampled(rank 0)={dropped or 0}"
        )
