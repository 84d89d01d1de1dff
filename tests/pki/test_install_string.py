"""Tests for install strings (zerogate.pki.install_string)."""

from __future__ import annotations

import base64
import json
import re
import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerogate.pki.ca import ca_pin, create_ca
from zerogate.pki.credentials import new_token
from zerogate.pki.install_string import (
    InstallString,
    InvalidInstallString,
    parse_install_string,
)

PIN = ca_pin(create_ca("install-string test CA")[1])
KEY = new_token("zgk")
FIXED_PIN = "sha256/Z0aSDHKmH7fFrtkYFDvTp8Gdo6J92et1_DO8NGQXndA"


def _raw(payload: object) -> str:
    data = json.dumps(payload).encode()
    return "zg1." + base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_roundtrip_and_shell_safety() -> None:
    value = InstallString("https://ctl.example.test:8443", PIN, KEY)
    line = value.encode()
    assert line.startswith("zg1.")
    assert re.fullmatch(r"zg1\.[A-Za-z0-9_-]+", line)
    assert shlex.quote(line) == line  # nothing a shell would interpret
    assert parse_install_string(line) == value
    payload = json.loads(base64.urlsafe_b64decode(line[4:] + "=" * (-len(line[4:]) % 4)))
    assert payload == {"u": "https://ctl.example.test:8443", "p": PIN, "k": KEY}


def test_parse_tolerates_wrapping_and_whitespace() -> None:
    line = InstallString("https://10.0.0.5", PIN, KEY).encode()
    wrapped = "  " + line[:30] + "\n" + line[30:60] + "\r\n  " + line[60:] + "\n"
    assert parse_install_string(wrapped).controller_url == "https://10.0.0.5"


def test_url_is_normalised() -> None:
    parsed = parse_install_string(InstallString("HTTPS://Ctl.Example.test/", PIN, KEY).encode())
    assert parsed.controller_url == "https://ctl.example.test"
    v6 = parse_install_string(InstallString("https://[2001:db8::1]:443", PIN, KEY).encode())
    assert v6.controller_url == "https://[2001:db8::1]:443"


@pytest.mark.parametrize(
    "text",
    ["", "hello", "zg1", "ZG1.abc", "https://ctl.example.test", "zgk_" + "A" * 43],
)
def test_wrong_prefix(text: str) -> None:
    with pytest.raises(InvalidInstallString, match=r"not a zerogate install string \(expected"):
        parse_install_string(text)


def test_future_version_says_upgrade() -> None:
    with pytest.raises(InvalidInstallString, match=r"zg2 is not supported.*start with zg1\."):
        parse_install_string("zg2.eyJ1Ijo")


@pytest.mark.parametrize(
    "text",
    [
        "zg1.",
        "zg1.!!!!",
        "zg1.A",  # impossible base64 length
        "zg1." + base64.urlsafe_b64encode(b"not json").decode().rstrip("="),
        "zg1." + base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="),
        _raw([1, 2, 3]),
        # a fixed pin: parameters must be the same in every xdist worker (PIN is random)
        _raw({"u": "https://a.test", "p": FIXED_PIN}),
        _raw({"u": "https://a.test", "p": FIXED_PIN, "k": 5}),
    ],
)
def test_damaged(text: str) -> None:
    with pytest.raises(InvalidInstallString, match="damaged — copy the whole line again"):
        parse_install_string(text)


def test_truncated_line_is_damaged_or_invalid() -> None:
    line = InstallString("https://ctl.example.test", PIN, KEY).encode()
    with pytest.raises(InvalidInstallString):
        parse_install_string(line[:-10])


@pytest.mark.parametrize(
    "url",
    [
        "http://ctl.example.test",
        "ctl.example.test",
        "https://",
        "https://ctl.example.test/path",
        "https://user@ctl.example.test",
        "https://ctl.example.test?x=1",
        "https://ctl.example.test#frag",
        "https://ctl.example.test:99999",
        "https://ctl.example.test:0",
        "https://bad_host!.test",
        "https://-lead.test",
    ],
)
def test_bad_url(url: str) -> None:
    with pytest.raises(InvalidInstallString, match="must be https://host"):
        parse_install_string(_raw({"u": url, "p": PIN, "k": KEY}))
    with pytest.raises(InvalidInstallString, match="must be https://host"):
        InstallString(url, PIN, KEY).encode()


@pytest.mark.parametrize("pin", ["", "sha1/abc", "sha256/short"])
def test_bad_pin(pin: str) -> None:
    with pytest.raises(InvalidInstallString, match=r"bad CA pin.*expected the form sha256/"):
        parse_install_string(_raw({"u": "https://a.test", "p": pin, "k": KEY}))


@pytest.mark.parametrize(
    "key", ["zgt_" + "A" * 43, "zgk_short", "", "secret"], ids=["api-token", "short", "empty", "no-prefix"]
)
def test_bad_key(key: str) -> None:
    with pytest.raises(InvalidInstallString, match="provisioning key") as info:
        parse_install_string(_raw({"u": "https://a.test", "p": PIN, "k": key}))
    if key:
        assert key not in str(info.value)  # never echo a secret


hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)


@given(
    host=hosts,
    port=st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
    key_bytes=st.binary(min_size=32, max_size=32),
)
def test_roundtrip_property(host: str, port: int | None, key_bytes: bytes) -> None:
    url = f"https://{host}" + (f":{port}" if port is not None else "")
    key = "zgk_" + base64.urlsafe_b64encode(key_bytes).rstrip(b"=").decode()
    value = InstallString(url, PIN, key)
    line = value.encode()
    assert shlex.quote(line) == line
    assert parse_install_string(line) == value
    assert parse_install_string(line).encode() == line
