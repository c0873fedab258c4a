"""The byte-exact test vectors of docs/WIRE.md: their records, and record <-> JSON mapping.

``python -m tests.wire_vectors`` rewrites ``tests/data/wire/*.json`` from the records below
(only when a layout changes on purpose: the files are the contract other languages test
against). tests/unit/test_wire_vectors.py checks the files against the codecs.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import deadletter, envelope, headers, prediction, prediction_json, sensor
from schemas.errors import CodecError
from schemas.headers import Headers
from schemas.model_spec import InputSpec
from schemas.signing import public_text, sign_envelope, signing_bytes
from trainer import wire

DIR = Path(__file__).parent / "data" / "wire"

SIGNING_SEED = bytes(range(32))
"""Ed25519 private key (raw 32-byte seed) of the signed envelope vector: a test key only."""

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns


# --- record <-> JSON ------------------------------------------------------------------


def _f(v: float | None) -> float | None:
    return None if v is None or v != v else v


def frames_json(frames: list[sensor.SensorFrame]) -> dict[str, Any]:
    return {"frames": [{k: _f(v) if isinstance(v, float) else v for k, v in
                        dataclasses.asdict(f).items()} for f in frames]}  # fmt: skip


def frames_of(rec: dict[str, Any]) -> list[sensor.SensorFrame]:
    return [sensor.SensorFrame(**f) for f in rec["frames"]]


def prediction_json_of(p: prediction.Prediction) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(p).items()}


def prediction_of(rec: dict[str, Any]) -> prediction.Prediction:
    lists = ("horizons_s", "pred_x", "pred_y")
    return prediction.Prediction(**{k: tuple(v) if k in lists else v for k, v in rec.items()})


def envelope_json(env: envelope.ModelEnvelope) -> dict[str, Any]:
    out = {f.name: getattr(env, f.name) for f in dataclasses.fields(env)}
    out["input_spec"] = json.loads(env.input_spec.to_json())
    out["onnx"] = env.onnx.hex()
    return out


def envelope_of(rec: dict[str, Any]) -> envelope.ModelEnvelope:
    fields = {**rec, "onnx": bytes.fromhex(rec["onnx"])}
    fields["input_spec"] = InputSpec.from_json(json.dumps(rec["input_spec"]))
    return envelope.ModelEnvelope(**fields)


def dead_letter_json(d: deadletter.DeadLetter) -> dict[str, Any]:
    out = dataclasses.asdict(d)
    out["raw_value"] = d.raw_value.hex()
    out["raw_headers"] = [[k, None if v is None else v.hex()] for k, v in d.raw_headers]
    return out


def dead_letter_of(rec: dict[str, Any]) -> deadletter.DeadLetter:
    o = rec["original"]
    return deadletter.DeadLetter(
        **{
            **rec,
            "raw_value": bytes.fromhex(rec["raw_value"]),
            "raw_headers": tuple(
                (k, None if v is None else bytes.fromhex(v)) for k, v in rec["raw_headers"]
            ),
            "original": None if o is None else deadletter.Original(**o),
        }
    )


def _tensors_json(t: wire.Tensors) -> dict[str, Any]:
    return {k: {"shape": list(v.shape), "values": v.ravel().tolist()} for k, v in sorted(t.items())}


def _tensors_of(rec: dict[str, Any]) -> wire.Tensors:
    return {
        k: np.array(v["values"], np.float32).reshape(v["shape"]) for k, v in rec["tensors"].items()
    }


def delta_json(d: wire.Delta) -> dict[str, Any]:
    out = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
    out["tensors"] = _tensors_json(d.tensors)
    out["sensor_offsets"] = {str(p): o for p, o in d.sensor_offsets.items()}
    return out


def delta_of(rec: dict[str, Any]) -> wire.Delta:
    offsets = {int(p): o for p, o in rec["sensor_offsets"].items()}
    return wire.Delta(**{**rec, "tensors": _tensors_of(rec), "sensor_offsets": offsets})


def weights_json(w: wire.Weights) -> dict[str, Any]:
    out = {f.name: getattr(w, f.name) for f in dataclasses.fields(w)}
    out["tensors"] = _tensors_json(w.tensors)
    return out


def weights_of(rec: dict[str, Any]) -> wire.Weights:
    return wire.Weights(**{**rec, "tensors": _tensors_of(rec)})


Codec = tuple[Callable[[bytes], Any], Callable[[Any], bytes], Callable[[Any], Any], Callable]
CODECS: dict[str, Codec] = {
    # schema name: (decode value, encode object, object -> record JSON, record JSON -> object)
    "sensor_frame": (sensor.decode_frames, sensor.encode_frames, frames_json, frames_of),
    "prediction": (
        prediction.decode_prediction,
        prediction.encode_prediction,
        prediction_json_of,
        prediction_of,
    ),
    "prediction+json": (
        prediction_json.decode_prediction_json,
        prediction_json.encode_prediction_json,
        prediction_json_of,
        prediction_of,
    ),
    "model_envelope": (
        envelope.decode_envelope,
        envelope.encode_envelope,
        envelope_json,
        envelope_of,
    ),
    "dead_letter": (
        deadletter.decode_dead_letter,
        deadletter.encode_dead_letter,
        dead_letter_json,
        dead_letter_of,
    ),
    "ps_delta": (wire.decode_delta, wire.encode_delta, delta_json, delta_of),
    "ps_weights": (wire.decode_weights, wire.encode_weights, weights_json, weights_of),
}


# --- the vectors ----------------------------------------------------------------------


def header_json(k: str, v: bytes | None) -> dict[str, Any]:
    shown: Any = None
    if v is not None:
        is_stamp = k.startswith("ds-t-") and len(v) == 8
        shown = int.from_bytes(v, "big", signed=True) if is_stamp else v.decode()
    return {"key": k, "hex": None if v is None else v.hex(), "value": shown}


def vector(
    name: str, topic: str, key: str | None, value: bytes, hdrs: Headers, record: Any, **extra: Any
) -> dict[str, Any]:
    tag = headers.get(hdrs, headers.SCHEMA)
    assert tag is not None
    return {
        "name": name,
        "topic": topic,
        "schema": tag.decode(),
        "key": None if key is None else {"text": key, "hex": key.encode().hex()},
        "headers": [header_json(k, v) for k, v in hdrs],
        "value_hex": value.hex(),
        "record": record,
        **extra,
    }


def _prediction(source: str = "model") -> prediction.Prediction:
    model = source == "model"
    return prediction.Prediction(
        vehicle_id="car-1",
        seq=42,
        t_event_ns=T0,
        horizons_s=(0.5, 1.0, 2.0, 3.0),
        pred_x=(12.5, 17.25, 27.0, 36.875) if model else (12.5, 17.5, 27.5, 37.5),
        pred_y=(-3.0, -2.5, -1.25, 0.0625) if model else (-3.0, -3.0, -3.0, -3.0),
        model_version=7 if model else -1,
        model_name="drivestream" if model else "cv",
        source="model" if model else "fallback",
        reason="" if model else "deadline",
        t_produce_ns=T0 + 1_000_000,
        t_consumed_ns=T0 + 2_000_000,
        t_infer_start_ns=T0 + 2_500_000,
        t_infer_end_ns=T0 + 3_250_000,
        t_published_ns=T0 + 3_500_000,
    )


def build() -> dict[str, dict[str, Any]]:
    """Every vector, by file stem."""
    out: dict[str, dict[str, Any]] = {}
    f1 = sensor.SensorFrame("car-1", 42, T0, 12.0, -3.0, 10.0, 0.0, 0.05, -0.5)
    out["sensor-frame"] = vector(
        "one frame, no GNSS", "sensors", "car-1", sensor.encode_frames([f1]),
        sensor.frame_headers(T0 + 1_000_000), frames_json([f1]),
    )  # fmt: skip
    f2 = [
        sensor.SensorFrame(
            "véh-2",
            7 + i,
            T0 + i * 100_000_000,
            1.5 + i,
            2.25,
            5.0,
            1.5707963267948966,
            -0.125,
            0.25,
            48.137154,
            11.576124,
            4,
        )
        for i in range(2)
    ]
    out["sensor-frames-gnss"] = vector(
        "two frames of one vehicle with GNSS, non-ASCII vehicle id",
        "sensors",
        "véh-2",
        sensor.encode_frames(f2),
        sensor.frame_headers(T0 + 150_000_000),
        frames_json(f2),
    )
    for stem, p in (("prediction", _prediction()), ("prediction-fallback", _prediction("x"))):
        out[stem] = vector(
            f"prediction from the {p.source}", "predictions", p.vehicle_id,
            prediction.encode_prediction(p), prediction.prediction_headers(),
            prediction_json_of(p),
        )  # fmt: skip
    p = _prediction()
    out["prediction-json"] = vector(
        "the first prediction in the JSON layout (--predictions-format json)", "predictions",
        p.vehicle_id, prediction_json.encode_prediction_json(p),
        prediction.prediction_headers("json"), prediction_json_of(p),
    )  # fmt: skip
    out["model-envelope"] = _envelope_vector()
    out.update(_dead_letter_vectors())
    delta = wire.Delta(
        group="trainers", base_version=6, steps=20, samples=640, trained_until_ns=T0,
        trained_until_produce_ns=T0 + 1_000_000, sensor_offsets={0: 120, 1: 98},
        metrics={"loss": 0.25}, anchor_id="5f0c2d9a41b7e3c8",
        tensors={"b": np.array([0.5, -0.25], np.float32),
                 "w": np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)},
    )  # fmt: skip
    out["ps-delta"] = vector(
        "a trainer group's delta", "ps-updates", "trainers", wire.encode_delta(delta),
        wire.delta_headers(), delta_json(delta),
    )  # fmt: skip
    weights = wire.Weights(
        version=7, created_ns=T0 + 5_000_000_000, updates_offset=31,
        tensors={"b": np.array([0.5, -0.25], np.float32), "w": np.eye(2, dtype=np.float32)},
    )  # fmt: skip
    out["ps-weights"] = vector(
        "the server's master weights", "ps-weights", "drivestream",
        wire.encode_weights(weights), wire.weights_headers(), weights_json(weights),
    )  # fmt: skip
    return out


def _envelope_vector() -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)
    env = sign_envelope(
        envelope.ModelEnvelope(
            name="drivestream",
            version=7,
            parent_version=5,
            created_ns=T0 + 5_000_000_000,
            trained_until_ns=T0,
            steps=20,
            samples=640,
            input_spec=InputSpec(),
            onnx=b"\x08\x09\x12\x07example",
            metrics={"ade_m": 0.5, "ps.accepted": 3.0},
        ),
        key,
    )
    return vector(
        "a signed model envelope (the ONNX bytes are a stand-in)", "models", env.name,
        envelope.encode_envelope(env), envelope.envelope_headers(), envelope_json(env),
        public_key_base64=public_text(key.public_key()),
        signed_message_hex=signing_bytes(env).hex(),
        signature_hex=base64.b64decode(env.signature).hex(),
    )  # fmt: skip


def _dead_letter_vectors() -> dict[str, dict[str, Any]]:
    bad = sensor.encode_frames([sensor.SensorFrame("car-1", 1, T0, 0.0, 0, 0, 0, 0, 0)])[:-9]
    src = [("ds-schema", b"sensor_frame/1"), ("ds-t-produce-ns", headers.stamp(T0)), ("x", None)]
    try:
        sensor.decode_frames(bad)
        raise AssertionError("the cut value must not decode")
    except CodecError as exc:
        d = deadletter.of_record("sensors", 2, 1234, bad, src, str(exc), "inference", exc)
    whole = deadletter.dead_letter_record(d, b"car-1")
    small = deadletter.minimal_record(d, b"car-1")
    return {
        "deadletter": vector(
            "a truncated sensors record, kept whole",
            "deadletter",
            "car-1",
            whole.value,
            whole.headers,
            dead_letter_json(deadletter.decode_dead_letter(whole.value)),
        ),
        "deadletter-minimal": vector(
            "the same, minimal (sizes and sha256 only, no key)",
            "deadletter",
            None,
            small.value,
            small.headers,
            dead_letter_json(deadletter.decode_dead_letter(small.value)),
        ),
    }


def load() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DIR.glob("*.json"))}


def main() -> None:
    DIR.mkdir(parents=True, exist_ok=True)
    for stem, v in build().items():
        (DIR / f"{stem}.json").write_text(json.dumps(v, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {DIR / stem}.json")


if __name__ == "__main__":
    main()
