"""Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP).

HMAC-SHA1, 6 digits, 30-second steps: what every authenticator app defaults
to. Pure functions; the caller supplies the time and stores the last accepted
time step so that a code cannot be replayed.

Errors: ``InvalidTotpSecret(ValueError)`` for a secret that is not base32.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from urllib.parse import quote, urlencode

__all__ = [
    "InvalidTotpSecret",
    "hotp_code",
    "new_totp_secret",
    "provisioning_uri",
    "time_step",
    "totp_code",
    "verify_totp",
]

_SECRET_BYTES = 20  # 160 bits, as RFC 4226 recommends for SHA-1


class InvalidTotpSecret(ValueError):
    """The shared secret is not valid base32."""


def new_totp_secret() -> str:
    """A new random 160-bit secret, base32 without padding (32 characters)."""
    return base64.b32encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii").rstrip("=")


def _decode_secret(secret: str) -> bytes:
    cleaned = re.sub(r"[\s-]+", "", secret).upper().rstrip("=")
    if not cleaned:
        raise InvalidTotpSecret("TOTP secret is empty")
    padded = cleaned + "=" * (-len(cleaned) % 8)
    try:
        return base64.b32decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise InvalidTotpSecret(f"TOTP secret is not valid base32: {exc}") from exc


def hotp_code(key: bytes, counter: int, *, digits: int = 6) -> str:
    """RFC 4226 HOTP value for ``counter``."""
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def time_step(at: float, *, step: int = 30) -> int:
    """The RFC 6238 counter for Unix time ``at``."""
    return int(at // step)


def totp_code(secret: str, at: float, *, step: int = 30, digits: int = 6) -> str:
    """The code an authenticator shows at Unix time ``at``."""
    return hotp_code(_decode_secret(secret), time_step(at, step=step), digits=digits)


def verify_totp(
    secret: str,
    code: str,
    at: float,
    *,
    window: int = 1,
    last_used_step: int | None = None,
    step: int = 30,
    digits: int = 6,
) -> int | None:
    """Check ``code``; return the matched time step, or None.

    Steps within ``window`` of now are accepted to absorb clock drift. A step
    at or before ``last_used_step`` is refused, so storing the returned value
    and passing it back makes every code single-use.
    """
    typed = re.sub(r"\s+", "", code)
    if len(typed) != digits or not typed.isascii() or not typed.isdigit():
        return None
    key = _decode_secret(secret)
    now = time_step(at, step=step)
    matched: int | None = None
    # Compare every candidate (no early exit) so timing says nothing about which one hit.
    for counter in range(now - window, now + window + 1):
        if counter < 0:
            continue
        candidate = hotp_code(key, counter, digits=digits)
        hit = hmac.compare_digest(candidate.encode("ascii"), typed.encode("ascii"))
        fresh = last_used_step is None or counter > last_used_step
        if hit and fresh and matched is None:
            matched = counter
    return matched


def provisioning_uri(secret: str, account: str, issuer: str = "zerogate") -> str:
    """An ``otpauth://totp/...`` URI for a QR code or manual entry."""
    _decode_secret(secret)
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode(
        {
            "secret": re.sub(r"\s+", "", secret).upper().rstrip("="),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": "6",
            "period": "30",
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"
