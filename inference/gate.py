"""Never worse than physics: which predictor answers, decided on recent ground truth.

The serving model, constant velocity (CV) and constant turn rate (CTRV, the fallback's rule:
CV below ``yaw_eps``) are scored on the same recent windows whose future positions have
arrived (:meth:`inference.history.HistoryStore.scored_truth`), by their mean error at the
longest horizon. The model is scored on what it predicted for each window *before* that
window's truth existed (test, then train): a version that has since trained on those
windows would look better on them than it will be on the next ones.
The model answers only while it is better than the best physics predictor; otherwise
that physics predictor answers every frame the model would have, flagged ``physics_better``
(``unproven`` while too little truth exists to compare). A model that lost its place, or a new
version, must beat physics by ``rejoin_margin`` to (re)gain it, so the choice does not
flicker. Judging runs on the model watcher's thread, never on the serving loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from inference import fallback
from inference.metrics import ServeMetrics
from inference.runtime import LoadedModel
from schemas import kinematics

log = logging.getLogger(__name__)

MODEL = "model"
PHYSICS = (fallback.CV, fallback.CTRV)
PREDICTORS = (MODEL, *PHYSICS)

TruthFn = Callable[[float], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Recent (windows, targets, model predictions made before the truth; NaN where none)."""
HorizonsFn = Callable[[], tuple[float, ...]]
ScoreFn = Callable[[Callable[[np.ndarray], np.ndarray]], int]
"""Predict the windows still awaiting their truth with the given model."""


@dataclass(frozen=True, kw_only=True)
class GatePolicy:
    """How much recent truth decides, and how clear a win must be."""

    window_s: float = 30.0
    """Judge on ground truth labelled in the last this many seconds."""
    short_window_s: float = 10.0
    """An answering model must also not lose over this newest stretch."""
    min_samples: int = 20
    """Fewer truth windows than this: the model is unproven and physics answers."""
    rejoin_margin: float = 0.1
    """A model not answering must beat physics by this fraction to answer: on lagged truth a
    slimmer lead flips back and forth, and each flip answers the wrong stretch."""
    physics_min_samples: int = 100
    """Truth windows needed before the physics predictor answering may change."""
    physics_margin: float = 0.15
    """The physics predictor answering (CTRV at first) changes only for one better by this
    fraction: choosing between CV and CTRV on lagged truth costs more than it wins unless
    one is clearly wrong (a yaw-rate channel with the wrong sign or scale)."""
    every_s: float = 1.0
    """How often the serving model is re-judged."""
    yaw_eps: float = kinematics.STRAIGHT_YAW_RATE


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """Who answers for model version ``version`` (-1: no model), and why."""

    predictor: str
    reason: str = ""
    """'' when the model answers; else 'unproven' or 'physics_better'."""
    version: int = -1
    fde_m: dict[str, float] = field(default_factory=dict)
    """Mean error at the longest horizon per predictor on the judged windows."""
    samples: int = 0

    physics: str = fallback.CTRV
    """The physics predictor that answers when the model does not."""


def _means(errors: dict[str, np.ndarray], newest: int) -> dict[str, float]:
    """Mean error of each predictor over the ``newest`` samples (inf if not finite)."""
    out = {}
    for name, e in errors.items():
        m = float(np.mean(e[len(e) - newest :])) if newest else np.inf
        out[name] = m if np.isfinite(m) else np.inf
    return out


def physics_predictions(
    windows: np.ndarray, horizons_s: tuple[float, ...], yaw_eps: float
) -> dict[str, np.ndarray]:
    """CV and the CTRV fallback from the newest row of each window: ``[N, K, 2]`` each."""
    last = windows[:, -1, :].astype(np.float64)
    cv = kinematics.predict_cv(last[:, 1], last[:, 2], last[:, 3], last[:, 4], horizons_s)
    return {
        fallback.CV: cv,
        fallback.CTRV: fallback.predict_windows(windows, horizons_s, yaw_eps),
    }


