"""Decide a log's speed unit, heading convention and yaw-rate unit and sign from its data.

Each optional column is compared with what the GNSS positions say, on moving fixes only:
speed with the position-derived speed (median ratio, share within 20 %), heading with the
course of travel (share within 20 deg), yaw rate integrated over ~1 s windows with the
change of course over the same windows (correlation, regression slope). The candidate
that agrees best wins. A unit the user stated is checked the same way: the data may
confirm it, or contradict it (a ConfigError, unless ``force``). Too little motion, or two
candidates that fit about equally, stop with a ConfigError naming the flag that decides.
A column that fits no candidate is not used; the quantity is derived from positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ingest.derive import derive_kinematics
from ingest.mapping import SPEED_UNITS
from schemas.errors import ConfigError

#: Fixes slower than this (m/s, from positions) say nothing about direction or scale.
MOVING_MS = 2.0
#: Fewest moving fixes, and seconds of motion, a check needs.
MIN_MOVING_FIXES = 10
MIN_MOVING_S = 3.0
#: Fewest windows turning by at least ``TURN_DEG`` a yaw-rate check needs.
MIN_TURNS = 5
TURN_DEG = 3.0
#: A yaw-rate column must correlate at least this well with the course change to be used.
MIN_YAW_CORRELATION = 0.6

Candidate = dict[str, str]


@dataclass(frozen=True, kw_only=True)
class Reference:
    """What the positions say at each fix (sorted by vehicle, then time)."""

    vid: np.ndarray
    t_ns: np.ndarray
    speed: np.ndarray
    course: np.ndarray
    """ENU rad, counter-clockwise from east."""
    moving: np.ndarray

    @property
    def enough_motion(self) -> bool:
        """Enough moving fixes, over enough seconds, to check a column against."""
        if int(self.moving.sum()) < MIN_MOVING_FIXES:
            return False
        seconds = 0.0
        for v in set(self.vid[self.moving]):
            t = self.t_ns[self.moving & (self.vid == v)]
            seconds += float(np.diff(t).clip(max=2e9).sum()) / 1e9
        return seconds >= MIN_MOVING_S


def reference(
    vid: np.ndarray, t_ns: np.ndarray, x: np.ndarray, y: np.ndarray, window_s: float
) -> Reference:
    """Position-derived speed and course of travel at each fix."""
    none: dict[str, np.ndarray | None] = dict.fromkeys(("speed", "heading", "yaw_rate", "accel"))
    kin, _ = derive_kinematics(vid, t_ns, x, y, none, window_s)
    return Reference(
        vid=vid,
        t_ns=t_ns,
        speed=kin["speed"],
        course=kin["heading"],
        moving=kin["speed"] >= MOVING_MS,
    )


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """How one optional column is read, or that it is not used."""

    quantity: str
    column: str
    fields: dict[str, str] = field(default_factory=dict)
    used: bool = True
    how: str = ""
    """Figures and reasoning, for the summary."""


def _label(c: Mapping[str, str]) -> str:
    return " ".join(c.values())


def _flags(c: Candidate) -> str:
    return " ".join(f"--map-{k.replace('_', '-')} {v}" for k, v in c.items())


def _fits(c: Candidate, stated: Mapping[str, str]) -> bool:
    return all(c[k] == v for k, v in stated.items() if k in c)


def settle(
    *,
    quantity: str,
    column: str,
    candidates: Sequence[Candidate],
    figures: Sequence[str],
    best: int,
    tied: Sequence[int],
    failed: bool,
    enough: bool,
    claimed: Mapping[str, str],
    hint: Mapping[str, str],
    force: bool,
    why_not_enough: str = "too little motion to check it",
) -> Verdict:
    """Turn a check's figures into a verdict, or a ConfigError that says what to pass."""
    what = f"{quantity} column {column!r}"
    off = f"--map-{quantity.replace(' ', '-')} none"

    def verdict(fields: Candidate, how: str) -> Verdict:
        return Verdict(quantity=quantity, column=column, fields=fields, how=how)

    if not enough:
        fits = [c for c in candidates if _fits(c, claimed) and _fits(c, hint)]
        if len(fits) == 1:
            source = "as given" if _fits(fits[0], claimed) and claimed else "from the column name"
            return Verdict(
                quantity=quantity, column=column, fields=fits[0], how=f"{source}; {why_not_enough}"
            )
        raise ConfigError(
            f"{what}: {why_not_enough}; pass {' / '.join(_flags(c) for c in fits[:2])} "
            f"(or another value), or {off} to ignore the column"
        )
    b = candidates[best]
    if failed:
        if claimed and force:
            c = next(c for c in candidates if _fits(c, claimed))
            return verdict(c, f"as given (--force), not following the track ({figures[best]})")
        if claimed:
            raise ConfigError(
                f"{what} does not follow the GNSS track in any unit (best: {_label(b)}, "
                f"{figures[best]}); pass {off} to derive it from positions, or --force to use it"
            )
        return Verdict(
            quantity=quantity,
            column=column,
            used=False,
            how=f"not used: does not follow the GNSS track (best {_label(b)}: "
            f"{figures[best]}); derived from positions instead",
        )
    if claimed:
        ok = [i for i in tied if _fits(candidates[i], claimed)]
        if ok:
            i = ok[0]
            return Verdict(
                quantity=quantity,
                column=column,
                fields=candidates[i],
                how=f"as given, data agree ({figures[i]})",
            )
        mine = next(i for i, c in enumerate(candidates) if _fits(c, claimed))
        if force:
            return Verdict(
                quantity=quantity,
                column=column,
                fields=candidates[mine],
                how=f"as given (--force), although the data say {_label(b)} ({figures[best]})",
            )
        raise ConfigError(
            f"{what}: {_flags({k: v for k, v in claimed.items() if k in b})} contradicts the data: "
            f"{_label(b)} fits ({figures[best]}), {_label(candidates[mine])} does not "
            f"({figures[mine]}); drop the flag, or pass --force to keep it"
        )
    if len(tied) > 1:
        named = [i for i in tied if hint and _fits(candidates[i], hint)]
        if len(named) == 1:
            i = named[0]
            fit = " and ".join(_label(candidates[t]) for t in tied)
            return verdict(candidates[i], f"from the column name; the data fit {fit} equally")
        raise ConfigError(
            f"{what}: the data fit {' and '.join(_label(candidates[i]) for i in tied)} about "
            f"equally ({'; '.join(figures[i] for i in tied)}); pass "
            f"{' or '.join(_flags(candidates[i]) for i in tied)}"
        )
    note = f"; the name suggests {_label(hint)}" if hint and not _fits(b, hint) else ""
    return Verdict(quantity=quantity, column=column, fields=b, how=figures[best] + note)


