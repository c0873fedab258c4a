"""Signed model envelopes: what the parameter server signs and what serve will trust."""

from __future__ import annotations

import dataclasses
import stat
import statistics
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inference.config import ServeConfig
from schemas.envelope import decode_envelope, encode_envelope
from schemas.errors import ConfigError
from schemas.signing import (
    SignatureError,
    TrustedKeys,
    key_id,
    load_or_create_private_key,
    parse_public_key,
    public_key_path,
    read_public_keys,
    sign_envelope,
)
from tests.model_fixtures import TEST_KEY, TEST_PUBLIC, cv_onnx, envelope

TRUSTED = TrustedKeys([TEST_KEY.public_key()])


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return cv_onnx()


def label_of(value: bytes, keys: TrustedKeys = TRUSTED) -> str:
    with pytest.raises(SignatureError) as info:
        keys.verify(decode_envelope(value))
    return info.value.label


def test_a_signed_envelope_verifies_after_the_wire(onnx_bytes) -> None:
    env = envelope(onnx_bytes, 7)
    got = decode_envelope(encode_envelope(env))
    TRUSTED.verify(got)
    assert got.signer == key_id(TEST_KEY.public_key()) and got == env


@pytest.mark.parametrize("where", ["onnx", "metadata"])
def test_any_tampered_byte_breaks_the_signature(onnx_bytes, where) -> None:
    value = bytearray(encode_envelope(envelope(onnx_bytes, 7)))
    i = len(value) - 100 if where == "onnx" else value.index(b'"steps":70') + 9
    value[i] ^= 0x01  # "steps":70 -> "steps":71
    assert label_of(bytes(value)) == "bad_signature"


@pytest.mark.parametrize(
    "change", [{"version": 10**9}, {"name": "other"}, {"parent_version": 0}, {"metrics": {}}]
)
def test_a_signature_cannot_be_moved_to_other_fields(onnx_bytes, change) -> None:
    env = envelope(onnx_bytes, 7)
    env = dataclasses.replace(env, metrics={"fde": 1.0}) if "metrics" in change else env
    env = sign_envelope(env, TEST_KEY)
    moved = dataclasses.replace(env, **change)
    assert label_of(encode_envelope(moved)) == "bad_signature"


def test_a_key_not_trusted_is_refused_even_under_a_trusted_key_id(onnx_bytes) -> None:
    other = Ed25519PrivateKey.generate()
    env = envelope(onnx_bytes, 7, key=other)
    assert label_of(encode_envelope(env)) == "untrusted_key"
    forged = dataclasses.replace(env, signer=key_id(TEST_KEY.public_key()))
    assert label_of(encode_envelope(forged)) == "bad_signature"


def test_an_unsigned_envelope_is_refused(onnx_bytes) -> None:
    assert label_of(encode_envelope(envelope(onnx_bytes, 7, key=None))) == "unsigned"
    assert label_of(encode_envelope(envelope(onnx_bytes, 7)), TrustedKeys()) == "untrusted_key"


def test_the_key_is_created_once_0600_and_its_public_half_written_beside_it(tmp_path) -> None:
    path = tmp_path / "ps" / "ps-m.key"
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_id(load_or_create_private_key(path).public_key()) == key_id(key.public_key())
    (pub,) = read_public_keys(public_key_path(path))
    assert key_id(pub) == key_id(key.public_key())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_id(parse_public_key(pem.decode())) == key_id(key.public_key())
    with pytest.raises(ConfigError, match="public key"):
        parse_public_key("not a key")


def test_serve_refuses_to_start_trusting_no_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--trusted-key-files"):
        ServeConfig().trust()
    with pytest.raises(ConfigError, match="--allow-unsigned"):
        ServeConfig(trusted_key_files=(str(tmp_path / "missing.pub"),)).trust()
    assert len(ServeConfig(allow_unsigned=True).trust().keys) == 0
    (tmp_path / "k.pub").write_text(f"# the ps key\n{TEST_PUBLIC}\n")
    trust = ServeConfig(trusted_key_files=(str(tmp_path / "k.pub"),)).trust()
    assert trust.keys.ids == [key_id(TEST_KEY.public_key())] and not trust.allow_unsigned
    assert ServeConfig(trusted_keys=(TEST_PUBLIC,)).trust().keys.ids == trust.keys.ids


class Sent:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def send(self, topic: str, value: bytes, **kw: object) -> None:
        self.values.append(value)


def test_the_parameter_server_signs_every_export_with_its_persisted_key(tmp_path) -> None:
    from schemas.kafka import KafkaSettings
    from trainer.config import PSConfig
    from trainer.ps import ParameterServer

    cfg = PSConfig(checkpoint_dir=str(tmp_path / "ckpt"), registry_dir=str(tmp_path / "reg"))
    sent = Sent()
    ParameterServer(cfg, KafkaSettings()).export(sent)  # type: ignore[arg-type]
    ParameterServer(cfg, KafkaSettings()).export(sent)  # type: ignore[arg-type]  # a restart
    keys = TrustedKeys(read_public_keys(tmp_path / "ckpt" / "ps-drivestream-mlp.pub"))
    for value in sent.values:
        keys.verify(decode_envelope(value))
    # the cost serve pays per model: verify a real-size (trainer architecture) envelope
    env = decode_envelope(sent.values[0])
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        keys.verify(env)
        times.append(time.perf_counter() - t0)
    median_ms = statistics.median(times) * 1e3
    print(f"verify {len(sent.values[0])} B envelope: median {median_ms:.3f} ms of 200")
    assert median_ms < 20
