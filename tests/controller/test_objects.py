"""Every admin-managed object through the real API: create, list, show, update, delete.

Each test checks what an admin would notice: fields come back as sent (and
references come back as names), deleting something that is still in use is
refused with a 409 that names who uses it, an unknown name gives a 404 that
repeats the name, and every change lands in the audit log and, when devices
must learn about it, moves the config revision.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import quote

import pytest

from zerogate.controller.services.connectors import connector_tunnel
from zerogate.netops.controller_api import ApiError
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController

Unique = Callable[[str], str]

# Connector groups may not overlap, and all tests of a module share one
# controller: every group gets its own /24.
_subnets = itertools.count(1)


def fresh_subnet() -> str:
    i = next(_subnets)
    return f"10.{200 + i // 256}.{i % 256}.0/24"


def host(subnet: str, last: int) -> str:
    return subnet.rsplit(".", 1)[0] + f".{last}"


def revision(admin: AccountSession) -> int:
    rev: int = admin.client.get("/v1/health")["revision"]
    return rev


def audit_head(admin: AccountSession) -> int:
    head: int = admin.client.get("/v1/audit/verify")["head_id"]
    return head


@contextmanager
def change(admin: AccountSession, *actions: str, config: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Assert the block is audited as ``actions`` (successes, by this admin) and,
    for ``config`` changes, moves the revision devices watch. Yields the new
    audit records (filled in after the block)."""
    before, head = revision(admin), audit_head(admin)
    records: list[dict[str, Any]] = []
    yield records
    records.extend(admin.client.get("/v1/audit", {"after_id": head, "limit": 1000}))
    seen = [(r["action"], r["outcome"]) for r in records]
    for action in actions:
        assert (action, "success") in seen, f"{action} not in the audit log: {seen}"
    assert all(r["actor"] in (f"admin:{admin.username}", "anonymous") for r in records)
    if config:
        assert revision(admin) > before, f"{actions} did not move the config revision"


def without_time(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in obj.items() if k not in ("created_at", "activation_code", "activation_expires_at")
    }


def names(items: list[dict[str, Any]], key: str = "name") -> list[str]:
    return [i[key] for i in items]


def refused(status: int, call: Callable[[], Any]) -> str:
    with pytest.raises(ApiError) as info:
        call()
    assert info.value.status == status, info.value.message
    return info.value.message


def enroll(controller: LocalController, key: str, name: str) -> dict[str, Any]:
    """What 'zerogate connector enroll' sends: a CSR and a WireGuard public key."""
    body = {
        "key": key,
        "name": name,
        "csr": create_csr(generate_private_key(), name).decode(),
        "wg_public_key": generate_keypair()[1],
    }
    with controller.client() as c:
        result: dict[str, Any] = c.post("/v1/enroll", body)
    return result


def make_connector_group(admin: AccountSession, name: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "subnets": [fresh_subnet()], **extra}
    group: dict[str, Any] = admin.client.post("/v1/connector-groups", body)
    return group


def make_application(admin: AccountSession, name: str, group: dict[str, Any]) -> dict[str, Any]:
    dest = {"address": host(group["subnets"][0], 10), "protocol": "tcp", "ports": ["443"]}
    app: dict[str, Any] = admin.client.post(
        "/v1/applications", {"name": name, "connector_group": group["name"], "destinations": [dest]}
    )
    return app


@pytest.fixture(scope="module", autouse=True)
def _hang_up(admin: AccountSession) -> Iterator[None]:
    """Close the admin's kept-alive connection before the controller stops:
    an open one makes its graceful shutdown wait the full 5 s."""
    yield
    admin.client.close()


# ----------------------------------------------------------------- accounts and groups


