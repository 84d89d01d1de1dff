"""WireGuard key pairs (Curve25519), in the base64 form ``wg`` uses."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)


def generate_keypair() -> tuple[str, str]:
    """(private, public), each 44 characters of base64 like 'wg genkey | wg pubkey'."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def public_key(private_b64: str) -> str:
    raw = base64.b64decode(private_b64, validate=True)
    pub = X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def is_public_key(text: str) -> bool:
    try:
        X25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError:
        return False
    return True
