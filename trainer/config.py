"""Configuration of the trainer ranks and the parameter server (CLI flags + env twins)."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.config import setting
from schemas.errors import ConfigError
from schemas.kafka import KafkaSettings


@dataclass(frozen=True, kw_only=True)
class WindowConfig:
    """How frames become samples: label gap, lateness and the holdout split.

    The history gap limit is not here: it is ``InputSpec.max_gap_s``, part of the model
    contract, so training and serving read the one value the exported envelope carries.
    """

    max_label_gap_s: float = 0.5
    """Skip a sample whose ground truth would be interpolated across a wider gap."""
    allowed_lateness_s: float = 0.0
    """Extra wait after the label time before emitting, so delayed frames can still land."""
    max_frames: int = 256
    """Per-vehicle buffer bound (frames)."""
    holdout_fraction: float = 0.2
    """Share of vehicles (by hash of vehicle_id) kept out of training for online eval."""

    def __post_init__(self) -> None:
        if self.max_label_gap_s <= 0:
            raise ConfigError(f"max_label_gap_s must be > 0, got {self.max_label_gap_s}")
        if self.allowed_lateness_s < 0:
            raise ConfigError(f"allowed_lateness_s must be >= 0, got {self.allowed_lateness_s}")
        if self.max_frames < 8:
            raise ConfigError(f"max_frames must be >= 8, got {self.max_frames}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One DDP trainer group: ``drivestream train --nproc N``."""

    bootstrap: str = setting("127.0.0.1:9092", "Kafka host:port list")
    topic_prefix: str = setting("", "prefix of every topic name")
    group_id: str = setting("drivestream-trainer", "trainer group: commit id and PS tag")
    nproc: int = setting(1, "ranks (torchrun --nproc-per-node)")
    max_restarts: int = setting(5, "restarts in a row of a failed group (from its checkpoint)")
    device: str = setting("auto", "auto | cpu | cuda")
    checkpoint_dir: str = setting("./checkpoints", "where the trainer checkpoint lives")
    duration_s: float = setting(0.0, "stop after this long (0 = forever)")
    steps_per_s: float = setting(20.0, "lockstep training cadence cap")
    batch_size: int = setting(64, "samples per rank per step")
    fresh_fraction: float = setting(0.5, "share of a batch taken from the newest samples")
    replay_capacity: int = setting(20000, "replay buffer bound per rank")
    max_reuse: int = setting(16, "draws per sample over its life in the replay buffer")
    lr: float = setting(3e-3, "AdamW learning rate of the physics blend")
    residual_lr: float = setting(2e-4, "AdamW learning rate of the residual network")
    residual_warmup_samples: int = setting(
        5000, "residual lr ramps up linearly over this many trained samples (0 = off)"
    )
    weight_decay: float = setting(1e-2, "AdamW decay of the residual network (to physics)")
    huber_m: float = setting(1.0, "loss: quadratic below this displacement error (m)")
    init_from: str = setting("", "warm start from these weights (drivestream pretrain)")
    sync_every_steps: int = setting(20, "push delta / pull weights every N steps")
    status_every_s: float = setting(10.0, "status line period")
    seed: int = setting(0, "model init seed (must match the server's)")
    hidden: int = setting(64, "MLP hidden width (must match the server)")
    max_label_gap_s: float = setting(0.5, "label interpolation gap (s)")
    allowed_lateness_s: float = setting(0.0, "wait for late frames (s)")
    holdout_fraction: float = setting(0.2, "vehicles held out for eval")

    def __post_init__(self) -> None:
        KafkaSettings(bootstrap=self.bootstrap)  # raises ConfigError on a malformed list
        if self.nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {self.nproc}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.steps_per_s <= 0 or self.batch_size < 1 or self.sync_every_steps < 1:
            raise ConfigError("--steps-per-s, --batch-size and --sync-every-steps must be > 0")
        if not 0.0 <= self.fresh_fraction <= 1.0:
            raise ConfigError(f"--fresh-fraction must be in [0, 1], got {self.fresh_fraction}")
        if self.replay_capacity < self.batch_size:
            raise ConfigError("--replay-capacity must be >= --batch-size")
        if self.lr <= 0 or self.hidden < 8 or self.duration_s < 0 or self.max_restarts < 0:
            raise ConfigError("--lr must be > 0, --hidden >= 8, durations/restarts >= 0")
        if self.residual_lr <= 0 or self.weight_decay < 0 or self.huber_m <= 0:
            raise ConfigError("--residual-lr and --huber-m must be > 0, --weight-decay >= 0")
        if self.residual_warmup_samples < 0:
            raise ConfigError("--residual-warmup-samples must be >= 0")
        if self.max_reuse < 1:
            raise ConfigError(f"--max-reuse must be >= 1, got {self.max_reuse}")
        self.window()

    def window(self) -> WindowConfig:
        return WindowConfig(
            max_label_gap_s=self.max_label_gap_s,
            allowed_lateness_s=self.allowed_lateness_s,
            holdout_fraction=self.holdout_fraction,
        )


