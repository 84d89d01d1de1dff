"""WireGuard key pairs (Curve25519), in the base64 form ``wg`` uses."""

from __future__ import annotations

import base64
import re

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


# 32 bytes are 43 base64 digits and one '='; the last digit carries only 4 bits,
# so its 2 unused low bits must be zero. This pattern therefore admits exactly
# one spelling per key: the one ``wg pubkey`` prints.
_PUBLIC_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")


class InvalidKey(ValueError):
    """Not a WireGuard key in the form ``wg`` prints."""


def parse_public_key(text: str) -> bytes:
    """The 32 bytes of a public key written as ``wg pubkey`` prints it.

    Anything else (padding missing, a newline or space around it, URL-safe
    digits, non-zero spare bits) is refused rather than repaired: a key is
    compared with the enrolled ones by its bytes, and one key must never be
    accepted under two spellings.
    """
    if not _PUBLIC_KEY.fullmatch(text):
        raise InvalidKey("not a WireGuard public key (44 characters of base64, as 'wg pubkey' prints)")
    return base64.b64decode(text, validate=True)  # 44 characters of this pattern are 32 bytes


def canonical_public_key(text: str) -> str:
    """``text`` as the one spelling the controller stores and compares."""
    return base64.b64encode(parse_public_key(text)).decode("ascii")
