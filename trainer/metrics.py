"""Physics baselines (CV, CTRV) and online ADE/FDE accounting per horizon.

Both baselines are schemas.kinematics' (the one implementation inference and the report
use too), started from the newest history frame (its x, y, speed, heading, yaw_rate), so
they score exactly the samples the model scores (test-then-train).
"""

from __future__ import annotations

import numpy as np

from schemas.kinematics import predict_ctrv, predict_cv

PREDICTORS = ("model", "cv", "ctrv")
SPLITS = ("holdout", "train")


def constant_velocity(windows: np.ndarray, horizons_s: tuple[float, ...]) -> np.ndarray:
    """[B, T, 7] windows -> [B, H, 2] float32 positions by schemas.kinematics.predict_cv."""
    last = windows[:, -1, :].astype(np.float64)
    return predict_cv(last[:, 1], last[:, 2], last[:, 3], last[:, 4], horizons_s).astype(np.float32)


def ctrv(windows: np.ndarray, horizons_s: tuple[float, ...]) -> np.ndarray:
    """[B, T, 7] windows -> [B, H, 2] float32 positions by schemas.kinematics.predict_ctrv
    (the baseline inference falls back to and the report scores against)."""
    last = windows[:, -1, :].astype(np.float64)
    x, y, v, h, w = (last[:, i] for i in (1, 2, 3, 4, 5))
    return predict_ctrv(x, y, v, h, w, horizons_s).astype(np.float32)


class OnlineMetrics:
    """Running displacement-error sums per split x predictor x horizon.

    FDE@h is the mean error at horizon h; ADE@h the mean error over horizons <= h. Sums are
    decayed by :meth:`decay` so the figures track the recent stream, not all of history.
    """

    def __init__(self, horizons_s: tuple[float, ...]) -> None:
        self.horizons_s = horizons_s
        # [split, predictor, horizon] error sums, and [split] sample counts
        self.err = np.zeros((len(SPLITS), len(PREDICTORS), len(horizons_s)), dtype=np.float64)
        self.count = np.zeros(len(SPLITS), dtype=np.float64)

    def update(self, holdout: np.ndarray, target: np.ndarray, preds: dict[str, np.ndarray]) -> None:
        """Add one scored batch; ``preds`` maps each predictor to [B, H, 2] positions."""
        for s, mask in enumerate((holdout, ~holdout)):
            if not mask.any():
                continue
            self.count[s] += mask.sum()
            for p, name in enumerate(PREDICTORS):
                d = np.linalg.norm(preds[name][mask] - target[mask], axis=-1)
                self.err[s, p] += d.sum(axis=0)

    def decay(self, factor: float) -> None:
        self.err *= factor
        self.count *= factor

    def to_array(self) -> np.ndarray:
        return np.concatenate([self.err.ravel(), self.count])

    def add_array(self, flat: np.ndarray) -> None:
        n = self.err.size
        self.err += flat[:n].reshape(self.err.shape)
        self.count += flat[n:]

    def summary(self) -> dict[str, float]:
        """Flat ``{split}.{predictor}.{ade|fde}@{h}`` means plus ``{split}.samples``."""
        out: dict[str, float] = {}
        for s, split in enumerate(SPLITS):
            out[f"{split}.samples"] = float(self.count[s])
            if self.count[s] <= 0:
                continue
            for p, name in enumerate(PREDICTORS):
                fde = self.err[s, p] / self.count[s]
                ade = np.cumsum(fde) / np.arange(1, len(fde) + 1)
                for k, h in enumerate(self.horizons_s):
                    out[f"{split}.{name}.fde@{h:g}"] = float(fde[k])
                    out[f"{split}.{name}.ade@{h:g}"] = float(ade[k])
        return out
