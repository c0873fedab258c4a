"""Ed25519 signatures on model envelopes: only the parameter server can publish a model.

Keys: the server's private key is a PEM file (by default ``<checkpoint-dir>/ps-<model>.key``,
created 0600 on first start) with its public key beside it (``.pub``, one base64 line);
`serve` trusts public keys given as files (PEM or base64 lines) or as base64 text.

What is signed: :func:`signing_bytes`, the whole envelope encoding with an empty signature,
so name, version, parent, digest, ONNX bytes, metrics, spec and signer are all covered:
changing any of them breaks the signature, and a signature cannot be moved to another name
or version. Replaying an old signed envelope is refused by the receiver's version rule.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.envelope import ModelEnvelope, decode_envelope, encode_envelope
from schemas.errors import ConfigError, ValidationError

DOMAIN = b"drivestream model envelope v1\n"
"""Prefix of every signed message, so the key signs nothing else by accident."""

UNSIGNED, UNTRUSTED_KEY, BAD_SIGNATURE = "unsigned", "untrusted_key", "bad_signature"


class SignatureError(ValidationError):
    """An envelope is unsigned, signed by a key not trusted, or its signature does not match.

    ``label`` is one of ``unsigned``, ``untrusted_key``, ``bad_signature``."""

    def __init__(self, label: str, message: str) -> None:
        super().__init__("signature", message)
        self.label = label


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """Short fingerprint carried in ``ModelEnvelope.signer``."""
    return "ed25519:" + hashlib.sha256(_raw(public)).hexdigest()[:16]


def public_text(public: Ed25519PublicKey) -> str:
    """Base64 of the raw 32-byte key: what ``--trusted-keys`` and ``.pub`` files hold."""
    return base64.b64encode(_raw(public)).decode()


def public_key_path(private_path: str | Path) -> Path:
    return Path(private_path).with_suffix(".pub")


def load_or_create_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read the PEM private key at ``path``, or create it (0600) and its ``.pub`` beside it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:  # O_EXCL: two servers starting at once must not overwrite each other's key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_private_key(path)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        _write_public(path, key.public_key())
        return key
    try:
        loaded = serialization.load_pem_private_key(raw, password=None)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key ({exc}); move it away and the "
            "server creates a new one (then give serve the new .pub)"
        ) from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(loaded).__name__}, need an Ed25519 key")
    if not public_key_path(path).exists():
        _write_public(path, loaded.public_key())
    return loaded


def _write_public(private_path: Path, public: Ed25519PublicKey) -> None:
    pub = public_key_path(private_path)
    tmp = pub.with_suffix(".pub.tmp")
    tmp.write_text(public_text(public) + "\n")
    os.replace(tmp, pub)


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from PEM or base64 of the raw 32 bytes; ConfigError if neither."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{type(key).__name__} is not an Ed25519 key")
            return key
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(
            f"cannot read Ed25519 public key {text[:24]!r}...: {exc}; give the base64 line "
            "of the parameter server's .pub file or a PEM public key"
        ) from exc


def read_public_keys(path: str | Path) -> list[Ed25519PublicKey]:
    """Every key in a file: one PEM block, or base64 lines (``#`` starts a comment)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read trusted key file {path}: {exc.strerror}; start the parameter "
            "server once (it writes <checkpoint-dir>/ps-<model>.pub) or pass --allow-unsigned"
        ) from exc
    if "-----BEGIN" in text:
        return [parse_public_key(text)]
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    keys = [parse_public_key(ln) for ln in lines if ln]
    if not keys:
        raise ConfigError(f"trusted key file {path} holds no key")
    return keys


def signing_bytes(env: ModelEnvelope) -> bytes:
    """The message signed: the domain prefix and the envelope encoded without signature."""
    return DOMAIN + encode_envelope(dataclasses.replace(env, signature=""))


def sign_envelope(env: ModelEnvelope, key: Ed25519PrivateKey) -> ModelEnvelope:
    """``env`` signed by ``key``, in the canonical form a receiver decodes it to."""
    signed = dataclasses.replace(env, signer=key_id(key.public_key()))
    env = decode_envelope(encode_envelope(signed))
    signature = key.sign(signing_bytes(env))
    return dataclasses.replace(env, signature=base64.b64encode(signature).decode())


class TrustedKeys:
    """The public keys `serve` accepts envelopes from, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id(k): k for k in keys}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, env: ModelEnvelope) -> None:
        """Raise SignatureError unless ``env`` is signed by a trusted key."""
        if not env.signature:
            raise SignatureError(UNSIGNED, "the envelope carries no signature")
        key = self._keys.get(env.signer)
        if key is None:
            raise SignatureError(
                UNTRUSTED_KEY,
                f"signed by {env.signer or '(no key id)'}, trusted: {self.ids or 'none'}",
            )
        try:
            key.verify(base64.b64decode(env.signature, validate=True), signing_bytes(env))
        except (InvalidSignature, ValueError, binascii.Error) as exc:
            raise SignatureError(
                BAD_SIGNATURE, f"signature does not match the envelope (key {env.signer})"
            ) from exc
