"""Answering frames: the model on a micro-batch, or the physics fallback.

The model answers only frames it can still answer within their budget; the rest, frames whose
window no longer fits the model (after a swap) and frames the model failed on, get the
CV/CTRV fallback with a reason. Each answer goes to :class:`inference.output.Output`.
"""

from __future__ import annotations

import logging
from collections import Counter

import numba
import numpy as np

from inference import fallback
from inference.batching import Pending, stack_rows
from inference.config import ServeConfig
from inference.metrics import ServeMetrics
from inference.output import Answer, Output
from inference.runtime import LoadedModel
from schemas.headers import now_ns
from schemas.model_spec import InputSpec

log = logging.getLogger(__name__)

MS = 1_000_000


class Answerer:
    """Runs batches and fallbacks, keeping a per-batch-shape estimate of the model's cost."""

    def __init__(
        self, config: ServeConfig, metrics: ServeMetrics, stats: Counter[str], output: Output
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.stats = stats
        self.output = output
        self.cost_ns: dict[int, float] = {}
        """Padded batch shape -> smoothed model run time, ns (seeded by warm-up on swap)."""
        self._margin_ns = int(config.safety_margin_ms * MS)

    def reset_costs(self, warm_ms: dict[int, float]) -> None:
        """A new model serves: start from its warm-up timings."""
        self.cost_ns = {b: ms * MS for b, ms in warm_ms.items()}

    def in_time(self, item: Pending, batch: int, now: int, wait_ns: int = 0) -> bool:
        """Can the model still answer this frame within its budget?"""
        shape = self.config.padded(min(batch, self.config.max_batch))
        cost = self.cost_ns.get(shape, 1 * MS)
        return now + wait_ns + cost + self._margin_ns <= item.origin.deadline_ns

    def batch(self, model: LoadedModel, items: list[Pending]) -> None:
        """Answer ``items`` with one model run; late or unfit frames fall back."""
        if not items:
            return
        spec, history = model.spec, model.spec.history
        # in_time() for the whole batch at once: same shape, same cost for every item
        limit = now_ns() + self.cost_ns.get(self.config.padded(len(items)), MS) + self._margin_ns
        ready = [it for it in items if it.origin.deadline_ns >= limit and _fits(it, history)]
        if len(ready) < len(items):
            self._fall_back_unready(items, limit, spec)
            if not ready:
                return
            items = ready
        n = len(items)
        shape = self.config.padded(n)
        blocks: list[np.ndarray] = [it.window.array for it in items]  # type: ignore[union-attr, misc]
        x = _model_input(blocks, [it.row for it in items], shape)
        t_start = now_ns()
        try:
            out = model.run(x)
        except Exception:
            log.exception("model v%d failed on a batch of %d", model.version, n)
            self.fallback(items, "model_error", spec.horizons_s)
            return
        t_end = now_ns()
        self.cost_ns[shape] = 0.8 * self.cost_ns.get(shape, t_end - t_start) + 0.2 * (
            t_end - t_start
        )
        self.metrics.batch_size.observe(n)
        out = out[:n]
        horizons = spec.horizons_s
        answer = Answer(horizons, model.version, [model.name] * n, "model", "", t_start, t_end)
        if _all_finite(out):
            self.output.publish(items, out, answer)
            return
        finite = np.isfinite(out).all(axis=(1, 2))
        one = answer._replace(names=answer.names[:1])
        for i, it in enumerate(items):  # rare: keep each vehicle's answers in frame order
            if not finite[i]:
                self.fallback([it], "non_finite", horizons)
            else:
                self.output.publish([it], out[i : i + 1], one)

    def _fall_back_unready(self, items: list[Pending], limit: float, spec: InputSpec) -> None:
        """The fallbacks of a batch: frames past ``limit`` as late, then those whose window
        no longer fits the model (a swap changed its length) as warmup."""
        late = [it for it in items if it.origin.deadline_ns < limit]
        self.fallback(late, "late", spec.horizons_s)
        unfit = [
            it for it in items if it.origin.deadline_ns >= limit and not _fits(it, spec.history)
        ]
        self.fallback(unfit, "warmup", spec.horizons_s)

    def fallback(
        self,
        items: list[Pending],
        reason: str,
        horizons: tuple[float, ...],
        physics: str = fallback.CTRV,
    ) -> None:
        """Answer ``items`` from their newest frame, labelled ``reason``: with CV if
        ``physics`` is 'cv', else CTRV (CV below ``cv_yaw_eps``)."""
        if not items:
            return
        t_start = now_ns()
        states = stack_rows([(it.frames.values, it.index) for it in items])
        x, y, v, h, w = states[:, :5].T
        yaw_eps = np.inf if physics == fallback.CV else self.config.cv_yaw_eps
        out, turning = fallback.predict(x, y, v, h, w, horizons, yaw_eps)
        t_end = now_ns()
        names = [fallback.CTRV if t else fallback.CV for t in turning.tolist()]
        answer = Answer(horizons, -1, names, "fallback", reason, t_start, t_end)
        self.metrics.fallbacks.labels(reason=reason).inc(len(items))
        self.stats[f"fallback_{reason}"] += len(items)
        self.output.publish(items, out, answer)


def _fits(item: Pending, history: int) -> bool:
    """``item``'s poll gathered its window, ``history`` rows long (the model's)."""
    w = item.window
    return w is not None and w.array is not None and w.array.shape[1] == history


def _model_input(blocks: list[np.ndarray], rows: list[int], shape: int) -> np.ndarray:
    """The model input ``[shape, history, features]``: ``blocks[i][rows[i]]`` stacked, zero
    rows padding it to ``shape``. A batch that is its poll's whole window block, in order,
    is that block itself: no copy (the common case without a timed batch wait)."""
    block = blocks[0]
    if len(block) == shape and rows == list(range(shape)) and all(b is block for b in blocks):
        return block
    picked = stack_rows(list(zip(blocks, rows, strict=True)))
    if len(rows) == shape:
        return picked
    x = np.zeros((shape, *block.shape[1:]), np.float32)
    x[: len(rows)] = picked
    return x


@numba.njit(["boolean(float32[:, :, :])", "boolean(float64[:, :, :])"], cache=True, nogil=True)
def _all_finite(points):
    """No NaN or inf in ``points`` (compiled: in the loop numpy's reduction costs ~5x this)."""
    for i in range(points.shape[0]):
        for j in range(points.shape[1]):
            for c in range(points.shape[2]):
                if not np.isfinite(points[i, j, c]):
                    return False
    return True
