"""Input that used to slip past validation (issue 8, defects 3, 4, 11, 15, 17).

The table of refused requests is in test_validation.py (``HARDENING_CASES``);
this module holds what does not fit a table: one WireGuard key in two
spellings, a legacy row, what strict types must still accept, refusals that
must not quote their input, and the same pattern class outside the API.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiaccess import raw, register
from dbaccess import SqlError, run_sql
from zerogate.deploy.systemd import UnitSpec, check_path
from zerogate.netops.controller_api import ApiError
from zerogate.netops.firewalld import FirewalldIntegration
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import InvalidKey, canonical_public_key, generate_keypair, parse_public_key
from zerogate.testbed.localrun import AccountSession, LocalController

_sites = itertools.count(1)  # each test's connector group fronts its own /24


def _provisioning_key(admin: AccountSession, unique: Callable[[str], str]) -> str:
    name = unique("keys")
    admin.client.post("/v1/connector-groups", {"name": name, "subnets": [f"10.91.{next(_sites)}.0/24"]})
    key: str = admin.client.post(f"/v1/connector-groups/{name}/provisioning-keys", {"max_uses": 10})["key"]
    return key


def _enroll(controller: LocalController, key: str, name: str, wg_public_key: str) -> httpx.Response:
    body = {
        "key": key,
        "name": name,
        "csr": create_csr(generate_private_key(), "connector").decode(),
        "wg_public_key": wg_public_key,
    }
    return raw(controller, "POST", "/v1/enroll", body)


def _devices_with(admin: AccountSession, wg_public_key: str) -> list[dict[str, Any]]:
    return [d for d in admin.client.get("/v1/devices") if d["wg_public_key"].strip() == wg_public_key]


def _spare_bits_set(key: str) -> str:
    """The same 32 bytes with the unused low bits of the last base64 digit set:
    a lenient decoder reads it as ``key``."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return key[:42] + alphabet[alphabet.index(key[42]) + 1] + "="


# ----------------------------------------------------------------- WireGuard keys (defect 4)


def test_a_public_key_has_one_spelling() -> None:
    private, public = generate_keypair()
    raw_key = base64.b64decode(public)
    assert parse_public_key(public) == raw_key
    assert canonical_public_key(public) == public
    assert base64.b64decode(_spare_bits_set(public)) == raw_key  # what made the check needed
    for other in (
        public + "\n",
        " " + public,
        public.rstrip("="),
        _spare_bits_set(public),
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # '-' and '_' are not wg's alphabet
        private[:43],
        "",
    ):
        with pytest.raises(InvalidKey, match="44 characters of base64"):
            parse_public_key(other)


