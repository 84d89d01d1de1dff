"""Tests for TOTP (zerogate.pki.totp) against RFC 6238 vectors."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest

from zerogate.pki.totp import (
    InvalidTotpSecret,
    new_totp_secret,
    provisioning_uri,
    totp_code,
    verify_totp,
)

# RFC 6238 appendix B uses the ASCII key "12345678901234567890" for SHA-1.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode().rstrip("=")

# (time, last 6 digits of the RFC's 8-digit SHA-1 value)
RFC_VECTORS = [
    (59, "287082"),
    (1111111109, "081804"),
    (1111111111, "050471"),
    (1234567890, "005924"),
    (2000000000, "279037"),
    (20000000000, "353130"),
]


@pytest.mark.parametrize(("at", "expected"), RFC_VECTORS)
def test_rfc6238_vectors(at: int, expected: str) -> None:
    assert totp_code(RFC_SECRET, at) == expected


@pytest.mark.parametrize(("at", "expected"), RFC_VECTORS)
def test_rfc6238_vectors_eight_digits(at: int, expected: str) -> None:
    assert totp_code(RFC_SECRET, at, digits=8).endswith(expected)


def test_new_secret_is_160_bit_base32() -> None:
    secret = new_totp_secret()
    assert len(secret) == 32 and "=" not in secret
    assert len(base64.b32decode(secret)) == 20
    assert new_totp_secret() != secret


def test_secret_accepts_lowercase_and_spaces() -> None:
    spaced = " ".join(RFC_SECRET[i : i + 4] for i in range(0, len(RFC_SECRET), 4)).lower()
    assert totp_code(spaced, 59) == "287082"


@pytest.mark.parametrize("secret", ["", "not base32!", "1111"])
def test_invalid_secret(secret: str) -> None:
    with pytest.raises(InvalidTotpSecret):
        totp_code(secret, 59)
    assert issubclass(InvalidTotpSecret, ValueError)


def test_verify_returns_time_step() -> None:
    assert verify_totp(RFC_SECRET, "050471", 1111111111) == 1111111111 // 30


def test_verify_accepts_spaces_in_code() -> None:
    assert verify_totp(RFC_SECRET, " 050 471 ", 1111111111) == 1111111111 // 30


@pytest.mark.parametrize("code", ["05047a", "0504711", "05047", "", "٠٥٠٤٧١", "+50471"])
def test_verify_rejects_non_digits_and_wrong_length(code: str) -> None:
    assert verify_totp(RFC_SECRET, code, 1111111111) is None


def test_verify_window_allows_one_step_of_drift() -> None:
    secret = new_totp_secret()
    now = 1_700_000_000.0
    previous = totp_code(secret, now - 30)
    following = totp_code(secret, now + 30)
    step = int(now // 30)
    assert verify_totp(secret, previous, now) == step - 1
    assert verify_totp(secret, following, now) == step + 1
    assert verify_totp(secret, totp_code(secret, now - 60), now) is None
    assert verify_totp(secret, totp_code(secret, now - 60), now, window=2) == step - 2
    assert verify_totp(secret, previous, now, window=0) is None


def test_verify_wrong_code() -> None:
    secret = new_totp_secret()
    now = 1_700_000_000.0
    code = totp_code(secret, now)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert verify_totp(secret, wrong, now) is None


def test_replay_is_rejected() -> None:
    secret = new_totp_secret()
    now = 1_700_000_000.0
    code = totp_code(secret, now)
    used = verify_totp(secret, code, now)
    assert used is not None
    assert verify_totp(secret, code, now, last_used_step=used) is None
    # Still rejected a few seconds later within the same or next window.
    assert verify_totp(secret, code, now + 29, last_used_step=used) is None
    # An older code cannot be used after a newer one.
    older = totp_code(secret, now - 30)
    assert verify_totp(secret, older, now, last_used_step=used) is None
    # The next code is accepted.
    nxt = totp_code(secret, now + 30)
    assert verify_totp(secret, nxt, now + 30, last_used_step=used) == used + 1


def test_provisioning_uri() -> None:
    secret = new_totp_secret()
    uri = provisioning_uri(secret, "alice@example.test", issuer="Acme ZT")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert parts.path == "/Acme%20ZT:alice@example.test"
    query = parse_qs(parts.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == ["Acme ZT"]
    assert query["algorithm"] == ["SHA1"]
    assert query["digits"] == ["6"] and query["period"] == ["30"]
    assert provisioning_uri(secret, "bob").startswith("otpauth://totp/zerogate:bob?")
    with pytest.raises(InvalidTotpSecret):
        provisioning_uri("!!", "bob")


def test_rfc4226_hotp_vectors() -> None:
    from zerogate.pki.totp import hotp_code

    expected = ["755224", "287082", "359152", "969429", "338314"]
    expected += ["254676", "287922", "162583", "399871", "520489"]
    assert [hotp_code(b"12345678901234567890", i) for i in range(10)] == expected
