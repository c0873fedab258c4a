"""docs/WIRE.md's test vectors: each decodes to its documented record, and encoding that
record (and its headers) gives the same bytes back."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest

from schemas import deadletter, envelope, headers, prediction, sensor
from schemas.signing import DOMAIN, TrustedKeys, parse_public_key, signing_bytes
from tests import wire_vectors
from tests.wire_vectors import CODECS
from trainer import wire

VECTORS = wire_vectors.load()


def test_every_topic_and_layout_has_a_vector_and_the_files_are_current() -> None:
    schemas = {v["schema"] for v in VECTORS.values()}
    assert schemas == {
        "sensor_frame/1", "prediction/1", "prediction+json/1", "model_envelope/1",
        "dead_letter/2", "ps_delta/1", "ps_weights/1",
    }  # fmt: skip
    assert wire_vectors.build() == VECTORS, "run python -m tests.wire_vectors after a change"


@pytest.mark.parametrize("stem", sorted(VECTORS))
def test_vector_decodes_to_its_record_and_reencodes_byte_for_byte(stem: str) -> None:
    v = VECTORS[stem]
    decode, encode, to_json, from_json = CODECS[v["schema"].rsplit("/", 1)[0]]
    value = bytes.fromhex(v["value_hex"])
    decoded = decode(value)
    assert to_json(decoded) == v["record"]
    assert encode(from_json(v["record"])).hex() == v["value_hex"]


@pytest.mark.parametrize("stem", sorted(VECTORS))
def test_vector_headers_and_key_are_what_the_producers_write(stem: str) -> None:
    v = VECTORS[stem]
    got = [(h["key"], None if h["hex"] is None else bytes.fromhex(h["hex"])) for h in v["headers"]]
    assert headers.get(got, headers.SCHEMA) == v["schema"].encode()
    name = v["schema"].rsplit("/", 1)[0]
    value = bytes.fromhex(v["value_hex"])
    if name == "sensor_frame":
        t_produce = sensor.check_frame_headers(got)
        assert got == sensor.frame_headers(t_produce)
    elif name.startswith("prediction"):
        fmt = prediction.check_prediction_headers(got)
        assert got == prediction.prediction_headers(fmt)
        assert prediction.decode_prediction(value, fmt) == wire_vectors.prediction_of(v["record"])
    elif name == "model_envelope":
        envelope.check_envelope_headers(got)
        assert got == envelope.envelope_headers()
    elif name == "dead_letter":
        deadletter.check_dead_letter_headers(got)
        assert got == deadletter.dead_letter_headers(deadletter.decode_dead_letter(value))
    else:
        assert got == (wire.delta_headers() if name == "ps_delta" else wire.weights_headers())
    for h in v["headers"]:
        if h["hex"] is not None and not h["key"].startswith("ds-t-"):
            assert bytes.fromhex(h["hex"]).decode() == h["value"]
    if v["key"] is not None:
        assert bytes.fromhex(v["key"]["hex"]).decode() == v["key"]["text"]


def test_signed_envelope_verifies_and_the_documented_recipe_rebuilds_the_signed_bytes() -> None:
    v = VECTORS["model-envelope"]
    value = bytes.fromhex(v["value_hex"])
    env = envelope.decode_envelope(value)
    env.verify()
    TrustedKeys([parse_public_key(v["public_key_base64"])]).verify(env)
    assert signing_bytes(env).hex() == v["signed_message_hex"]
    assert base64.b64decode(env.signature).hex() == v["signature_hex"]
    # WIRE.md: blank the signature string inside the metadata JSON, fix the length prefix.
    (n,) = struct.unpack_from("<I", value)
    meta = value[4 : 4 + n]
    field = b'"signature":"' + env.signature.encode() + b'"'
    assert meta.count(field) == 1
    blank = meta.replace(field, b'"signature":""')
    rebuilt = DOMAIN + struct.pack("<I", len(blank)) + blank + value[4 + n :]
    assert rebuilt.hex() == v["signed_message_hex"]
    raw_key = base64.b64decode(v["public_key_base64"])
    assert env.signer == "ed25519:" + hashlib.sha256(raw_key).hexdigest()[:16]


def test_minimal_dead_letter_describes_the_whole_ones_original_bytes() -> None:
    whole = VECTORS["deadletter"]["record"]
    original = VECTORS["deadletter-minimal"]["record"]["original"]
    raw = bytes.fromhex(whole["raw_value"])
    assert original["value_size"] == len(raw)
    assert original["value_sha256"] == hashlib.sha256(raw).hexdigest()
    assert original["key_sha256"] == hashlib.sha256(b"car-1").hexdigest()
    h = hashlib.sha256()
    for k, hx in whole["raw_headers"]:
        val = None if hx is None else bytes.fromhex(hx)
        h.update(struct.pack(">I", len(k)) + k.encode())
        h.update(struct.pack(">i", -1 if val is None else len(val)) + (val or b""))
    assert original["headers_sha256"] == h.hexdigest()
