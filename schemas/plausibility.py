"""Per-vehicle plausibility: one bad frame must never poison a vehicle's history.

A frame is judged against the vehicle's last accepted frame. It is **implausible** when its
event time jumps ahead by more than ``max_time_jump_s``, its seq by more than
``max_seq_jump``, or its position implies a speed above ``max_speed_ms`` (a teleport). Such a
frame is not accepted: it becomes the vehicle's *candidate* clock instead. If the next frame
continues from the candidate (a vehicle that really came back after a long silence, a
logger restart, a GNSS fix that really moved), the candidate is confirmed and the vehicle
restarts from there; if it continues from the old clock, the candidate was a lone bad frame
and is forgotten. A frame at or before the last accepted one is ``out_of_order``.

A confirmed jump can itself be forged (two consistent frames stamped a day ahead): the
clock it left is kept as *abandoned*, and when frames keep continuing that clock (two in a
row, answered ``out_of_order`` meanwhile) the vehicle restarts back onto it. An attacker
can then hold a vehicle only while writing to it, never freeze it with one burst.

Serving's history and the trainer's windowing both judge frames here, so a frame stamped
far in the future can neither freeze serving (every later frame "out of order") nor training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NS = 1_000_000_000

OK = "ok"
OUT_OF_ORDER = "out_of_order"
RESTART = "restart"
"""A confirmed jump: accept the frame, but nothing before it belongs to the same track."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What a real vehicle cannot do between two consecutive frames."""

    max_time_jump_s: float = 300.0
    max_seq_jump: int = 100_000
    max_speed_ms: float = 120.0
    """Implied speed bound; above it the fix teleported."""
    position_slack_m: float = 50.0
    """GNSS error allowed on top of ``max_speed_ms`` x dt."""


_Point = tuple[int, int, float, float]
"""seq, t_ns, x, y of an accepted (or candidate) frame: a plain tuple, made per frame."""


class VehicleClock:
    """The last accepted frame of one vehicle, and a candidate jump awaiting confirmation."""

    __slots__ = ("abandoned", "candidate", "last", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.last: _Point | None = None
        self.candidate: _Point | None = None
        self.abandoned: _Point | None = None
        """The last frame of the clock before the latest confirmed jump."""

    def judge(self, seq: int, t_ns: int, x: float, y: float) -> str:
        """'ok', 'restart' (a confirmed jump), 'out_of_order', or why it is implausible."""
        p = (seq, t_ns, x, y)
        if self.last is None:
            self.last = p
            return OK
        why = self._implausible(self.last, p)
        if why is None:
            self.last, self.candidate = p, None
            return OK
        if why == OUT_OF_ORDER:
            return self._back_to_abandoned(p)
        if self.candidate is not None and self._implausible(self.candidate, p) is None:
            self.abandoned, self.last, self.candidate = self.last, p, None
            return RESTART
        self.candidate = p
        return why

    def _back_to_abandoned(self, p: _Point) -> str:
        """An out-of-order frame that continues the abandoned clock is a candidate for
        going back to it; a second one confirms (the jump away was not the vehicle's)."""
        if self.abandoned is None or self._implausible(self.abandoned, p) is not None:
            return OUT_OF_ORDER
        if self.candidate is not None and self._implausible(self.candidate, p) is None:
            self.last, self.candidate, self.abandoned = p, None, None
            return RESTART
        self.candidate = p
        return OUT_OF_ORDER

    def _implausible(self, a: _Point, b: _Point) -> str | None:
        lim = self.limits
        a_seq, a_t, a_x, a_y = a
        b_seq, b_t, b_x, b_y = b
        if b_seq <= a_seq or b_t <= a_t:
            return OUT_OF_ORDER
        dt = (b_t - a_t) / NS
        if dt > lim.max_time_jump_s:
            return f"implausible_time_jump (+{dt:.0f} s)"
        if b_seq - a_seq > lim.max_seq_jump:
            return f"implausible_seq_jump (+{b_seq - a_seq})"
        dist = math.hypot(b_x - a_x, b_y - a_y)
        if dist > lim.max_speed_ms * dt + lim.position_slack_m:
            return f"implausible_teleport ({dist:.0f} m in {dt:.2f} s)"
        return None
