"""Parameter-server state: versioned master weights and the staleness-aware merge.

Pure and deterministic (no Kafka, no clock): applying the same deltas in the same order
from the same checkpoint gives bit-identical weights and versions, which is what lets a
restarted server replay ps-updates after its checkpointed offset and lose nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.errors import CheckpointError, CodecError
from trainer import wire


def staleness_scale(staleness: int, max_staleness: int) -> float | None:
    """Weight of a delta ``staleness`` versions old: 1/(1+s), or None (reject) beyond bound."""
    if staleness < 0 or staleness > max_staleness:
        return None
    return 1.0 / (1.0 + staleness)


@dataclass(frozen=True)
class MergeResult:
    accepted: bool
    staleness: int
    scale: float
    reason: str = ""
    repeat: bool = False
    """The delta repeated an anchor already applied from: only its new part was merged."""


@dataclass(frozen=True)
class Applied:
    """The last delta merged from a group: its anchor and the whole change it carried."""

    anchor_id: str
    tensors: wire.Tensors
    steps: int
    samples: int


_APPLIED_PREFIX = "@"
"""Checkpoint tensor names ``@<i>:<name>`` hold group i's last applied delta."""


class ServerState:
    """Master weights + version + what they were trained on; ``state_dict`` round-trips."""

    def __init__(self, weights: wire.Tensors, max_staleness: int, server_lr: float = 1.0) -> None:
        self.weights = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        self.max_staleness = max_staleness
        self.server_lr = server_lr
        self.version = 0
        self.steps = 0
        self.samples = 0
        self.trained_until_ns = 0
        self.trained_until_produce_ns = 0
        self.updates_offset = 0
        """Next ps-updates offset to apply (everything before it is in the weights)."""
        self.accepted = 0
        self.rejected = 0
        self.sensor_offsets: dict[str, dict[int, int]] = {}
        self.metrics: dict[str, float] = {}
        self.exported_version = -1
        """Newest version exported as ONNX (the next export's parent); -1 before any."""
        self.applied: dict[str, Applied] = {}
        """Per trainer group, the last delta merged (what a retried push is measured from)."""

    def apply(self, delta: wire.Delta, offset: int) -> MergeResult:
        """Merge one delta read at ``offset`` of ps-updates."""
        self.updates_offset = offset + 1
        staleness = self.version - delta.base_version
        scale = staleness_scale(staleness, self.max_staleness)
        if scale is None:
            self.rejected += 1
            why = "from the future" if staleness < 0 else f"> bound {self.max_staleness}"
            return MergeResult(False, staleness, 0.0, f"staleness {staleness} {why}")
        shapes_ok = set(delta.tensors) == set(self.weights) and all(
            delta.tensors[k].shape == w.shape for k, w in self.weights.items()
        )
        if not shapes_ok:
            self.rejected += 1
            return MergeResult(False, staleness, 0.0, "tensor names/shapes differ from the model")
        # a delta from the anchor last merged from: only what it adds to that one is new
        prev = self.applied.get(delta.group)
        base = prev if prev is not None and delta.anchor_id == prev.anchor_id else None
        factor = np.float32(scale * self.server_lr)
        for k, w in self.weights.items():
            w += factor * (delta.tensors[k] - base.tensors[k] if base else delta.tensors[k])
        self.version += 1
        self.accepted += 1
        self.steps += max(0, delta.steps - base.steps) if base else delta.steps
        self.samples += max(0, delta.samples - base.samples) if base else delta.samples
        if delta.anchor_id:
            tensors = {k: np.array(v, dtype=np.float32) for k, v in delta.tensors.items()}
            self.applied[delta.group] = Applied(
                delta.anchor_id, tensors, delta.steps, delta.samples
            )
        self.trained_until_ns = max(self.trained_until_ns, delta.trained_until_ns)
        self.trained_until_produce_ns = max(
            self.trained_until_produce_ns, delta.trained_until_produce_ns
        )
        offsets = self.sensor_offsets.setdefault(delta.group, {})
        for p, o in delta.sensor_offsets.items():
            offsets[p] = max(o, offsets.get(p, 0))
        if delta.metrics:
            self.metrics = dict(delta.metrics)
        return MergeResult(True, staleness, float(scale), repeat=base is not None)

    def skip(self, offset: int) -> None:
        """Step over an unreadable ps-updates record (it was dead-lettered or logged)."""
        self.updates_offset = offset + 1
        self.rejected += 1

    _SCALARS = (
        "version",
        "steps",
        "samples",
        "trained_until_ns",
        "trained_until_produce_ns",
        "updates_offset",
        "accepted",
        "rejected",
    )

    def state_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in self._SCALARS},
            "exported_version": self.exported_version,
            "sensor_offsets": {g: dict(o) for g, o in self.sensor_offsets.items()},
            "metrics": dict(self.metrics),
            "weights": {k: v.copy() for k, v in self.weights.items()},
            "applied": dict(self.applied),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._SCALARS:
            setattr(self, k, int(state[k]))
        self.exported_version = int(state.get("exported_version", -1))  # older checkpoints
        self.sensor_offsets = {
            g: {int(p): int(o) for p, o in offs.items()}
            for g, offs in state["sensor_offsets"].items()
        }
        self.metrics = {str(k): float(v) for k, v in state["metrics"].items()}
        weights = state["weights"]
        if set(weights) != set(self.weights):
            raise CheckpointError(
                "checkpoint weights do not match this model (changed --hidden?); "
                "point --checkpoint-dir elsewhere to start fresh"
            )
        self.weights = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        self.applied = dict(state.get("applied", {}))  # older checkpoints: none

    def to_bytes(self) -> bytes:
        state = self.state_dict()
        tensors = state.pop("weights")
        applied: dict[str, Applied] = state.pop("applied")
        state["applied"] = []
        for i, (group, a) in enumerate(sorted(applied.items())):
            state["applied"].append([group, a.anchor_id, a.steps, a.samples])
            tensors.update({f"{_APPLIED_PREFIX}{i}:{k}": v for k, v in a.tensors.items()})
        state["sensor_offsets"] = {
            g: {str(p): o for p, o in offs.items()} for g, offs in state["sensor_offsets"].items()
        }
        return wire.pack_tensors(state, tensors)

    def load_bytes(self, data: bytes) -> None:
        try:
            meta, tensors = wire.unpack_tensors(data, "ps_checkpoint")
            meta.pop("names"), meta.pop("shapes")
            weights = {k: v for k, v in tensors.items() if not k.startswith(_APPLIED_PREFIX)}
            applied = {}
            for i, (group, anchor_id, steps, samples) in enumerate(meta.pop("applied", [])):
                tag = f"{_APPLIED_PREFIX}{i}:"
                own = {k[len(tag) :]: v for k, v in tensors.items() if k.startswith(tag)}
                applied[str(group)] = Applied(str(anchor_id), own, int(steps), int(samples))
            self.load_state_dict({**meta, "weights": weights, "applied": applied})
        except (CodecError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"unreadable server checkpoint: {exc}") from exc


__all__ = ["Applied", "MergeResult", "ServerState", "staleness_scale"]