def check_speed(
    raw: np.ndarray, ref: Reference, column: str, claimed: Mapping[str, str],
    hint: Mapping[str, str], force: bool,
) -> Verdict:  # fmt: skip
    """Speed unit: the one whose median ratio to the GNSS-derived speed is nearest 1."""
    m = ref.moving & np.isfinite(raw) & (raw >= 0)
    ratios = raw[m] / ref.speed[m]
    cands = [{"speed_unit": u} for u in SPEED_UNITS]
    per = [1 / f for f in SPEED_UNITS.values()]  # raw units per m/s
    med = [float(np.median(ratios)) / p if ratios.size else math.nan for p in per]
    share = [float(np.mean(np.abs(ratios / p - 1) <= 0.2)) if ratios.size else 0.0 for p in per]
    dist = [abs(math.log(r)) if r > 0 else math.inf for r in med]
    best = int(np.argmin(dist))
    tied = [best] + [
        i for i in range(len(per))
        if i != best and dist[best] > 0.35 * abs(math.log(per[i] / per[best]))
    ]  # fmt: skip
    figures = [
        f"median ratio to GNSS-derived speed {r:.2f}, {100 * s:.0f} % within 20 %"
        for r, s in zip(med, share, strict=True)
    ]
    return settle(
        quantity="speed", column=column, candidates=cands, figures=figures, best=best,
        tied=tied, failed=share[best] < 0.5 or dist[best] > math.log(1.3),
        enough=ref.enough_motion and int(m.sum()) >= MIN_MOVING_FIXES,
        claimed=claimed, hint=hint, force=force,
    )  # fmt: skip


def heading_to_enu(raw: np.ndarray, unit: str, convention: str) -> np.ndarray:
    """A heading column in ENU rad (counter-clockwise from east) in [-pi, pi)."""
    v = raw * (math.pi / 180 if unit == "deg" else 1.0)
    if convention == "compass":
        v = math.pi / 2 - v
    return (v + math.pi) % (2 * math.pi) - math.pi


