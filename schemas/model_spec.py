"""The contract between trainer and inference: what a model reads and what it predicts.

Units and frames: positions are local ENU metres (x east, y north), headings are radians
counter-clockwise from east, yaw rates rad/s counter-clockwise positive, times are ns on the
sensor clock in records and seconds inside model inputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

#: Input feature columns of one history step, in order.
FEATURES: tuple[str, ...] = ("dt", "x", "y", "speed", "heading", "yaw_rate", "accel")

#: ONNX input and output names every exported model must use.
INPUT_NAME = "history"
OUTPUT_NAME = "positions"


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """Shape of a model's input window and output horizons.

    The input is float32 ``[batch, history, len(features)]``: the last ``history`` frames of
    one vehicle, oldest first; ``dt`` is the frame time minus the newest frame's time in
    seconds (so the last row has dt = 0), x/y absolute local metres, the rest raw sensor
    values. The output ``positions`` is float32 ``[batch, len(horizons_s), 2]``: absolute
    local x/y at each horizon after the newest frame.
    """

    history: int = 10
    """Frames per window (at 10 Hz, one second of history)."""
    rate_hz: float = 10.0
    """Nominal sensor rate the model was trained at."""
    horizons_s: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    """Prediction horizons in seconds after the newest frame."""
    max_gap_s: float = 0.35
    """Largest time between consecutive frames inside a window. The trainer never learns
    from windows with a wider gap, so serving must not feed them to the model either."""
    features: tuple[str, ...] = field(default=FEATURES)

    def __post_init__(self) -> None:
        if self.history < 2:
            raise ValueError(f"history must be >= 2 frames, got {self.history}")
        if not self.horizons_s or any(h <= 0 for h in self.horizons_s):
            raise ValueError(f"horizons_s must be positive, got {self.horizons_s}")
        if list(self.horizons_s) != sorted(self.horizons_s):
            raise ValueError(f"horizons_s must be increasing, got {self.horizons_s}")
        if self.max_gap_s <= 0:
            raise ValueError(f"max_gap_s must be > 0, got {self.max_gap_s}")
        if self.features != FEATURES:
            raise ValueError(f"features must be {FEATURES}, got {self.features}")

    @property
    def max_horizon_s(self) -> float:
        return self.horizons_s[-1]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InputSpec:
        raw = json.loads(text)
        return cls(
            history=int(raw["history"]),
            rate_hz=float(raw["rate_hz"]),
            horizons_s=tuple(float(h) for h in raw["horizons_s"]),
            max_gap_s=float(raw.get("max_gap_s", cls.max_gap_s)),
            features=tuple(raw["features"]),
        )


DEFAULT_SPEC = InputSpec()