class PredictorGate:
    """Holds the newest verdict per model version; thread-safe reads for the serving loop."""

    def __init__(
        self,
        policy: GatePolicy,
        truth: TruthFn,
        horizons: HorizonsFn,
        metrics: ServeMetrics,
        score: ScoreFn | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy, self._truth, self.metrics, self._clock = policy, truth, metrics, clock
        self._horizons, self._score = horizons, score
        self._verdicts: dict[int, Verdict] = {}
        self._lock = threading.Lock()
        self._last = -np.inf
        self.switches: list[tuple[int, str, str]] = []
        """(version, predictor, reason) each time the answering predictor changed."""
        self._current = Verdict(predictor=fallback.CTRV, reason="unproven")

    def verdict(self, version: int) -> Verdict:
        """The verdict for ``version`` (a version never judged is unproven)."""
        v = self._verdicts.get(version)
        if v is None:
            return Verdict(
                predictor=self._current.physics,
                physics=self._current.physics,
                reason="unproven",
                version=version,
            )
        return v

    def due(self) -> bool:
        return self._clock() - self._last >= self.policy.every_s

    def judge(self, model: LoadedModel | None) -> Verdict:
        """Score ``model`` and physics on recent truth; record and return the verdict."""
        self._last = self._clock()
        if model is not None and self._score is not None:
            try:
                self._score(model.run)
            except Exception:  # a model that cannot run cannot answer either
                log.exception("v%d failed on the windows awaiting truth", model.version)
        windows, targets, model_preds = self._truth(self.policy.window_s)
        version = model.version if model is not None else -1
        fits = model is None or (
            windows.ndim == 3
            and windows.shape[1] == model.spec.history
            and targets.shape[1] == len(model.spec.horizons_s)
        )
        fits = fits and targets.shape[1] == len(self._horizons())
        if len(windows) == 0 or not fits:
            held = self._current.physics
            verdict = Verdict(predictor=held, physics=held, reason="unproven", version=version)
            return self._record(verdict)
        horizons = model.spec.horizons_s if model is not None else self._horizons()
        preds = physics_predictions(windows, horizons, self.policy.yaw_eps)
        errors = {n: np.linalg.norm(p[:, -1] - targets[:, -1], axis=-1) for n, p in preds.items()}
        fde = _means(errors, len(windows))
        # the model against physics only on the windows it predicted before their truth
        scored = np.isfinite(model_preds).all(axis=(1, 2))
        n_scored = int(scored.sum())
        duel = {n: e[scored] for n, e in errors.items()}
        duel[MODEL] = np.linalg.norm(model_preds[scored, -1] - targets[scored, -1], axis=-1)
        fde_duel = _means(duel, n_scored)
        if model is not None:
            fde[MODEL] = fde_duel[MODEL]
        n_short = min(len(self._truth(self.policy.short_window_s)[0]), n_scored)
        recent = _means(duel, n_short)
        enough = n_scored >= self.policy.min_samples
        settled = len(windows) >= self.policy.physics_min_samples
        phys = self._physics(fde) if settled else self._current.physics
        # "the model" answering, whichever version: each new export must not reset that
        was_model = self._current.predictor == MODEL
        best = min(fde_duel[p] for p in PHYSICS)
        bar = best if was_model else best * (1 - self.policy.rejoin_margin)
        # nor may it answer while it loses over the newest stretch alone: a good half-minute
        # behind it must not hide a manoeuvre it gets wrong now
        slipping = (
            model is not None
            and n_short >= self.policy.min_samples
            and recent[MODEL] > min(recent[p] for p in PHYSICS)
        )
        if model is not None and enough and fde[MODEL] <= bar and not slipping:
            predictor, reason = MODEL, ""
        else:
            predictor = phys
            reason = "" if model is None else "physics_better" if enough else "unproven"
        verdict = Verdict(
            predictor=predictor,
            physics=phys,
            reason=reason,
            version=version,
            fde_m=fde,
            samples=n_scored,
        )
        return self._record(verdict)

    def _physics(self, fde: dict[str, float]) -> str:
        """The best physics predictor, keeping the one answering unless clearly beaten."""
        held = self._current.physics
        best = min(PHYSICS, key=lambda p: fde[p])
        return held if fde[held] <= fde[best] * (1 + self.policy.physics_margin) else best

    def _record(self, verdict: Verdict) -> Verdict:
        with self._lock:
            previous = self._current
            self._verdicts[verdict.version] = verdict
            for old in [v for v in self._verdicts if v not in (verdict.version, previous.version)]:
                del self._verdicts[old]
            self._current = verdict
        for name, e in verdict.fde_m.items():
            if np.isfinite(e):
                self.metrics.gate_fde.labels(predictor=name).set(e)
        self.metrics.gate_samples.set(verdict.samples)
        for name in PREDICTORS:
            self.metrics.gate_predictor.labels(predictor=name).set(
                1.0 if verdict.predictor == name else 0.0
            )
        if (previous.predictor, previous.reason) != (verdict.predictor, verdict.reason):
            self.metrics.gate_switches.labels(
                predictor=verdict.predictor, reason=verdict.reason
            ).inc()
            self.switches = [
                *self.switches[-99:],
                (verdict.version, verdict.predictor, verdict.reason),
            ]
            log.info(
                "answering with %s%s (v%d; FDE %s on %d truth windows)",
                verdict.predictor,
                f" ({verdict.reason})" if verdict.reason else "",
                verdict.version,
                {k: round(v, 2) for k, v in verdict.fde_m.items()},
                verdict.samples,
            )
        return verdict
