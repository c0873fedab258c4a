"""The parameter server: ``drivestream ps`` / ``python -m trainer.ps``.

Applies deltas from ps-updates (one partition, so one total order) to versioned master
weights with the staleness-aware merge, publishes the weights to the compacted ps-weights
topic for trainers to pull, checkpoints atomically together with the ps-updates offset,
and exports ONNX to ``models`` and the registry directory on a cadence. After ``kill -9``
it restores the checkpoint and replays ps-updates from its offset: the merge is
deterministic, so every accepted update comes back and the version continues.

Every export is signed with the server's Ed25519 key (:mod:`schemas.signing`; the key
lives at ``--signing-key``, by default in the checkpoint directory, made on first start),
and `serve` accepts only models signed by a key it trusts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from schemas import topics
from schemas.envelope import ModelEnvelope, encode_envelope, envelope_headers
from schemas.errors import DrivestreamError, ValidationError
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Producer
from schemas.model_spec import DEFAULT_SPEC, InputSpec
from schemas.signing import key_id, load_or_create_private_key, public_key_path, sign_envelope
from trainer import wire
from trainer.checkpoint import read_if_exists, write_atomic
from trainer.config import PSConfig
from trainer.export import OnnxExporter
from trainer.model import build_model, load_prior, trainable_state
from trainer.server_state import ServerState
from trainer.signals import install_stop_handler

log = logging.getLogger("trainer.ps")


class UpdatesLostError(DrivestreamError):
    """ps-updates no longer holds the records the server checkpoint resumes from."""


class ParameterServer:
    """State + exporter + the Kafka loop; :meth:`run` until ``stop`` is set."""

    def __init__(self, cfg: PSConfig, settings: KafkaSettings, spec: InputSpec = DEFAULT_SPEC):
        self.cfg, self.settings, self.spec = cfg, settings, spec
        model = build_model(spec, cfg.hidden, cfg.seed)
        if cfg.init_from:  # version 0 = the warm start (trainers take the same --init-from)
            load_prior(cfg.init_from, model)
        self.exporter = OnnxExporter(model, spec)
        self.state = ServerState(trainable_state(model), cfg.max_staleness, cfg.server_lr)
        self.ckpt_path = Path(cfg.checkpoint_dir) / f"ps-{cfg.model_name}.ckpt"
        self.registry = Path(cfg.registry_dir)
        self.signing_key = load_or_create_private_key(cfg.signing_key_path)
        log.info(
            "signing exports as %s; serve trusts it with --trusted-key-files %s",
            key_id(self.signing_key.public_key()),
            public_key_path(cfg.signing_key_path),
        )
        raw = read_if_exists(self.ckpt_path)
        if raw is not None:
            self.state.load_bytes(raw)
            log.info(
                "restored %s: version %d, ps-updates offset %d",
                self.ckpt_path,
                self.state.version,
                self.state.updates_offset,
            )
        self.prefix = cfg.topic_prefix
        self.replayed = 0
        self.published: tuple[int, int] | None = None
        """(version, updates_offset) last sent to ps-weights."""
        self.checkpointed_version = self.state.version if raw is not None else -1

    # ---- outputs --------------------------------------------------------------------------

    def checkpoint(self) -> None:
        write_atomic(self.ckpt_path, self.state.to_bytes())
        self.checkpointed_version = self.state.version

    def publish_weights(self, producer: Producer) -> None:
        w = wire.Weights(
            version=self.state.version,
            tensors=self.state.weights,
            created_ns=now_ns(),
            updates_offset=self.state.updates_offset,
        )
        producer.send(
            self.prefix + topics.PS_WEIGHTS,
            wire.encode_weights(w),
            key=self.cfg.model_name,
            headers=wire.weights_headers(),
        )
        self.published = (self.state.version, self.state.updates_offset)

    def export(self, producer: Producer) -> ModelEnvelope:
        """ONNX for the current version -> registry (.onnx + .json) and ``models``."""
        s = self.state
        metrics = {
            **s.metrics,
            "ps.accepted": float(s.accepted),
            "ps.rejected": float(s.rejected),
            "trained_until_produce_ns": float(s.trained_until_produce_ns),
        }
        unsigned = ModelEnvelope(
            name=self.cfg.model_name,
            version=s.version,
            parent_version=max(s.exported_version, 0),  # persisted: survives restarts
            created_ns=now_ns(),
            trained_until_ns=s.trained_until_ns,
            steps=s.steps,
            samples=s.samples,
            input_spec=self.spec,
            onnx=self.exporter.export(s.weights),
            metrics=metrics,
        )
        env = sign_envelope(unsigned, self.signing_key)
        stem = self.registry / f"{env.name}-v{env.version:08d}"
        write_atomic(stem.with_suffix(".onnx"), env.onnx)
        meta = asdict(env)
        meta.pop("onnx")
        meta["input_spec"] = json.loads(self.spec.to_json())
        write_atomic(stem.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        producer.send(
            self.prefix + topics.MODELS,
            encode_envelope(env),
            key=env.name,
            headers=envelope_headers(),
        )
        s.exported_version = s.version
        return env

    @property
    def exported_version(self) -> int:
        return self.state.exported_version

    # ---- loop -----------------------------------------------------------------------------

    def _apply(self, msgs: list) -> None:
        for msg in msgs:
            try:
                wire.check_delta_headers(msg.headers)
                delta = wire.decode_delta(msg.value)
            except ValidationError as exc:
                log.warning("skipping unreadable ps-updates record %d: %s", msg.offset, exc)
                self.state.skip(msg.offset)
                continue
            result = self.state.apply(delta, msg.offset)
            if not result.accepted:
                log.info("rejected delta at %d from %s: %s", msg.offset, delta.group, result.reason)
            elif result.repeat:
                log.info(
                    "delta at %d from %s repeats anchor %s (a retried push): merged its new part",
                    msg.offset,
                    delta.group,
                    delta.anchor_id,
                )

    def run(self, stop: threading.Event) -> None:
        updates = self.prefix + topics.PS_UPDATES
        consumer = Consumer(self.settings, group_id=None)
        producer = Producer(self.settings)
        try:
            consumer.wait_partitions(updates)
            begin, replay_end = consumer.watermarks(updates, 0)
            self._check_retention(begin)
            consumer.assign(updates, [0], {0: self.state.updates_offset})
            while self.state.updates_offset < replay_end and not stop.is_set():
                before = self.state.updates_offset
                self._apply(consumer.poll(200, max_records=500))
                self.replayed += self.state.updates_offset - before
            log.info(
                "ready: version %d after replaying %d ps-updates records",
                self.state.version,
                self.replayed,
            )
            self._serve(consumer, producer, stop)
        finally:
            if self.state.version != self.checkpointed_version:
                self.checkpoint()
            consumer.close()
            producer.close()

    def _check_retention(self, begin: int) -> None:
        """A checkpoint behind the log start would silently lose the deltas in between."""
        if self.state.updates_offset >= begin:
            return
        if self.checkpointed_version < 0:  # no checkpoint: a fresh start on an aged topic
            log.warning("no checkpoint; ps-updates starts at %d (older records deleted)", begin)
            self.state.updates_offset = begin
            return
        raise UpdatesLostError(
            f"checkpoint {self.ckpt_path} resumes ps-updates at offset "
            f"{self.state.updates_offset} but the topic now begins at {begin}: retention "
            "deleted accepted deltas. Raise retention.ms on ps-updates; to accept the loss, "
            "move the checkpoint away (the server then starts from fresh weights)"
        )

    def _serve(self, consumer: Consumer, producer: Producer, stop: threading.Event) -> None:
        cfg = self.cfg
        start = last_pub = last_ckpt = last_export = last_status = time.monotonic()
        self.publish_weights(producer)
        if not self._registered(self.state.version):
            self.export(producer)
        while not stop.is_set():
            if cfg.duration_s and time.monotonic() - start >= cfg.duration_s:
                break
            self._apply(consumer.poll(100, max_records=100))
            now = time.monotonic()
            v = self.state.version
            # a rejected delta moves only the offset: publish it too, trainers wait on it
            current = (v, self.state.updates_offset)
            if current != self.published and now - last_pub >= cfg.publish_every_s:
                self.publish_weights(producer)
                last_pub = now
            if v != self.checkpointed_version and now - last_ckpt >= cfg.checkpoint_every_s:
                self.checkpoint()
                last_ckpt = now
            by_versions = (
                cfg.export_every_versions and v - self.exported_version >= cfg.export_every_versions
            )
            if v != self.exported_version and (
                by_versions or now - last_export >= cfg.export_every_s
            ):
                self.export(producer)
                last_export = now
            if now - last_status >= cfg.status_every_s:
                last_status = now
                log.info("%s", self.status_line())
        log.info("stopping: %s", self.status_line())

    def _registered(self, version: int) -> bool:
        return (self.registry / f"{self.cfg.model_name}-v{version:08d}.onnx").exists()

    def status_line(self) -> str:
        s = self.state
        return (
            f"ps version={s.version} accepted={s.accepted} rejected={s.rejected} "
            f"updates_offset={s.updates_offset} samples={s.samples} "
            f"exported={self.exported_version} replayed={self.replayed}"
        )


def serve(cfg: PSConfig, stop: threading.Event | None = None) -> int:
    """Run a server until ``stop`` (SIGTERM/SIGINT) or ``--duration-s``; checkpoint on exit."""
    stop = stop or install_stop_handler()
    server = ParameterServer(cfg, KafkaSettings.from_env(bootstrap=cfg.bootstrap))
    server.run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    install_stop_handler()
    from trainer import cli

    parser = argparse.ArgumentParser(prog="python -m trainer.ps", description=__doc__)
    cli.add_ps_arguments(parser)
    return cli.run_ps(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
