"""Secrets people and devices hold: tokens, passwords, bootstrap codes.

Pure functions, no I/O.

* Tokens (API tokens, provisioning keys, device credentials, activation codes)
  are ``<kind>_<base64url of 32 random bytes>``. They carry 256 bits of
  entropy, so the controller stores only a fast SHA-256 digest; a slow hash
  would add nothing but CPU cost. The ``kind`` prefix lets a pasted secret be
  recognised (and lets secret scanners find leaked ones).
* Passwords are low-entropy and get argon2id.
* Bootstrap codes are typed by a human from a console: 20 characters from an
  alphabet without look-alikes (no 0/O, 1/I), 100 bits.

Errors: ``ValueError`` for a malformed token kind; the verify functions return
``False`` instead of raising.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "ACTIVATION_CODE",
    "API_TOKEN",
    "DEVICE_CREDENTIAL",
    "PROVISIONING_KEY",
    "bootstrap_codes_match",
    "check_password_strength",
    "hash_password",
    "new_bootstrap_code",
    "new_token",
    "normalize_code",
    "password_needs_rehash",
    "token_digest",
    "token_hint",
    "token_kind",
    "verify_password",
]

API_TOKEN = "zgt"  # noqa: S105 - a prefix, not a secret
PROVISIONING_KEY = "zgk"
DEVICE_CREDENTIAL = "zgd"
ACTIVATION_CODE = "zga"

_TOKEN_BYTES = 32
_KIND_RE = re.compile(r"[a-z][a-z0-9]{1,7}")
# 32 random bytes -> 43 base64url characters without padding.
_TOKEN_RE = re.compile(r"([a-z][a-z0-9]{1,7})_([A-Za-z0-9_-]{43})")

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
# A passphrase this long is strong even in a single character class.
_PASSPHRASE_LENGTH = 20

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_GROUPS = 5
CODE_GROUP_LENGTH = 4

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


# --------------------------------------------------------------------------- tokens


def new_token(kind: str) -> str:
    """A new random secret ``<kind>_<43 base64url chars>`` (256 bits)."""
    if not _KIND_RE.fullmatch(kind):
        raise ValueError(f"token kind {kind!r} must be 2-8 lowercase letters/digits starting with a letter")
    body = base64.urlsafe_b64encode(secrets.token_bytes(_TOKEN_BYTES)).rstrip(b"=")
    return f"{kind}_{body.decode('ascii')}"


def token_kind(token: str) -> str | None:
    """The kind prefix of a well-formed token (``"zgk"``...), else None."""
    match = _TOKEN_RE.fullmatch(token.strip())
    return match.group(1) if match else None


def token_digest(token: str) -> str:
    """Hex SHA-256 of the token: what the controller stores and looks up by."""
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def token_hint(token: str) -> str:
    """A safe-to-display fragment: the prefix plus 4 characters, e.g. ``zgk_AbCd``."""
    match = _TOKEN_RE.fullmatch(token.strip())
    if not match:
        return "(malformed token)"
    return f"{match.group(1)}_{match.group(2)[:4]}"


# --------------------------------------------------------------------------- passwords


def hash_password(password: str) -> str:
    """An argon2id hash string (PHC format) of ``password``."""
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """True if ``password`` matches ``stored``; False on mismatch or a malformed hash."""
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    except (ValueError, TypeError):
        return False


def password_needs_rehash(stored: str) -> bool:
    """True if ``stored`` was made with weaker parameters than today's (or is malformed)."""
    try:
        return _hasher.check_needs_rehash(stored)
    except (InvalidHashError, ValueError, TypeError):
        return True


def _character_classes(password: str) -> int:
    classes = (
        any(c.islower() for c in password),
        any(c.isupper() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    )
    return sum(classes)


def check_password_strength(password: str) -> str | None:
    """A message saying why ``password`` is too weak, or None if acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password is too short: use at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"password is too long: use at most {MAX_PASSWORD_LENGTH} characters"
    if len(set(password)) < 5:
        return "password repeats too few different characters: mix in more variety"
    if _character_classes(password) < 2 and len(password) < _PASSPHRASE_LENGTH:
        return (
            "password uses only one kind of character: mix letters with digits, "
            f"capitals or symbols, or use a passphrase of {_PASSPHRASE_LENGTH}+ characters"
        )
    return None


# --------------------------------------------------------------------------- codes


def new_bootstrap_code() -> str:
    """A one-time code like ``K7QM-2WXD-...`` (5 groups of 4, 100 bits)."""
    chars = [secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUPS * CODE_GROUP_LENGTH)]
    groups = ["".join(chars[i : i + CODE_GROUP_LENGTH]) for i in range(0, len(chars), CODE_GROUP_LENGTH)]
    return "-".join(groups)


def normalize_code(text: str) -> str:
    """Upper-case and drop spaces and dashes, so any typed spelling compares equal."""
    return re.sub(r"[\s\-]+", "", text).upper()


def bootstrap_codes_match(expected: str, typed: str) -> bool:
    """Constant-time comparison of two codes after normalisation."""
    return hmac.compare_digest(
        normalize_code(expected).encode("utf-8"), normalize_code(typed).encode("utf-8")
    )
