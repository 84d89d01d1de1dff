"""Tests for tokens, passwords and bootstrap codes (zerogate.pki.credentials)."""

from __future__ import annotations

import hashlib
import re

import pytest
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st

from zerogate.pki.credentials import (
    CODE_ALPHABET,
    bootstrap_codes_match,
    check_password_strength,
    hash_password,
    new_bootstrap_code,
    new_token,
    normalize_code,
    password_needs_rehash,
    token_digest,
    token_hint,
    token_kind,
    verify_password,
)


@pytest.mark.parametrize("kind", ["zgt", "zgk", "zgd", "zga"])
def test_new_token_shape_and_kind(kind: str) -> None:
    token = new_token(kind)
    assert re.fullmatch(rf"{kind}_[A-Za-z0-9_-]{{43}}", token)
    assert token_kind(token) == kind
    assert new_token(kind) != token


@pytest.mark.parametrize("kind", ["", "z", "ZGT", "zg_t", "toolongkind", "1zg"])
def test_new_token_rejects_bad_kind(kind: str) -> None:
    with pytest.raises(ValueError, match="token kind"):
        new_token(kind)


@pytest.mark.parametrize(
    "text", ["", "zgk", "zgk_", "zgk_short", "nounderscore" + "A" * 43, "zgk_" + "A" * 42 + "!"]
)
def test_token_kind_none_for_malformed(text: str) -> None:
    assert token_kind(text) is None
    assert token_hint(text) == "(malformed token)"


def test_token_digest_is_hex_sha256() -> None:
    token = new_token("zgt")
    assert token_digest(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token_digest(token + "\n") == token_digest(token)
    assert token_digest(new_token("zgt")) != token_digest(token)


def test_token_hint_reveals_only_prefix_and_four_chars() -> None:
    token = new_token("zgk")
    hint = token_hint(token)
    assert hint == token[:8]
    assert len(hint) == len("zgk_") + 4


def test_password_hash_roundtrip() -> None:
    stored = hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse battery staple")
    assert not verify_password(stored, "correct horse battery stapl")
    assert not password_needs_rehash(stored)
    assert hash_password("correct horse battery staple") != stored  # salted


@pytest.mark.parametrize("stored", ["", "plain", "$argon2id$v=19$m=1$broken", "$2b$12$abc"])
def test_verify_password_never_raises_on_malformed_hash(stored: str) -> None:
    assert verify_password(stored, "whatever") is False


def test_password_needs_rehash_for_weak_parameters_and_garbage() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw-long-enough")
    assert verify_password(weak, "pw-long-enough")
    assert password_needs_rehash(weak)
    assert password_needs_rehash("garbage")


@pytest.mark.parametrize(
    ("password", "fragment"),
    [
        ("Short1!", "too short"),
        ("a" * 1025, "too long"),
        ("aaaaaaaaaaaaaaaa", "too few different"),
        ("abcababcabcabcab", "too few different"),
        ("abcdefghijklmn", "one kind of character"),
        ("12345678901234", "one kind of character"),
    ],
)
def test_weak_passwords_get_a_message(password: str, fragment: str) -> None:
    message = check_password_strength(password)
    assert message is not None and fragment in message


@pytest.mark.parametrize("password", ["Tr0ub4dor&3xyz", "kettle-lamp-ocean-42", "thequickbrownfoxjumps"])
def test_strong_passwords_pass(password: str) -> None:
    assert check_password_strength(password) is None


def test_bootstrap_code_shape() -> None:
    code = new_bootstrap_code()
    assert re.fullmatch(r"[A-Z2-9]{4}(-[A-Z2-9]{4}){4}", code)
    assert set(code.replace("-", "")) <= set(CODE_ALPHABET)
    assert not set("01IO") & set(CODE_ALPHABET)
    assert len(CODE_ALPHABET) == 32  # 20 chars x 5 bits = 100 bits
    assert new_bootstrap_code() != code


@given(st.data())
def test_code_matches_however_it_is_typed(data: st.DataObject) -> None:
    code = new_bootstrap_code()
    chars = code.replace("-", "")
    typed = ""
    for ch in chars:
        typed += data.draw(st.sampled_from(["", " ", "-", "  "]))
        typed += ch.lower() if data.draw(st.booleans()) else ch
    typed += data.draw(st.sampled_from(["", " ", "\n"]))
    assert normalize_code(typed) == chars
    assert bootstrap_codes_match(code, typed)


@given(st.text(alphabet=CODE_ALPHABET, min_size=1, max_size=30))
def test_normalize_code_idempotent(text: str) -> None:
    assert normalize_code(normalize_code(text)) == normalize_code(text)


def test_wrong_code_does_not_match() -> None:
    code = new_bootstrap_code()
    other = new_bootstrap_code()
    assert not bootstrap_codes_match(code, other)
    assert not bootstrap_codes_match(code, code[:-1])
