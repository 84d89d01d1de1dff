"""Just-in-time MFA openings through the real controller over HTTPS (SQLite and
PostgreSQL): MFA-protected ports and their validation; a segment server
forwarding users' requests (password + TOTP) that are approved, refused for
each reason, rejected for wrong credentials and throttled -- every outcome in
the audit log; an approved opening in the server's snapshot and gone from it
when revoked; the expiry sweep writing one record per opening.

The controller here runs with short allowed durations (3 s among them) and
with refusal aggregation off (a record per refusal), so tests see each one.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiaccess import raw
from zerogate.controller.config import ConfigError, load_settings
from zerogate.netops.controller_api import ApiError, ControllerClient
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import AccountSession, Authenticator, LocalController

Unique = Callable[[str], str]
PASSWORD = "user password 12345"
_octet = count(1)
_source = count(1)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def new_source() -> str:
    """A requester address no other test uses (the throttle counts per address)."""
    n = next(_source)
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


@pytest.fixture(scope="module")
def controller_env() -> dict[str, str]:
    """Short durations for expiry; every refusal its own audit record."""
    return {"ZEROGATE_SEGMENT_JIT_DURATIONS": "3,3600,14400", "ZEROGATE_AUDIT_REFUSAL_WINDOW_SECONDS": "0"}


def new_server(controller: LocalController, admin: AccountSession, unique: Unique) -> tuple[str, str]:
    """A segment server, enrolled: its name and device credential."""
    name = unique("seg")
    ok(raw(controller, "POST", "/v1/segment-servers", {"name": name}, admin.token), 201)
    key = ok(raw(controller, "POST", f"/v1/segment-servers/{name}/provisioning-keys", {}, admin.token), 201)
    body = {
        "key": key["key"],
        "name": name,
        "csr": create_csr(generate_private_key(), name).decode(),
        "wg_public_key": generate_keypair()[1],
    }
    return name, ok(raw(controller, "POST", "/v1/enroll", body))["credential"]


def new_asset(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str], protect: bool
) -> str:
    """An asset of ``server``; when ``protect``, with a trusted host key, one
    approved rule and in mode protected."""
    body = {"name": unique("host"), "address": f"10.77.0.{next(_octet)}", "server": server[0]}
    made = ok(raw(controller, "POST", "/v1/segment/assets", body, admin.token), 201)
    name: str = made["name"]
    if not protect:
        return name
    key = (
        "ssh-ed25519 "
        + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + os.urandom(32)).decode()
    )
    report = {"assets": [{"asset_id": made["id"], "state": "host_key_unknown", "observed_host_key": key}]}
    ok(raw(controller, "POST", "/v1/segment/report", report, server[1]))
    path = f"/v1/segment/assets/{name}"
    fingerprint = ok(raw(controller, "GET", path, token=admin.token))["observed_host_key_fingerprint"]
    ok(raw(controller, "POST", f"{path}/trust", {"fingerprint": fingerprint}, admin.token))
    ok(raw(controller, "POST", f"{path}/mode", {"mode": "learning", "window_seconds": 60}, admin.token))
    rule = {"protocol": "tcp", "port_first": 443, "sources": ["10.0.0.0/8"]}
    ok(raw(controller, "POST", f"{path}/rules", rule, admin.token), 201)
    assert (
        ok(raw(controller, "POST", f"{path}/mode", {"mode": "protected"}, admin.token))["mode"] == "protected"
    )
    return name


@pytest.fixture(scope="module")
def server(controller: LocalController, admin: AccountSession) -> tuple[str, str]:
    return new_server(controller, admin, lambda p: f"{p}-jit")


@pytest.fixture(scope="module")
def group(controller: LocalController, admin: AccountSession) -> str:
    ok(raw(controller, "POST", "/v1/groups", {"name": "jit-ops"}, admin.token), 201)
    return "jit-ops"


def new_user(
    controller: LocalController, admin: AccountSession, unique: Unique, groups: list[str]
) -> tuple[str, Authenticator]:
    """An active user with TOTP confirmed (not signed in: its codes stay for JIT requests)."""
    username = unique("u")
    created = ok(
        raw(controller, "POST", "/v1/users", {"username": username, "groups": groups}, admin.token), 201
    )
    return username, controller.activate_account(username, created["activation_code"], PASSWORD)


def add_port(controller: LocalController, admin: AccountSession, asset: str, **fields: Any) -> httpx.Response:
    return raw(controller, "POST", f"/v1/segment/assets/{asset}/jit-ports", fields, admin.token)


def ask(
    controller: LocalController,
    credential: str,
    user: tuple[str, Authenticator],
    asset: str,
    source: str,
    *,
    port: int = 22,
    duration: int = 3600,
    password: str = PASSWORD,
    totp: str | None = None,
) -> httpx.Response:
    body = {
        "username": user[0],
        "password": password,
        "totp": totp if totp is not None else user[1].code(),
        "source": source,
        "asset": asset,
        "protocol": "tcp",
        "port": port,
        "duration": duration,
    }
    return raw(controller, "POST", "/v1/segment/jit-requests", body, credential)


def audit(controller: LocalController, admin: AccountSession, action: str) -> list[dict[str, Any]]:
    params = {"action": action, "limit": 1000}
    return ok(raw(controller, "GET", "/v1/audit", token=admin.token, params=params))  # type: ignore[no-any-return]


def snapshot_asset(controller: LocalController, credential: str, asset: str) -> tuple[int, dict[str, Any]]:
    r = raw(controller, "GET", "/v1/snapshot", token=credential)
    snap = ok(r)
    return int(r.headers["X-Zerogate-Revision"]), next(a for a in snap["assets"] if a["name"] == asset)


# --------------------------------------------------------------------------- ports


def test_ports_are_created_listed_validated_and_removed(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str], group: str
) -> None:
    asset = new_asset(controller, admin, unique, server, protect=False)
    user, _ = new_user(controller, admin, unique, [])
    made = ok(
        add_port(controller, admin, asset, port=22, users=[user], groups=[group], sources=["10.9.0.0/16"]),
        201,
    )
    assert made == {
        "id": made["id"],
        "asset": asset,
        "protocol": "tcp",
        "port": 22,
        "users": [user],
        "groups": [group],
        "sources": ["10.9.0.0/16"],
        "max_duration": 3600,
    }
    assert add_port(controller, admin, asset, port=22, users=[user]).status_code == 409
    ok(add_port(controller, admin, asset, protocol="udp", port=22, groups=[group], max_duration=14400), 201)
    assert add_port(controller, admin, "no-such-host", port=22, users=[user]).status_code == 404
    assert add_port(controller, admin, asset, port=23, users=["nobody-here"]).status_code == 404
    assert add_port(controller, admin, asset, port=23, groups=["no-such-group"]).status_code == 404
    for bad in (
        {"port": 23},  # nobody may ask
        {"port": 0, "users": [user]},
        {"port": 23, "users": [user], "max_duration": 7200},  # not an allowed duration
        {"port": 23, "users": [user], "protocol": "icmp"},
        {"port": 23, "users": [user], "sources": ["10.9.0.1/16"]},  # host bits
        {"port": 23, "users": [user], "extra": 1},
        {"port": "23", "users": [user]},  # strict: no coercion
        {"port": 23, "users": ["bad\x00name"]},
    ):
        assert add_port(controller, admin, asset, **bad).status_code == 422, bad
    listed = ok(raw(controller, "GET", f"/v1/segment/assets/{asset}/jit-ports", token=admin.token))
    assert [(p["protocol"], p["port"], p["max_duration"]) for p in listed] == [
        ("tcp", 22, 3600),
        ("udp", 22, 14400),
    ]
    r = raw(controller, "DELETE", f"/v1/segment/assets/{asset}/jit-ports/udp/22", token=admin.token)
    assert r.status_code == 204
    assert (
        raw(
            controller, "DELETE", f"/v1/segment/assets/{asset}/jit-ports/udp/22", token=admin.token
        ).status_code
        == 404
    )
    listed = ok(raw(controller, "GET", f"/v1/segment/assets/{asset}/jit-ports", token=admin.token))
    assert [(p["protocol"], p["port"]) for p in listed] == [("tcp", 22)]
    # only admins manage ports; a segment server may not
    assert add_port(controller, admin, asset, port=24, users=[user]).status_code == 201
    r = raw(
        controller, "POST", f"/v1/segment/assets/{asset}/jit-ports", {"port": 25, "users": [user]}, server[1]
    )
    assert r.status_code == 403


# --------------------------------------------------------------------------- requests


def test_an_allowed_request_opens_the_port_in_the_snapshot_until_revoked(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str], group: str
) -> None:
    asset = new_asset(controller, admin, unique, server, protect=True)
    ok(add_port(controller, admin, asset, port=22, groups=[group], sources=["198.51.0.0/16"]), 201)
    user = new_user(controller, admin, unique, [group])
    source = new_source()
    before, seen = snapshot_asset(controller, server[1], asset)
    assert seen["jit_openings"] == []
    opened = ok(ask(controller, server[1], user, asset, source), 201)
    assert (opened["asset"], opened["source"], opened["protocol"], opened["port"]) == (
        asset,
        source,
        "tcp",
        22,
    )
    after, seen = snapshot_asset(controller, server[1], asset)
    assert after > before
    assert [(o["opening_id"], o["source"], o["protocol"], o["port"]) for o in seen["jit_openings"]] == [
        (opened["opening_id"], source, "tcp", 22)
    ]
    approved = [
        a
        for a in audit(controller, admin, "segment-jit-approve")
        if a["object_id"] == str(opened["opening_id"])
    ]
    assert len(approved) == 1
    details = approved[0]["details"]
    assert (details["user"], details["source"], details["asset"], details["port"], details["duration"]) == (
        user[0], source, asset, 22, 3600,
    )  # fmt: skip
    assert PASSWORD not in str(approved[0]) and approved[0]["source"] == source

    listed = ok(
        raw(controller, "GET", "/v1/segment/jit-openings", token=admin.token, params={"asset": asset})
    )
    assert [(o["id"], o["user"], o["state"]) for o in listed] == [(opened["opening_id"], user[0], "active")]

    revoked = ok(
        raw(controller, "POST", f"/v1/segment/jit-openings/{opened['opening_id']}/revoke", token=admin.token)
    )
    assert revoked["state"] == "revoked" and revoked["revoked_at"] is not None
    again = raw(
        controller, "POST", f"/v1/segment/jit-openings/{opened['opening_id']}/revoke", token=admin.token
    )
    assert again.status_code == 409
    last, seen = snapshot_asset(controller, server[1], asset)
    assert last > after and seen["jit_openings"] == []
    assert (
        ok(raw(controller, "GET", "/v1/segment/jit-openings", token=admin.token, params={"asset": asset}))
        == []
    )
    everything = ok(
        raw(
            controller,
            "GET",
            "/v1/segment/jit-openings",
            token=admin.token,
            params={"asset": asset, "active_only": False},
        )
    )
    assert [o["state"] for o in everything] == ["revoked"]
    assert [
        (a["outcome"], a["details"]["user"])
        for a in audit(controller, admin, "segment-jit-revoke")
        if a["object_id"] == str(opened["opening_id"])
    ] == [("success", user[0]), ("denied", user[0])]  # revoked, then the second revocation refused


def test_removing_a_port_revokes_its_openings(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    asset = new_asset(controller, admin, unique, server, protect=True)
    user = new_user(controller, admin, unique, [])
    ok(add_port(controller, admin, asset, port=5432, users=[user[0]]), 201)
    ok(ask(controller, server[1], user, asset, new_source(), port=5432), 201)
    assert len(snapshot_asset(controller, server[1], asset)[1]["jit_openings"]) == 1
    r = raw(controller, "DELETE", f"/v1/segment/assets/{asset}/jit-ports/tcp/5432", token=admin.token)
    assert r.status_code == 204
    assert snapshot_asset(controller, server[1], asset)[1]["jit_openings"] == []


def test_every_refusal_is_403_with_its_reason_and_audited(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str], group: str
) -> None:
    protected = new_asset(controller, admin, unique, server, protect=True)
    monitored = new_asset(controller, admin, unique, server, protect=False)
    other = new_server(controller, admin, unique)
    foreign = new_asset(controller, admin, unique, other, protect=True)

    # A user for each request: a user's TOTP codes are single-use, one per 30 s step.
    def allowed() -> tuple[str, Authenticator]:
        return new_user(controller, admin, unique, [group])

    def stranger() -> tuple[str, Authenticator]:
        return new_user(controller, admin, unique, [])

    for asset in (protected, monitored, foreign):
        ok(add_port(controller, admin, asset, port=3389, groups=[group], sources=["198.51.0.0/16"]), 201)
    inside = new_source()
    cases = [
        (allowed, monitored, inside, 3389, 3600, "not in mode protected"),
        (allowed, foreign, inside, 3389, 3600, "not managed by this segment server"),
        (allowed, "no-such-host", inside, 3389, 3600, "not managed by this segment server"),
        (allowed, protected, inside, 3390, 3600, "not MFA-protected"),
        (stranger, protected, inside, 3389, 3600, "may not open"),
        (allowed, protected, "203.0.113.9", 3389, 3600, "outside the subnets"),
        (allowed, protected, inside, 3389, 14400, "duration is not allowed"),  # above the port's maximum
        (allowed, protected, inside, 3389, 60, "duration is not allowed"),  # not an allowed duration
    ]
    for make_user, asset, source, port, duration, reason in cases:
        user = make_user()
        r = ask(controller, server[1], user, asset, source, port=port, duration=duration)
        assert r.status_code == 403 and reason in r.json()["detail"], (asset, r.text)
        assert asset not in r.json()["detail"] and source not in r.json()["detail"]
        refused = audit(controller, admin, "segment-jit-refuse")[-1]
        assert refused["outcome"] == "denied" and reason in refused["details"]["error"]
        assert (refused["details"]["user"], refused["details"]["asset"], refused["details"]["port"]) == (
            user[0], asset, port,
        )  # fmt: skip
    # nothing was opened by any of them
    assert snapshot_asset(controller, server[1], protected)[1]["jit_openings"] == []
    # only enrolled segment servers forward requests: not an admin, not anonymous
    body = {"username": "anyone", "password": PASSWORD, "totp": "123456", "source": inside,
            "asset": protected, "protocol": "tcp", "port": 3389, "duration": 3600}  # fmt: skip
    assert raw(controller, "POST", "/v1/segment/jit-requests", body, admin.token).status_code == 401
    assert raw(controller, "POST", "/v1/segment/jit-requests", body).status_code == 401


def test_wrong_credentials_are_one_401_audited_then_throttled_with_retry_after(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str], group: str
) -> None:
    asset = new_asset(controller, admin, unique, server, protect=True)
    ok(add_port(controller, admin, asset, port=22, groups=[group]), 201)
    user = new_user(controller, admin, unique, [group])
    pending = unique("u")
    ok(raw(controller, "POST", "/v1/users", {"username": pending, "groups": [group]}, admin.token), 201)
    source = new_source()
    answers = [
        ask(controller, server[1], user, asset, source, password="not the password", totp="123456"),
        ask(controller, server[1], user, asset, source, totp="000000"),
        ask(controller, server[1], (pending, user[1]), asset, source, totp="123456"),  # not activated
        ask(controller, server[1], ("nobody-" + pending, user[1]), asset, source, totp="123456"),
    ]
    assert [r.status_code for r in answers] == [401, 401, 401, 401]
    assert {r.json()["detail"] for r in answers} == {"wrong username, password or code"}
    refused = [a for a in audit(controller, admin, "segment-jit-refuse") if a["source"] == source]
    errors = [a["details"]["error"] for a in refused]
    assert errors == [
        "wrong username or password",
        "wrong or reused TOTP code",
        "wrong username or password",
        "wrong username or password",
    ]
    assert all("not the password" not in str(a) and "000000" not in str(a) for a in refused)
    # Five failures for the user from this address: the next attempt waits, even with the right credentials.
    for _ in range(3):
        assert (
            ask(controller, server[1], user, asset, source, password="wrong", totp="123456").status_code
            == 401
        )
    throttled = ask(controller, server[1], user, asset, source, totp="123456")
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    last = [a for a in audit(controller, admin, "segment-jit-refuse") if a["source"] == source][-1]
    assert last["details"]["error"] == "rate limited"
    # The same user from another address is not slowed down.
    assert ask(controller, server[1], user, asset, new_source()).status_code == 201


def test_an_expired_opening_leaves_the_snapshot_and_is_audited_once(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    asset = new_asset(controller, admin, unique, server, protect=True)
    first, second = new_user(controller, admin, unique, []), new_user(controller, admin, unique, [])
    ok(add_port(controller, admin, asset, port=22, users=[first[0], second[0]]), 201)

    def expired(opening_id: int) -> list[dict[str, Any]]:
        return [
            a for a in audit(controller, admin, "segment-jit-expire") if a["object_id"] == str(opening_id)
        ]

    a = ok(ask(controller, server[1], first, asset, new_source(), duration=3), 201)
    wait_for(lambda: bool(expired(a["opening_id"])), 30, "the expiry record of the first opening")
    assert snapshot_asset(controller, server[1], asset)[1]["jit_openings"] == []
    # Later sweeps write nothing more for it: by the time a second opening's record exists, still one.
    b = ok(ask(controller, server[1], second, asset, new_source(), duration=3), 201)
    wait_for(lambda: bool(expired(b["opening_id"])), 30, "the expiry record of the second opening")
    assert len(expired(a["opening_id"])) == 1 and len(expired(b["opening_id"])) == 1
    record = expired(a["opening_id"])[0]["details"]
    assert (record["user"], record["asset"], record["duration"]) == (first[0], asset, 3)
    everything = ok(
        raw(
            controller,
            "GET",
            "/v1/segment/jit-openings",
            token=admin.token,
            params={"asset": asset, "active_only": False},
        )
    )
    assert {o["state"] for o in everything} == {"expired"}
    gone = raw(controller, "POST", f"/v1/segment/jit-openings/{a['opening_id']}/revoke", token=admin.token)
    assert gone.status_code == 409


def test_the_segment_servers_client_call_returns_the_opening_or_raises_api_error(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    asset = new_asset(controller, admin, unique, server, protect=True)
    first, second = new_user(controller, admin, unique, []), new_user(controller, admin, unique, [])
    ok(add_port(controller, admin, asset, port=22, users=[first[0]]), 201)
    source = new_source()

    def body(user: tuple[str, Authenticator], totp: str | None = None) -> dict[str, object]:
        return {
            "username": user[0],
            "password": PASSWORD,
            "totp": totp or user[1].code(),
            "source": source,
            "asset": asset,
            "protocol": "tcp",
            "port": 22,
            "duration": 3600,
        }

    with ControllerClient(controller.url, controller.ca_pem, token=server[1]) as api:
        opened = api.segment_jit_request(body(first))
        assert (opened["asset"], opened["source"], opened["port"]) == (asset, source, 22)
        with pytest.raises(ApiError) as refused:
            api.segment_jit_request(body(second))
        assert refused.value.status == 403 and "may not open" in refused.value.message
        with pytest.raises(ApiError) as wrong:
            api.segment_jit_request(body(second, totp="123456"))
        assert wrong.value.status == 401 and wrong.value.message == "wrong username, password or code"


def test_the_allowed_durations_setting_is_validated() -> None:
    def durations(value: str) -> list[int]:
        return load_settings(
            Path("/nonexistent"), environ={"ZEROGATE_SEGMENT_JIT_DURATIONS": value}
        ).segment_jit_durations

    assert load_settings(Path("/nonexistent"), environ={}).segment_jit_durations == [
        3600,
        14400,
        28800,
        43200,
        86400,
    ]
    assert durations("14400, 3600,3600") == [3600, 14400]
    for bad in ("0", "604801", "", "1h"):
        with pytest.raises(ConfigError, match="segment_jit_durations"):
            durations(bad)