def test_an_enrolled_key_is_refused_in_every_other_spelling(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    """Two peers with one key would let one device take the other's traffic."""
    key = _provisioning_key(admin, unique)
    public = generate_keypair()[1]
    assert _enroll(controller, key, unique("first"), public).status_code == 200
    for spelling in (public + "\n", _spare_bits_set(public)):
        refused = _enroll(controller, key, unique("twin"), spelling)
        assert refused.status_code == 422, refused.text
        assert "WireGuard public key" in refused.text
    again = _enroll(controller, key, unique("twin"), public)
    assert again.status_code == 409
    assert "already enrolled" in again.text
    assert len(_devices_with(admin, public)) == 1


def test_a_key_stored_with_a_newline_before_the_fix_still_blocks_its_twin(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    """Rows written while "key\\n" was accepted are compared by their bytes too."""
    key = _provisioning_key(admin, unique)
    public = generate_keypair()[1]
    name = unique("legacy")
    assert _enroll(controller, key, name, public).status_code == 200
    try:
        run_sql(controller, f"UPDATE devices SET wg_public_key = wg_public_key || '\n' WHERE name = '{name}'")
    except SqlError:
        # PostgreSQL's varchar(44) never held such a row (the enrollment failed instead).
        pytest.skip("this database cannot hold a 45-character key")
    twin = _enroll(controller, key, unique("twin"), public)
    assert twin.status_code == 409, twin.text
    assert len(_devices_with(admin, public)) == 1


# ----------------------------------------------------------------- network input (defect 11)


@pytest.mark.parametrize(
    ("local_network", "fragment"),
    [
        ("::ffff:100.64.0.0/112", "write it as IPv4: 100.64.0.0/16"),
        ("fe80::%eth0/64", "zone ids"),
        ("192.168.1.0/24\n", "U+000A"),
    ],
    ids=["ipv4-mapped", "zone-id", "trailing-newline"],
)
def test_client_local_networks_are_refused_in_forms_that_dodge_the_collision_check(
    controller: LocalController,
    admin: AccountSession,
    unique: Callable[[str], str],
    local_network: str,
    fragment: str,
) -> None:
    """A home network written as IPv4-mapped IPv6 would not steer the client to
    an alternate address block, and it would collide with its own LAN."""
    user = controller.create_user(admin, unique("laptop-user"), [])
    try:
        before = len(admin.client.get("/v1/devices"))
        refused = register(controller, user, unique("laptop"), [local_network])
        assert refused.status_code == 422, refused.text
        assert fragment in refused.text
        assert len(admin.client.get("/v1/devices")) == before
    finally:
        user.client.close()


def test_sites_and_the_client_pool_stay_apart_in_both_directions(
    admin: AccountSession, unique: Callable[[str], str]
) -> None:
    """Moving the pool onto a site is refused as well as a site onto the pool;
    moving both apart works."""
    c = admin.client
    original = c.get("/v1/address-pool")["blocks"]
    site = unique("apart")
    c.post("/v1/connector-groups", {"name": site, "subnets": ["10.92.0.0/24"]})
    with pytest.raises(ApiError, match=rf"overlaps subnet 10\.92\.0\.0/24 of connector group '{site}'"):
        c.put("/v1/address-pool", {"blocks": [*original, "10.92.0.0/16"]})
    moved = c.put("/v1/address-pool", {"blocks": [*original, "100.100.0.0/16"]})
    try:
        assert moved["blocks"][-1] == "100.100.0.0/16"
        with pytest.raises(ApiError, match=r"overlaps client address block 100\.100\.0\.0/16"):
            c.patch(f"/v1/connector-groups/{site}", {"subnets": ["100.100.5.0/24"]})
    finally:
        c.put("/v1/address-pool", {"blocks": original})
    assert c.patch(f"/v1/connector-groups/{site}", {"subnets": ["100.100.5.0/24"]})["subnets"] == [
        "100.100.5.0/24"
    ]


# ----------------------------------------------------------------- what strict types still accept (defect 17)


def test_strict_types_still_take_every_well_typed_request(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    c = admin.client
    group, site, app = unique("strict"), unique("strict-site"), unique("strict-app")
    c.post("/v1/groups", {"name": group, "description": "Zoë's team — naïve ünïcode is fine"})
    c.post("/v1/connector-groups", {"name": site, "subnets": ["10.93.0.0/24"], "snat": False})
    c.post(
        "/v1/applications",
        {
            "name": app,
            "connector_group": site,
            "destinations": [{"address": "10.93.0.5", "protocol": "tcp", "ports": ["443", "8000-8080"]}],
        },
    )
    policy = c.post(
        "/v1/policies",
        {
            "name": unique("strict-policy"),
            "groups": [group],
            "applications": [app],
            "require_mfa": True,
            "time_window": {"days": ["mon", "fri"], "start": "08:00", "end": "18:30", "tz": "Europe/Berlin"},
        },
    )
    assert policy["time_window"] == {"days": [0, 4], "start": "08:00", "end": "18:30", "tz": "Europe/Berlin"}
    user = controller.create_user(admin, unique("strict-user"), [group])
    user.client.close()
    disabled = c.patch(f"/v1/users/{user.username}", {"disabled": True, "display_name": "Zoë Ünïcode"})
    assert disabled["status"] == "disabled"
    assert c.patch(f"/v1/users/{user.username}", {"disabled": False})["status"] == "active"
    token = c.post("/v1/tokens", {"name": unique("strict-token"), "ttl_days": 2})
    c.delete(f"/v1/tokens/{token['id']}")
    explained = c.post(
        "/v1/policy/explain",
        {"username": user.username, "destination": "10.93.0.5", "port": 443, "protocol": "tcp", "mfa": True},
    )
    assert isinstance(explained["allowed"], bool)  # allowed or not depends on today; it was understood


def test_a_totp_code_is_ascii_digits(controller: LocalController) -> None:
    """Python's and pydantic's \\d also match Arabic-Indic and other digits."""
    body = {"username": "nobody-here", "password": "whatever", "totp": "\u0661\u0662\u0663\u0664\u0665\u0666"}
    refused = raw(controller, "POST", "/v1/auth/login", body)
    assert refused.status_code == 422, refused.text
    assert "6 to 8 digits (0-9)" in refused.text


# ----------------------------------------------------------------- refusals never quote the text (defect 15)


def test_a_refused_display_name_is_not_echoed(controller: LocalController, admin: AccountSession) -> None:
    secret = "\x1b]0;owned\x07\x1b[2J-operator-eyes-only"
    refused = raw(
        controller, "POST", "/v1/users", {"username": "echo-test", "display_name": secret}, token=admin.token
    )
    assert refused.status_code == 422
    assert "display_name" in refused.text and "U+001B at position 1" in refused.text
    assert "operator-eyes-only" not in refused.text and "owned" not in refused.text


# ----------------------------------------------------------------- the same pattern class outside the API


@pytest.mark.parametrize("interface", ["zg0\n", "zg0\nExecStartPre=/bin/sh"], ids=["newline", "directive"])
def test_unit_files_refuse_an_interface_with_a_newline(interface: str) -> None:
    """A newline in a value written into a unit file would start a directive of the caller's choosing."""
    with pytest.raises(ValueError, match="use 1-15 letters"):
        UnitSpec("gateway", Path("/usr/bin/zerogate"), Path("/var/lib/zg"), Path("/etc/zg.env"), interface)
    with pytest.raises(ValueError, match="is not valid"):
        FirewalldIntegration(interface, None)


def test_unit_files_refuse_a_path_with_a_newline() -> None:
    with pytest.raises(ValueError, match="absolute path of letters"):
        check_path("state directory", Path("/var/lib/zg\n"))