def check_heading(
    raw: np.ndarray, ref: Reference, column: str, claimed: Mapping[str, str],
    hint: Mapping[str, str], force: bool,
) -> Verdict:  # fmt: skip
    """Heading unit and convention: the one that best matches the course of travel."""
    m = ref.moving & np.isfinite(raw)
    cands = [
        {"heading_unit": u, "heading_convention": c}
        for u in ("deg", "rad") for c in ("compass", "enu")
    ]  # fmt: skip
    share, med = [], []
    for c in cands:
        d = np.abs(np.angle(np.exp(1j * (heading_to_enu(raw[m], *c.values()) - ref.course[m]))))
        share.append(float(np.mean(d <= math.radians(20))) if d.size else 0.0)
        med.append(math.degrees(float(np.median(d))) if d.size else math.nan)
    best = int(np.argmax(share))
    tied = [best] + [i for i in range(4) if i != best and share[i] >= share[best] - 0.2]
    figures = [
        f"median difference {d:.1f} deg to the GNSS course of travel, {100 * s:.0f} % within 20 deg"
        for d, s in zip(med, share, strict=True)
    ]
    return settle(
        quantity="heading", column=column, candidates=cands, figures=figures, best=best,
        tied=tied, failed=share[best] < 0.5,
        enough=ref.enough_motion and int(m.sum()) >= MIN_MOVING_FIXES,
        claimed=claimed, hint=hint, force=force,
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Turns:
    """Course change from positions and integrated raw yaw rate over matching windows."""

    course_change: np.ndarray
    integrated: np.ndarray
    window_s: float


def turns(
    ref: Reference,
    course: np.ndarray,
    samples: Mapping[str, tuple[np.ndarray, np.ndarray]],
    window_s: float = 2.0,
) -> Turns:
    """Windows of ``window_s`` (at least two fix intervals) between moving fixes."""
    d_course: list[np.ndarray] = []
    d_gyro: list[np.ndarray] = []
    steps = np.diff(ref.t_ns)
    fix_dt = float(np.median(steps[steps > 0])) if (steps > 0).any() else 1e9
    window = max(window_s * 1e9, 2 * fix_dt)
    for v, (ts, vs) in samples.items():
        sel = ref.vid == v
        t, th, mv = ref.t_ns[sel], course[sel], ref.moving[sel] & np.isfinite(course[sel])
        if len(t) < 2 or len(ts) < 2:
            continue
        cum = np.r_[0.0, np.cumsum(0.5 * (vs[1:] + vs[:-1]) * np.diff(ts) / 1e9)]
        j = np.searchsorted(t, t + window * 0.999)
        i = np.flatnonzero(j < len(t))
        j = j[i]
        n_in = np.searchsorted(ts, t[j], "right") - np.searchsorted(ts, t[i], "left")
        ok = mv[i] & mv[j] & (t[j] - t[i] <= 1.6 * window) & (n_in >= 2)
        ok &= (t[i] >= ts[0]) & (t[j] <= ts[-1])
        i, j = i[ok], j[ok]
        d_course.append(np.angle(np.exp(1j * (th[j] - th[i]))))
        d_gyro.append(np.interp(t[j], ts, cum) - np.interp(t[i], ts, cum))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return Turns(course_change=cat(d_course), integrated=cat(d_gyro), window_s=window / 1e9)


def check_yaw_rate(
    tw: Turns, column: str, claimed: Mapping[str, str], hint: Mapping[str, str], force: bool
) -> Verdict:
    """Yaw-rate unit and sign from how the integrated yaw rate follows the course change.

    The scale is the reduced-major-axis slope (noise on either side does not shrink it);
    a gyro bias shows up as the regression's intercept and is reported, not judged.
    """
    dc, dg = tw.course_change, tw.integrated
    turning = np.abs(dc) >= math.radians(TURN_DEG)
    enough = len(dc) >= 2 * MIN_TURNS and int(turning.sum()) >= MIN_TURNS
    corr = float(np.corrcoef(dg, dc)[0, 1]) if enough and dg.std() > 0 else 0.0
    slope = math.copysign(float(dg.std() / dc.std()), corr) if enough else 0.0  # raw per rad
    offset = float(np.mean(dg) - slope * np.mean(dc)) / tw.window_s if enough else 0.0
    cands = [
        {"yaw_rate_unit": u, "yaw_rate_sign": s} for u in ("deg/s", "rad/s") for s in ("ccw", "cw")
    ]
    figures, dist = [], []
    for c in cands:
        sign = 1 if c["yaw_rate_sign"] == "ccw" else -1
        ratio = slope * sign * (math.pi / 180 if c["yaw_rate_unit"] == "deg/s" else 1.0)
        dist.append(abs(math.log(ratio)) if ratio > 0 else math.inf)
        figures.append(
            f"correlation {corr * sign:.2f} with the course change over {len(dc)} moving "
            f"{tw.window_s:g} s windows, scale {ratio:.2f}, offset {offset:+.2f}/s"
        )
    best = int(np.argmin(dist))
    return settle(
        quantity="yaw rate", column=column, candidates=cands, figures=figures, best=best,
        tied=[best], failed=abs(corr) < MIN_YAW_CORRELATION or dist[best] > math.log(2.0),
        enough=enough, claimed=claimed, hint=hint, force=force,
        why_not_enough=f"too few turns to check it ({int(turning.sum())} windows turning "
        f"over {TURN_DEG:g} deg, {MIN_TURNS} needed)",
    )  # fmt: skip