@dataclass(frozen=True, kw_only=True)
class PSConfig:
    """The parameter server: ``drivestream ps``."""

    bootstrap: str = setting("127.0.0.1:9092", "Kafka host:port list")
    topic_prefix: str = setting("", "prefix of every topic name")
    model_name: str = setting("drivestream-mlp", "name on `models`")
    checkpoint_dir: str = setting("./checkpoints", "server checkpoints")
    registry_dir: str = setting("./registry", "one .onnx + .json per exported version")
    duration_s: float = setting(0.0, "stop after this long (0 = forever)")
    max_staleness: int = setting(8, "reject deltas staler than this")
    server_lr: float = setting(1.0, "scale of every accepted delta")
    publish_every_s: float = setting(0.2, "weights -> ps-weights period")
    checkpoint_every_s: float = setting(5.0, "checkpoint period")
    export_every_s: float = setting(5.0, "ONNX export period")
    export_every_versions: int = setting(0, "also export after this many new versions (0 = off)")
    status_every_s: float = setting(10.0, "status line period")
    seed: int = setting(0, "model init seed (must match the trainers')")
    hidden: int = setting(64, "MLP hidden width")
    init_from: str = setting("", "version-0 weights from this file (drivestream pretrain)")
    signing_key: str = setting(
        "",
        "Ed25519 private key (PEM) that signs every export; created 0600 on first start, "
        "public key beside it as .pub for serve ('' = <checkpoint-dir>/ps-<model>.key)",
    )

    @property
    def signing_key_path(self) -> str:
        return self.signing_key or f"{self.checkpoint_dir}/ps-{self.model_name}.key"

    def __post_init__(self) -> None:
        KafkaSettings(bootstrap=self.bootstrap)
        if not self.model_name:
            raise ConfigError("--model-name must not be empty")
        if self.max_staleness < 0 or self.server_lr <= 0:
            raise ConfigError("--max-staleness must be >= 0 and --server-lr > 0")
        periods = (self.publish_every_s, self.checkpoint_every_s, self.export_every_s)
        if min(periods) <= 0 or self.status_every_s <= 0:
            raise ConfigError("publish/checkpoint/export/status periods must be > 0 seconds")
        if self.export_every_versions < 0 or self.duration_s < 0 or self.hidden < 8:
            raise ConfigError("--export-every-versions/--duration-s >= 0 and --hidden >= 8")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """A warm start fitted offline on a (simulated) log: ``drivestream pretrain``."""

    log: str = setting("sim_log.parquet", "sensor log to learn from (drivestream simulate)")
    out: str = setting("prior.pt", "weights file to write (train/ps --init-from)")
    hidden: int = setting(64, "MLP hidden width (must match train and ps)")
    seed: int = setting(0, "model init seed")
    steps_per_s: float = setting(20.0, "training cadence in log time")
    batch_size: int = setting(64, "samples per step")
    max_reuse: int = setting(16, "draws per sample")
    lr: float = setting(3e-3, "AdamW learning rate of the physics blend")
    residual_lr: float = setting(2e-4, "AdamW learning rate of the residual network")
    weight_decay: float = setting(1e-2, "AdamW decay of the residual network")
    threads: int = setting(2, "torch CPU threads")

    def __post_init__(self) -> None:
        if not self.log or not self.out:
            raise ConfigError("--log and --out must be set")
        if self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        self.train()

    def train(self) -> TrainConfig:
        """The TrainConfig the offline loop runs with (no holdout: every vehicle trains)."""
        return TrainConfig(
            hidden=self.hidden,
            seed=self.seed,
            steps_per_s=self.steps_per_s,
            batch_size=self.batch_size,
            max_reuse=self.max_reuse,
            lr=self.lr,
            residual_lr=self.residual_lr,
            weight_decay=self.weight_decay,
            holdout_fraction=0.0,
        )