def test_group_lifecycle(admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    ann, bob = unique("ann"), unique("bob")
    for user in (ann, bob):
        c.post("/v1/users", {"username": user})
    name = unique("eng")

    with change(admin, "create-group"):
        created = c.post("/v1/groups", {"name": name, "description": "Engineering", "members": [bob, ann]})
    assert (created["name"], created["description"], created["members"]) == (
        name,
        "Engineering",
        sorted([ann, bob]),
    )
    assert without_time(c.get(f"/v1/groups/{name}")) == without_time(created)
    assert name in names(c.get("/v1/groups"))
    assert c.get(f"/v1/users/{ann}")["groups"] == [name]

    with change(admin, "update-group"):
        updated = c.patch(f"/v1/groups/{name}", {"description": "R&D", "members": [ann]})
    assert (updated["description"], updated["members"]) == ("R&D", [ann])
    assert without_time(c.get(f"/v1/groups/{name}")) == without_time(updated)
    assert c.get(f"/v1/users/{bob}")["groups"] == []

    with change(admin, "delete-group"):
        assert c.delete(f"/v1/groups/{name}") is None
    assert f"no group named {name!r}" in refused(404, lambda: c.get(f"/v1/groups/{name}"))
    assert name not in names(c.get("/v1/groups"))
    assert c.get(f"/v1/users/{ann}")["groups"] == []


def test_user_lifecycle(controller: LocalController, admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    staff, ops = unique("staff"), unique("ops")
    for g in (staff, ops):
        c.post("/v1/groups", {"name": g})
    name = unique("carol")

    with change(admin, "create-user", config=False):
        created = c.post(
            "/v1/users",
            {"username": name, "display_name": "Carol C.", "email": "carol@example.org", "groups": [staff]},
        )
    assert created["activation_code"].startswith("zga_")
    assert created["kind"] == "user" and created["status"] == "pending" and not created["totp_enrolled"]
    assert (created["display_name"], created["email"], created["groups"]) == (
        "Carol C.",
        "carol@example.org",
        [staff],
    )
    assert without_time(c.get(f"/v1/users/{name}")) == without_time(created)
    assert name in names(c.get("/v1/users"), "username")
    assert name not in names(c.get("/v1/admins"), "username")
    assert c.get(f"/v1/groups/{staff}")["members"] == [name]
    assert f"{name} is a user" in refused(404, lambda: c.get(f"/v1/admins/{name}"))

    with change(admin, "update-user"):
        updated = c.patch(f"/v1/users/{name}", {"display_name": "Carol", "groups": [ops, staff]})
    assert (updated["display_name"], updated["email"], updated["groups"]) == (
        "Carol",
        "carol@example.org",
        sorted([ops, staff]),
    )
    assert c.get(f"/v1/groups/{ops}")["members"] == [name]

    with change(admin, "reset-user", config=False):
        reset = c.post(f"/v1/users/{name}/reset")
    assert reset["activation_code"].startswith("zga_")
    assert reset["activation_code"] != created["activation_code"]

    with change(admin, "delete-user"):
        assert c.delete(f"/v1/users/{name}") is None
    assert f"no user named {name!r}" in refused(404, lambda: c.get(f"/v1/users/{name}"))
    assert c.get(f"/v1/groups/{staff}")["members"] == []


def test_disabling_a_user_cuts_off_the_session(
    request: pytest.FixtureRequest, controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    user = controller.create_user(admin, unique("dave"), [])
    request.addfinalizer(user.client.close)
    assert user.client.get("/v1/auth/whoami")["name"] == user.username
    assert admin.client.get(f"/v1/users/{user.username}")["status"] == "active"

    with change(admin, "update-user"):
        disabled = admin.client.patch(f"/v1/users/{user.username}", {"disabled": True})
    assert disabled["status"] == "disabled"
    assert "revoked" in refused(401, lambda: user.client.get("/v1/auth/whoami"))

    enabled = admin.client.patch(f"/v1/users/{user.username}", {"disabled": False})
    assert enabled["status"] == "active"
    # Revoked tokens stay revoked: re-enabling does not resurrect the old session.
    refused(401, lambda: user.client.get("/v1/auth/whoami"))


def test_admin_lifecycle(admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    name = unique("root")
    with change(admin, "create-admin", config=False):
        created = c.post("/v1/admins", {"username": name, "email": "root@example.org"})
    assert created["kind"] == "admin" and created["status"] == "pending"
    assert created["activation_code"].startswith("zga_")
    assert without_time(c.get(f"/v1/admins/{name}")) == without_time(created)
    assert {admin.username, name} <= set(names(c.get("/v1/admins"), "username"))
    assert name not in names(c.get("/v1/users"), "username")
    message = refused(404, lambda: c.get(f"/v1/users/{name}"))
    assert f"no user named {name!r}" in message and "admin" in message

    with change(admin, "update-admin", config=False):
        updated = c.patch(f"/v1/admins/{name}", {"display_name": "Second admin"})
    assert updated["display_name"] == "Second admin"
    assert c.get(f"/v1/admins/{name}")["display_name"] == "Second admin"

    assert "own account" in refused(422, lambda: c.delete(f"/v1/admins/{admin.username}"))
    assert admin.username in names(c.get("/v1/admins"), "username")

    with change(admin, "delete-admin", config=False):
        c.delete(f"/v1/admins/{name}")
    assert f"no admin named {name!r}" in refused(404, lambda: c.get(f"/v1/admins/{name}"))


# ----------------------------------------------------------------- sites and gateways


def test_connector_group_lifecycle(admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    name = unique("site")
    lan, dmz, extra = fresh_subnet(), fresh_subnet(), fresh_subnet()
    vip = host(lan, 1)
    with change(admin, "create-connector-group"):
        created = c.post(
            "/v1/connector-groups",
            {
                "name": name,
                "description": "Frankfurt DC",
                "subnets": [lan, dmz],
                "snat": False,
                "vrrp_virtual_ip": vip,
            },
        )
    assert (created["subnets"], created["snat"], created["vrrp_virtual_ip"], created["connectors"]) == (
        [lan, dmz],
        False,
        vip,
        [],
    )
    assert created["description"] == "Frankfurt DC"
    assert without_time(c.get(f"/v1/connector-groups/{name}")) == without_time(created)
    assert name in names(c.get("/v1/connector-groups"))

    with change(admin, "update-connector-group"):
        updated = c.patch(
            f"/v1/connector-groups/{name}",
            {"subnets": [lan, dmz, extra], "snat": True, "vrrp_virtual_ip": "", "description": "FRA"},
        )
    assert (updated["subnets"], updated["snat"], updated["vrrp_virtual_ip"], updated["description"]) == (
        [lan, dmz, extra],
        True,
        None,
        "FRA",
    )
    assert without_time(c.get(f"/v1/connector-groups/{name}")) == without_time(updated)

    with change(admin, "delete-connector-group"):
        c.delete(f"/v1/connector-groups/{name}")
    assert f"no connector group named {name!r}" in refused(404, lambda: c.get(f"/v1/connector-groups/{name}"))
    # Its subnets are free again.
    again = make_connector_group(admin, unique("site"), subnets=[lan])
    assert again["subnets"] == [lan]


def test_gateway_lifecycle(admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    name = unique("edge")
    with change(admin, "create-gateway"):
        created = c.post(
            "/v1/gateways",
            {
                "name": name,
                "description": "EU edge",
                "public_endpoint": "Edge1.Example.COM",
                "port_first": 51820,
                "port_last": 51830,
            },
        )
    assert (created["public_endpoint"], created["port_first"], created["port_last"]) == (
        "edge1.example.com",
        51820,
        51830,
    )
    assert created["status"] == "not enrolled" and created["device_id"] is None
    assert without_time(c.get(f"/v1/gateways/{name}")) == without_time(created)
    assert name in names(c.get("/v1/gateways"))

    with change(admin, "update-gateway"):
        updated = c.patch(
            f"/v1/gateways/{name}", {"public_endpoint": "203.0.113.7", "port_first": 443, "port_last": 443}
        )
    assert (
        updated["public_endpoint"],
        updated["port_first"],
        updated["port_last"],
        updated["description"],
    ) == (
        "203.0.113.7",
        443,
        443,
        "EU edge",
    )
    assert without_time(c.get(f"/v1/gateways/{name}")) == without_time(updated)

    with change(admin, "create-provisioning-key", config=False):
        key = c.post(f"/v1/gateways/{name}/provisioning-keys", {})
    assert key["target"] == f"gateway:{name}" and key["install_string"].startswith("zg1.")

    with change(admin, "delete-gateway"):
        c.delete(f"/v1/gateways/{name}")
    assert f"no gateway named {name!r}" in refused(404, lambda: c.get(f"/v1/gateways/{name}"))
    assert name not in names(c.get("/v1/gateways"))


def test_connector_enrollment_lifecycle(
    controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    c = admin.client
    group = make_connector_group(admin, unique("site"))
    with change(admin, "create-provisioning-key", config=False):
        key = c.post(
            f"/v1/connector-groups/{group['name']}/provisioning-keys",
            {"description": "rack 3", "max_uses": 2, "ttl_minutes": 30},
        )
    assert key["key"].startswith("zgk_") and key["install_string"].startswith("zg1.")
    assert (key["target"], key["state"], key["uses"], key["max_uses"], key["description"]) == (
        f"connector-group:{group['name']}",
        "usable",
        0,
        2,
        "rack 3",
    )
    listed = next(k for k in c.get("/v1/provisioning-keys") if k["id"] == key["id"])
    assert "key" not in listed and "install_string" not in listed  # shown once

    name = unique("fra-conn")
    with change(admin, "enroll"):
        enrolled = enroll(controller, key["key"], name)
    assert (enrolled["role"], enrolled["name"]) == ("connector", name)
    assert enrolled["credential"].startswith("zgd_")
    assert next(k for k in c.get("/v1/provisioning-keys") if k["id"] == key["id"])["uses"] == 1

    shown = c.get(f"/v1/connectors/{quote(name)}")
    assert (shown["connector_group"], shown["status"], shown["device_id"]) == (
        group["name"],
        "active",
        enrolled["device_id"],
    )
    assert name in names(c.get("/v1/connectors"))
    assert c.get(f"/v1/connector-groups/{group['name']}")["connectors"] == [name]
    devices = c.get("/v1/devices", {"role": "connector"})
    assert any(d["id"] == enrolled["device_id"] and d["status"] == "active" for d in devices)

    fields = {
        "description": "d" * 255,
        "location": "Frankfurt, rack 3",
        "bandwidth_class": "100mbps",
        "owner": "netops",
    }
    with change(admin, "update-connector", config=False):
        updated = c.patch(f"/v1/connectors/{quote(name)}", fields)
    assert {k: updated[k] for k in fields} == fields
    assert without_time(c.get(f"/v1/connectors/{quote(name)}")) == without_time(updated)

    message = refused(409, lambda: c.delete(f"/v1/connector-groups/{group['name']}"))
    assert name in message and group["name"] in message

    with change(admin, "delete-connector"):
        c.delete(f"/v1/connectors/{quote(name)}")
    assert f"no connector named {name!r}" in refused(404, lambda: c.get(f"/v1/connectors/{quote(name)}"))
    device = next(d for d in c.get("/v1/devices") if d["id"] == enrolled["device_id"])
    assert device["status"] == "revoked"
    with controller.client(enrolled["credential"]) as dev:
        refused(401, lambda: dev.get("/v1/snapshot"))
    c.delete(f"/v1/connector-groups/{group['name']}")


def test_connector_name_with_a_slash_can_be_managed(
    controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    group = make_connector_group(admin, unique("site"))
    key = admin.client.post(f"/v1/connector-groups/{group['name']}/provisioning-keys", {})
    name = f"{unique('fra')}/rack #3?"
    enroll(controller, key["key"], name)
    assert name in names(admin.client.get("/v1/connectors"))
    path = f"/v1/connectors/{quote(name, safe='')}"
    assert admin.client.get(path)["name"] == name
    assert admin.client.patch(path, {"location": "FRA"})["location"] == "FRA"
    admin.client.delete(path)
    assert name not in names(admin.client.get("/v1/connectors"))


def connector_report(**details: Any) -> dict[str, Any]:
    """A report as connector/daemon.py sends it, with ``details`` on top of the defaults."""
    return {
        "version": "0.1.0",
        "interface": "zg-cn",
        "peers": [{"role": "gateway", "public_key": generate_keypair()[1], "latest_handshake": 0}],
        "details": {"revision": 3, "wireguard": "wireguard-go", **details},
    }


def tunnel_of(admin: AccountSession, name: str) -> tuple[Any, ...]:
    """(tunnel, last_handshake_at, tunnel_hint) as list and show both give them."""
    listed = next(x for x in admin.client.get("/v1/connectors") if x["name"] == name)
    shown = admin.client.get(f"/v1/connectors/{quote(name, safe='')}")
    fields = ("tunnel", "last_handshake_at", "tunnel_hint")
    assert [listed[f] for f in fields] == [shown[f] for f in fields]
    return tuple(shown[f] for f in fields)


def test_connector_list_and_show_give_the_tunnel_from_its_latest_report(
    controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    group = make_connector_group(admin, unique("site"))
    key = admin.client.post(f"/v1/connector-groups/{group['name']}/provisioning-keys", {})
    name = unique("tunnel-conn")
    enrolled = enroll(controller, key["key"], name)
    tunnel, handshake, hint = tunnel_of(admin, name)
    assert (tunnel, handshake) == ("unknown", None) and "has not reported yet" in hint

    blocked = "tunnel to gateway gw-1 is not up after 12 s: check that UDP to 203.0.113.7 [51820\u201353000] gets through"
    with controller.client(enrolled["credential"]) as device:
        device.post(
            "/v1/report", connector_report(tunnel_up=False, last_handshake_at=None, tunnel_hint=blocked)
        )
        assert tunnel_of(admin, name) == ("down", None, blocked)

        at = "2026-05-01T12:00:00.250000+00:00"
        device.post("/v1/report", connector_report(tunnel_up=True, last_handshake_at=at, tunnel_hint=None))
        tunnel, handshake, hint = tunnel_of(admin, name)
        assert (tunnel, datetime.fromisoformat(handshake), hint) == ("up", datetime.fromisoformat(at), None)

        # What a device writes is shown to admins: hostile values are refused, the last good report stays.
        for hostile in (
            {"tunnel_hint": "x" * 10_000},
            {"tunnel_hint": "clear\x1b[2J"},
            {"tunnel_hint": "bidi\u202e"},
            {"last_handshake_at": at + "\n"},
            {"last_handshake_at": "2026-05-01T12:00:00+02:00"},
            {"last_handshake_at": "2026-02-30T12:00:00+00:00"},
        ):
            refused(422, partial(device.post, "/v1/report", connector_report(**hostile)))
    assert tunnel_of(admin, name)[0] == "up"


def test_a_stale_or_unreadable_report_leaves_the_tunnel_unknown() -> None:
    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    raw = json.dumps(connector_report(tunnel_up=True) | {"at": at.isoformat()})
    assert connector_tunnel(raw, at + timedelta(seconds=29))["tunnel"] == "up"
    stale = connector_tunnel(raw, at + timedelta(seconds=31))
    assert stale["tunnel"] == "unknown" and "no report for 31 s" in (stale["tunnel_hint"] or "")
    assert connector_tunnel('{"version": [', at)["tunnel_hint"] == (
        "its last report is unreadable: check that 'zerogate connector run' is running on it "
        "and reaches the controller"
    )
    # An older connector without last_handshake_at: its gateway peer's handshake time.
    old = connector_report(tunnel_up=False)
    old["peers"][0]["latest_handshake"] = int(at.timestamp())
    shown = connector_tunnel(json.dumps(old | {"at": at.isoformat()}), at)
    assert (shown["tunnel"], shown["last_handshake_at"]) == ("down", at)
    assert "UDP to the gateway's port range" in (shown["tunnel_hint"] or "")


# ----------------------------------------------------------------- applications and policy


def test_application_lifecycle(admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    site_a, site_b = make_connector_group(admin, unique("site")), make_connector_group(admin, unique("site"))
    net_a, net_b = site_a["subnets"][0], site_b["subnets"][0]
    name = unique("intranet")
    with change(admin, "create-application"):
        created = c.post(
            "/v1/applications",
            {
                "name": name,
                "description": "Wiki and ping",
                "connector_group": site_a["name"],
                "destinations": [
                    {"address": host(net_a, 10), "protocol": "tcp", "ports": ["443", "8000-8080"]},
                    {"address": net_a, "protocol": "icmp"},
                ],
            },
        )
    assert created["connector_group"] == site_a["name"]
    assert created["destinations"] == [
        {"address": f"{host(net_a, 10)}/32", "protocol": "tcp", "ports": ["443", "8000-8080"]},
        {"address": net_a, "protocol": "icmp", "ports": []},
    ]
    assert without_time(c.get(f"/v1/applications/{name}")) == without_time(created)
    assert name in names(c.get("/v1/applications"))

    with change(admin, "update-application"):
        moved = c.patch(
            f"/v1/applications/{name}",
            {
                "connector_group": site_b["name"],
                "destinations": [{"address": host(net_b, 20), "protocol": "udp", "ports": ["53"]}],
            },
        )
    assert moved["connector_group"] == site_b["name"] and moved["description"] == "Wiki and ping"
    assert moved["destinations"] == [{"address": f"{host(net_b, 20)}/32", "protocol": "udp", "ports": ["53"]}]
    assert without_time(c.get(f"/v1/applications/{name}")) == without_time(moved)

    message = refused(409, lambda: c.delete(f"/v1/connector-groups/{site_b['name']}"))
    assert f"applications: {name}" in message
    c.delete(f"/v1/connector-groups/{site_a['name']}")  # no longer used

    with change(admin, "delete-application"):
        c.delete(f"/v1/applications/{name}")
    assert f"no application named {name!r}" in refused(404, lambda: c.get(f"/v1/applications/{name}"))
    c.delete(f"/v1/connector-groups/{site_b['name']}")


def _window_excluding_now() -> dict[str, Any]:
    """An hour-long daily UTC window that does not contain the current time."""
    start = 14 if datetime.now(UTC).hour < 12 else 2
    return {"start": f"{start:02d}:00", "end": f"{start + 1:02d}:00", "tz": "UTC"}


def test_policy_lifecycle(controller: LocalController, admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    group = c.post("/v1/groups", {"name": unique("staff")})["name"]
    site = make_connector_group(admin, unique("site"))
    app = make_application(admin, unique("wiki"), site)
    user = controller.create_user(admin, unique("erin"), [group])
    user.client.close()  # only its account matters here
    target = {"username": user.username, "destination": host(site["subnets"][0], 10), "port": 443}
    name = unique("staff-wiki")

    with change(admin, "create-policy"):
        created = c.post(
            "/v1/policies",
            {
                "name": name,
                "description": "Staff read the wiki",
                "groups": [group],
                "applications": [app["name"]],
                "time_window": {
                    "days": ["sat", "sun"],
                    "start": "10:00",
                    "end": "14:00",
                    "tz": "Europe/Berlin",
                },
            },
        )
    assert (created["groups"], created["applications"], created["enabled"], created["require_mfa"]) == (
        [group],
        [app["name"]],
        True,
        False,
    )
    assert created["time_window"] == {"days": [5, 6], "start": "10:00", "end": "14:00", "tz": "Europe/Berlin"}
    assert without_time(c.get(f"/v1/policies/{name}")) == without_time(created)
    assert name in names(c.get("/v1/policies"))

    with change(admin, "update-policy"):
        updated = c.patch(
            f"/v1/policies/{name}",
            {"clear_time_window": True, "require_mfa": True, "description": "Staff, any time"},
        )
    assert (updated["time_window"], updated["require_mfa"], updated["description"]) == (
        None,
        True,
        "Staff, any time",
    )
    assert without_time(c.get(f"/v1/policies/{name}")) == without_time(updated)
    decision = c.post("/v1/policy/explain", target)
    assert (decision["allowed"], decision["policy"]) == (True, name), decision
    assert not c.post("/v1/policy/explain", target | {"port": 22})["allowed"]

    c.patch(f"/v1/policies/{name}", {"time_window": _window_excluding_now()})
    assert not c.post("/v1/policy/explain", target)["allowed"]
    c.patch(f"/v1/policies/{name}", {"clear_time_window": True, "enabled": False})
    assert c.get(f"/v1/policies/{name}")["enabled"] is False
    assert not c.post("/v1/policy/explain", target)["allowed"]

    message = refused(409, lambda: c.delete(f"/v1/groups/{group}"))
    assert f"group {group!r} is used by policies: {name}" in message
    message = refused(409, lambda: c.delete(f"/v1/applications/{app['name']}"))
    assert f"application {app['name']!r} is used by policies: {name}" in message
    assert group in names(c.get("/v1/groups")) and app["name"] in names(c.get("/v1/applications"))

    with change(admin, "delete-policy"):
        c.delete(f"/v1/policies/{name}")
    assert f"no policy named {name!r}" in refused(404, lambda: c.get(f"/v1/policies/{name}"))
    c.delete(f"/v1/groups/{group}")
    c.delete(f"/v1/applications/{app['name']}")


def test_address_pool_update(admin: AccountSession) -> None:
    c = admin.client
    original = c.get("/v1/address-pool")
    assert original["name"] == "default" and original["blocks"] and original["allocated"] >= 0
    # connectors enrolled by other tests hold addresses in the current blocks: keep those
    blocks = [*original["blocks"], "100.96.0.0/16", "100.97.0.0/24"]
    try:
        with change(admin, "update-address-pool"):
            updated = c.put("/v1/address-pool", {"blocks": blocks})
        assert updated["blocks"] == blocks
        assert c.get("/v1/address-pool") == updated
    finally:
        c.put("/v1/address-pool", {"blocks": original["blocks"]})
    assert c.get("/v1/address-pool")["blocks"] == original["blocks"]


# ----------------------------------------------------------------- across all objects

# (what, show/patch/delete path, a valid PATCH body)
KINDS = [
    ("admin", "/v1/admins", {"display_name": "x"}),
    ("user", "/v1/users", {"display_name": "x"}),
    ("group", "/v1/groups", {"description": "x"}),
    ("connector group", "/v1/connector-groups", {"description": "x"}),
    ("gateway", "/v1/gateways", {"description": "x"}),
    ("application", "/v1/applications", {"description": "x"}),
    ("policy", "/v1/policies", {"description": "x"}),
    ("connector", "/v1/connectors", {"description": "x"}),
]


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize(("what", "path", "patch"), KINDS, ids=[k[0] for k in KINDS])
def test_unknown_name_is_404_naming_it(
    admin: AccountSession, unique: Unique, method: str, what: str, path: str, patch: dict[str, Any]
) -> None:
    c = admin.client
    name = unique("ghost")
    before = revision(admin)
    calls = {
        "GET": lambda: c.get(f"{path}/{name}"),
        "PATCH": lambda: c.patch(f"{path}/{name}", patch),
        "DELETE": lambda: c.delete(f"{path}/{name}"),
    }
    assert f"no {what} named {name!r}" in refused(404, calls[method])
    assert revision(admin) == before


@pytest.mark.parametrize("target", ["connector-groups", "gateways"])
def test_provisioning_key_for_unknown_target_is_404(
    admin: AccountSession, unique: Unique, target: str
) -> None:
    name = unique("ghost")
    before = admin.client.get("/v1/provisioning-keys")
    message = refused(404, lambda: admin.client.post(f"/v1/{target}/{name}/provisioning-keys", {}))
    assert repr(name) in message
    assert admin.client.get("/v1/provisioning-keys") == before


def _creators(admin: AccountSession) -> dict[str, tuple[str, Callable[[str], dict[str, Any]]]]:
    site = make_connector_group(admin, f"dup-site-{next(_subnets)}")

    def app_body(n: str) -> dict[str, Any]:
        return {
            "name": n,
            "connector_group": site["name"],
            "destinations": [{"address": host(site["subnets"][0], 5), "ports": ["22"]}],
        }

    group = admin.client.post("/v1/groups", {"name": f"{site['name']}-g"})["name"]
    app = admin.client.post("/v1/applications", app_body(f"{site['name']}-a"))["name"]

    def policy_body(n: str) -> dict[str, Any]:
        return {"name": n, "groups": [group], "applications": [app]}

    return {
        "admin": ("/v1/admins", lambda n: {"username": n}),
        "user": ("/v1/users", lambda n: {"username": n}),
        "group": ("/v1/groups", lambda n: {"name": n}),
        "connector group": ("/v1/connector-groups", lambda n: {"name": n, "subnets": [fresh_subnet()]}),
        "gateway": ("/v1/gateways", lambda n: {"name": n, "public_endpoint": "gw.example.net"}),
        "application": ("/v1/applications", app_body),
        "policy": ("/v1/policies", policy_body),
    }


@pytest.mark.parametrize(
    "what", ["admin", "user", "group", "connector group", "gateway", "application", "policy"]
)
def test_duplicate_name_is_409(admin: AccountSession, unique: Unique, what: str) -> None:
    path, body = _creators(admin)[what]
    name = unique("twin")
    first = admin.client.post(path, body(name))
    key = "username" if what in ("admin", "user") else "name"
    second = body(name)
    listing = admin.client.get(path)
    message = refused(409, lambda: admin.client.post(path, second))
    assert f"named {name!r} already exists" in message
    assert admin.client.get(path) == listing
    assert first[key] == name and sum(o[key] == name for o in listing) == 1


def test_duplicate_connector_name_is_409(
    controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    group = make_connector_group(admin, unique("site"))
    key = admin.client.post(f"/v1/connector-groups/{group['name']}/provisioning-keys", {"max_uses": 2})
    name = unique("conn")
    enroll(controller, key["key"], name)
    message = refused(409, lambda: enroll(controller, key["key"], name))
    assert f"a connector named {name!r} already exists" in message
    assert admin.client.get(f"/v1/connector-groups/{group['name']}")["connectors"] == [name]
    # The refused attempt did not use up the key.
    assert next(k for k in admin.client.get("/v1/provisioning-keys") if k["id"] == key["id"])["uses"] == 1


def test_timestamps_round_trip_with_their_time_zone(admin: AccountSession, unique: Unique) -> None:
    """SQLite stores no time zone; the API must still answer UTC timestamps, the same as at create."""
    created = admin.client.post("/v1/groups", {"name": unique("tz")})
    shown = admin.client.get(f"/v1/groups/{created['name']}")
    at_create = datetime.fromisoformat(created["created_at"])
    at_show = datetime.fromisoformat(shown["created_at"])
    assert at_show.tzinfo is not None and at_show == at_create


def test_audit_log_records_who_did_what_and_stays_verifiable(admin: AccountSession, unique: Unique) -> None:
    name = unique("audited")
    with change(admin, "create-group", "delete-group") as records:
        admin.client.post("/v1/groups", {"name": name})
        admin.client.delete(f"/v1/groups/{name}")
    created = next(r for r in records if r["action"] == "create-group")
    assert (created["actor"], created["object_type"], created["source"]) == (
        f"admin:{admin.username}",
        "group",
        "127.0.0.1",
    )
    assert created["details"] == {"name": name}
    # Refused changes are recorded as denied, with the reason.
    head = audit_head(admin)
    refused(404, lambda: admin.client.delete(f"/v1/groups/{name}"))
    denied = admin.client.get("/v1/audit", {"after_id": head})
    assert [(r["action"], r["outcome"]) for r in denied] == [("delete-group", "denied")]
    assert name in denied[0]["details"]["error"]
    verdict = admin.client.get("/v1/audit/verify")
    assert verdict["ok"] and verdict["problems"] == [] and verdict["records"] == verdict["head_id"]


def test_api_calls_on_a_kept_alive_connection_are_fast(controller: LocalController) -> None:
    """Without TCP_NODELAY every call stalled ~40 ms (Nagle + delayed ACK), even on loopback."""
    with controller.client() as c:
        c.get("/v1/health")
        start = time.monotonic()
        for _ in range(20):
            c.get("/v1/health")
        elapsed = time.monotonic() - start
    assert elapsed < 0.5, f"20 health checks took {elapsed:.2f} s"
