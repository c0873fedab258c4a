"""Seeded hostile records for `sensors` and `models`: what the hostile-input suite and
bench/bench_hostile.py mix into good traffic. Every one is invalid by construction (no
random corruption that might still decode), so each must end as a dead letter."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import headers
from schemas.envelope import encode_envelope, envelope_headers
from schemas.headers import now_ns, stamp
from schemas.sensor import SensorFrame, encode_frames, frame_headers
from tests.model_fixtures import cv_onnx, envelope

JUNK_KINDS = ("bytes", "count", "truncated", "nonfinite", "headers")
"""Bad values and headers: refused whatever the vehicle's state."""
FORGERY_KINDS = ("future", "teleport", "seq")
"""Valid-looking frames of a real vehicle that per-vehicle plausibility must refuse."""
SENSOR_KINDS = JUNK_KINDS + FORGERY_KINDS


class Hostile:
    """Seeded bad records; each kind is a way a real deployment meets junk."""

    def __init__(self, seed: int, sensor_kinds: tuple[str, ...] = SENSOR_KINDS) -> None:
        self.rng = random.Random(seed)
        self.sensor_kinds = sensor_kinds
        self.kinds: Counter[str] = Counter()

    def sensor(self, last: SensorFrame) -> tuple[bytes, bytes, list]:
        """(value, key, headers) of one bad `sensors` record; ``last`` is the good frame
        just sent of a real vehicle, for the plausibility forgeries."""
        r = self.rng
        fine = frame_headers(now_ns())
        kind = r.choice(self.sensor_kinds)
        self.kinds[kind] += 1
        key = last.vehicle_id.encode()
        good = encode_frames([dataclasses.replace(last, vehicle_id="hostile", seq=1)])
        if kind == "bytes":  # junk, sometimes with a 200 KB header
            big = [("big", r.randbytes(200_000))] if r.random() < 0.02 else []
            return r.randbytes(r.randrange(0, 3000)), r.randbytes(8), [*fine, *big]
        if kind == "count":  # no frames, or more than the value holds
            count = b"\x00\x00" if r.random() < 0.5 else b"\xff\xff"
            return count + good[2:], key, fine
        if kind == "truncated":
            return good[: r.randrange(len(good))], key, fine
        if kind == "nonfinite":
            field = r.choice(["x", "y", "speed", "yaw_rate", "accel"])
            value = r.choice([math.nan, math.inf, -math.inf])
            f = dataclasses.replace(last, vehicle_id="hostile", **{field: value})
            return encode_frames([f]), key, fine
        if kind == "headers":  # a valid frame whose headers are not
            hdrs = r.choice(
                [
                    [],
                    [(headers.SCHEMA, None), (headers.T_PRODUCE_NS, stamp(now_ns()))],
                    [(headers.SCHEMA, b"sensor_frame/1"), (headers.T_PRODUCE_NS, None)],
                    [(headers.SCHEMA, b"sensor_frame/1"), (headers.T_PRODUCE_NS, b"\x01")],
                    [(headers.SCHEMA, b"sensor_frame/1"), (headers.T_PRODUCE_NS, stamp(2**63 - 1))],
                    [(headers.SCHEMA, b"\xff\xfe"), (headers.T_PRODUCE_NS, stamp(now_ns()))],
                    [*fine, (headers.T_PRODUCE_NS, stamp(1))],
                ]
            )
            return good, key, hdrs
        # plausibility forgeries of a real vehicle: each far from any other, so no two of
        # them can confirm each other as a restart
        if kind == "future":
            ahead = r.randrange(1, 10_000) * 86_400 * 10**9
            f = dataclasses.replace(last, seq=last.seq + 1, t_event_ns=last.t_event_ns + ahead)
        elif kind == "teleport":
            angle = r.uniform(0, 2 * math.pi)
            far = r.uniform(1e5, 1e7)
            f = dataclasses.replace(
                last,
                seq=last.seq + 1,
                t_event_ns=last.t_event_ns + 1,
                x=last.x + far * math.cos(angle),
                y=last.y + far * math.sin(angle),
            )
        else:
            jump = r.randrange(1, 1000) * 200_000
            f = dataclasses.replace(last, seq=last.seq + jump, t_event_ns=last.t_event_ns + 1)
        return encode_frames([f]), key, fine

    def model(self, trusted_id: str) -> tuple[bytes, bytes, list]:
        """(value, key, headers) of one bad `models` record; ``trusted_id`` is the key id
        of the parameter server's key, which a forger can read off any genuine envelope."""
        r = self.rng
        kind = r.choice(["bytes", "unsigned_huge", "untrusted", "forged", "no_headers"])
        self.kinds["model_" + kind] += 1
        name = "drivestream-mlp"
        if kind == "bytes":
            return r.randbytes(r.randrange(0, 5000)), name.encode(), envelope_headers()
        onnx_bytes = cv_onnx()  # a plain constant-velocity model: worse than physics blend
        version = 10**9 if kind == "unsigned_huge" else r.randrange(1, 10**6)
        signer = None if kind == "unsigned_huge" else Ed25519PrivateKey.generate()
        env = envelope(onnx_bytes, version, name=name, key=signer)
        if kind == "forged":  # claims the trusted key, signature from another
            env = dataclasses.replace(env, signer=trusted_id)
        hdrs = [] if kind == "no_headers" else envelope_headers()
        return encode_envelope(env), name.encode(), hdrs
