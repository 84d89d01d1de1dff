"""Segment through the real controller over HTTPS: a segment server enrolls
with its key, follows its snapshot and reports; an admin inventories assets,
trusts host keys, switches modes and reviews rules. And the abuse cases: a
report from another role, for another server's asset, oversize or malformed;
a changed host key; protect without rules; a wrong fingerprint; hostile names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from apiaccess import raw
from dbaccess import run_sql
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController

Unique = Callable[[str], str]


def host_key() -> str:
    body = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + os.urandom(32)
    return "ssh-ed25519 " + base64.b64encode(body).decode()


def fp(key: str) -> str:
    return "SHA256:" + base64.b64encode(
        hashlib.sha256(base64.b64decode(key.split()[1])).digest()
    ).decode().rstrip("=")


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def enroll(controller: LocalController, key: str, name: str) -> dict[str, Any]:
    body = {
        "key": key,
        "name": name,
        "csr": create_csr(generate_private_key(), name).decode(),
        "wg_public_key": generate_keypair()[1],
    }
    return ok(raw(controller, "POST", "/v1/enroll", body))


def new_server(controller: LocalController, admin: AccountSession, unique: Unique) -> tuple[str, str]:
    """A segment server, enrolled: its name and device credential."""
    name = unique("seg")
    ok(raw(controller, "POST", "/v1/segment-servers", {"name": name}, admin.token), 201)
    key = ok(raw(controller, "POST", f"/v1/segment-servers/{name}/provisioning-keys", {}, admin.token), 201)
    assert key["target"] == f"segment-server:{name}"
    enrolled = enroll(controller, key["key"], "whatever")
    assert (enrolled["role"], enrolled["name"]) == ("segment", name)
    return name, enrolled["credential"]


_octet = iter(range(1, 250))


def new_asset(
    controller: LocalController, admin: AccountSession, unique: Unique, server: str
) -> dict[str, Any]:
    body = {"name": unique("host"), "address": f"10.88.0.{next(_octet)}", "server": server}
    return ok(raw(controller, "POST", "/v1/segment/assets", body, admin.token), 201)


def post_report(controller: LocalController, credential: str, body: dict[str, Any]) -> httpx.Response:
    return raw(controller, "POST", "/v1/segment/report", body, credential)


def asset(controller: LocalController, admin: AccountSession, name: str) -> dict[str, Any]:
    return ok(raw(controller, "GET", f"/v1/segment/assets/{name}", token=admin.token))


def flow(peer: str, port: int) -> dict[str, Any]:
    at = datetime.now(UTC).isoformat()
    return {
        "protocol": "tcp",
        "direction": "inbound",
        "local_port": port,
        "peer": peer,
        "process": "sshd",
        "first_seen": at,
        "last_seen": at,
        "count": 1,
    }


@pytest.fixture(scope="module")
def server(controller: LocalController, admin: AccountSession) -> Iterator[tuple[str, str]]:
    yield new_server(controller, admin, lambda p: f"{p}-main")


def test_the_snapshot_carries_the_servers_assets_and_a_watch_wakes_on_a_change(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    name, credential = server
    first = raw(controller, "GET", "/v1/snapshot", token=credential)
    snap = ok(first)
    assert (snap["role"], snap["name"]) == ("segment", name)
    revision = int(first.headers["X-Zerogate-Revision"])
    woke: dict[str, httpx.Response] = {}
    watcher = threading.Thread(
        target=lambda: woke.update(
            r=raw(controller, "GET", "/v1/snapshot", token=credential, params={"after": revision, "wait": 20})
        )
    )
    watcher.start()
    added = new_asset(controller, admin, unique, name)
    watcher.join(30)
    snap = ok(woke["r"])
    mine = {a["name"]: a for a in snap["assets"]}
    assert mine[added["name"]]["mode"] == "monitored" and mine[added["name"]]["host_key"] is None
    assert mine[added["name"]]["ssh_user"] == "zerogate-segment"


def test_the_admin_flow_learn_review_simulate_protect_unprotect(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    name, credential = server
    a = new_asset(controller, admin, unique, name)
    path = f"/v1/segment/assets/{a['name']}"
    key = host_key()
    result = ok(
        post_report(
            controller,
            credential,
            {"assets": [{"asset_id": a["id"], "state": "host_key_unknown", "observed_host_key": key}]},
        )
    )
    assert result["updated"] == 1 and result["ignored"] == []
    assert asset(controller, admin, a["name"])["observed_host_key_fingerprint"] == fp(key)

    wrong = raw(controller, "POST", f"{path}/trust", {"fingerprint": fp(host_key())}, admin.token)
    assert wrong.status_code == 422 and "not the key" in wrong.json()["detail"]
    ok(raw(controller, "POST", f"{path}/trust", {"fingerprint": fp(key)}, admin.token))

    ok(raw(controller, "POST", f"{path}/mode", {"mode": "learning", "window_seconds": 5}, admin.token))
    refused = raw(controller, "POST", f"{path}/mode", {"mode": "protected"}, admin.token)
    assert refused.status_code == 422 and "no approved accept rule" in refused.json()["detail"]
    ok(raw(controller, "POST", f"{path}/extend", {"seconds": 60}, admin.token))

    flows = [flow("10.88.1.5", 22), flow("10.88.1.6", 22), flow("192.0.2.50", 5432)]
    ok(
        post_report(
            controller, credential, {"assets": [{"asset_id": a["id"], "state": "learning", "flows": flows}]}
        )
    )
    assert len(ok(raw(controller, "GET", f"{path}/flows", token=admin.token))) == 3
    proposal = ok(raw(controller, "POST", f"{path}/propose", token=admin.token))
    by_port = {r["port_first"]: r for r in proposal["proposed"]}
    assert set(by_port) == {22, 5432} and by_port[22]["status"] == "proposed"
    simulated = ok(
        raw(controller, "POST", f"{path}/simulate", {"rule_ids": [by_port[22]["id"]]}, admin.token)
    )
    assert {s["peer"]: s["allowed"] for s in simulated["sources"]} == {
        "10.88.1.5": True,
        "10.88.1.6": True,
        "192.0.2.50": False,
    }
    assert simulated["blocked_sources"] == 1
    ok(raw(controller, "POST", f"{path}/rules/{by_port[22]['id']}/approve", token=admin.token))
    ok(raw(controller, "POST", f"{path}/rules/{by_port[5432]['id']}/reject", token=admin.token))
    edited = ok(
        raw(
            controller,
            "PATCH",
            f"{path}/rules/{by_port[5432]['id']}",
            {"sources": ["192.0.2.0/24"]},
            admin.token,
        )
    )
    assert (edited["status"], edited["networks"]) == ("approved", ["192.0.2.0/24"])

    protected = ok(raw(controller, "POST", f"{path}/mode", {"mode": "protected"}, admin.token))
    assert protected["mode"] == "protected"
    snap = ok(raw(controller, "GET", "/v1/snapshot", token=credential))
    shown = next(x for x in snap["assets"] if x["name"] == a["name"])
    assert shown["host_key"] == key and shown["rules_revision"] == protected["rules_revision"]
    assert sorted(r["port_first"] for r in shown["rules"]) == [22, 5432]
    assert all(r["action"] == "accept" for r in shown["rules"])

    gone = raw(controller, "DELETE", path, token=admin.token)
    assert gone.status_code == 409 and "unprotect it first" in gone.json()["detail"]
    assert ok(raw(controller, "POST", f"{path}/unprotect", token=admin.token))["mode"] == "monitored"
    ok(raw(controller, "DELETE", path, token=admin.token), 204)

    audit = ok(raw(controller, "GET", "/v1/audit", token=admin.token, params={"limit": 500}))
    actions = {
        (r["action"], r["outcome"]) for r in audit if r["object_type"] in ("segment-asset", "segment-rule")
    }
    for done in (
        "create-segment-asset",
        "segment-trust-host-key",
        "segment-set-mode",
        "segment-approve-rule",
        "segment-reject-rule",
        "segment-edit-rule",
        "segment-unprotect",
        "delete-segment-asset",
    ):
        assert (done, "success") in actions, done
    assert ("segment-set-mode", "denied") in actions  # protect without rules
    assert ("segment-trust-host-key", "denied") in actions  # the wrong fingerprint


def test_a_changed_host_key_is_not_adopted(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    name, credential = server
    a = new_asset(controller, admin, unique, name)
    first, second = host_key(), host_key()
    ok(
        post_report(
            controller,
            credential,
            {"assets": [{"asset_id": a["id"], "state": "host_key_unknown", "observed_host_key": first}]},
        )
    )
    ok(
        raw(
            controller,
            "POST",
            f"/v1/segment/assets/{a['name']}/trust",
            {"fingerprint": fp(first)},
            admin.token,
        )
    )
    ok(
        post_report(
            controller,
            credential,
            {"assets": [{"asset_id": a["id"], "state": "ready", "observed_host_key": second}]},
        )
    )
    shown = asset(controller, admin, a["name"])
    assert shown["state"] == "host_key_changed" and shown["host_key_fingerprint"] == fp(first)
    assert fp(second) in shown["detail"]
    snap = ok(raw(controller, "GET", "/v1/snapshot", token=credential))
    assert next(x for x in snap["assets"] if x["asset_id"] == a["id"])["host_key"] == first


def test_only_a_segment_server_reports_and_only_about_its_own_assets(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    name, _credential = server
    mine = new_asset(controller, admin, unique, name)
    other_name, other_credential = new_server(controller, admin, unique)
    theirs = new_asset(controller, admin, unique, other_name)

    site = unique("site")
    ok(
        raw(
            controller,
            "POST",
            "/v1/connector-groups",
            {"name": site, "subnets": ["10.89.0.0/24"]},
            admin.token,
        ),
        201,
    )
    key = ok(raw(controller, "POST", f"/v1/connector-groups/{site}/provisioning-keys", {}, admin.token), 201)
    connector = enroll(controller, key["key"], unique("conn"))
    body = {"assets": [{"asset_id": mine["id"], "state": "failed", "detail": "from a connector"}]}
    refused = post_report(controller, connector["credential"], body)
    assert refused.status_code == 403 and "segment servers" in refused.json()["detail"]
    assert post_report(controller, admin.token, body).status_code == 401
    assert post_report(controller, "", body).status_code == 401
    assert asset(controller, admin, mine["name"])["state"] == "new"

    result = ok(
        post_report(
            controller,
            other_credential,
            {
                "assets": [
                    {
                        "asset_id": mine["id"],
                        "state": "failed",
                        "detail": "not yours",
                        "flows": [flow("10.1.1.1", 80)],
                    },
                    {"asset_id": 2**31 + 5, "state": "ready"},
                    {"asset_id": theirs["id"], "state": "ready"},
                ]
            },
        )
    )
    assert result["ignored"] == [mine["id"], 2**31 + 5] and result["updated"] == 1
    shown = asset(controller, admin, mine["name"])
    assert (shown["state"], shown["detail"], shown["flows"]) == ("new", "", 0)
    # the directory of one server never removes another server's assets
    ok(post_report(controller, other_credential, {"assets": [], "directory": []}))
    assert asset(controller, admin, mine["name"])["name"] == mine["name"]


def test_malformed_and_oversize_reports_are_refused(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    name, credential = server
    a = new_asset(controller, admin, unique, name)
    for bad in (
        {"assets": [{"asset_id": a["id"], "state": "owned"}]},
        {"assets": [{"asset_id": str(a["id"]), "state": "ready"}]},
        {"assets": [{"asset_id": a["id"], "state": "ready", "detail": "line\nbreak"}]},
        {"assets": [{"asset_id": a["id"], "state": "ready", "observed_host_key": "ssh-ed25519 AAAA\nevil"}]},
        {"assets": [{"asset_id": a["id"], "state": "ready", "flows": [flow("10.1.1.1", 80)] * 5001}]},
        {"assets": [], "extra": 1},
    ):
        r = post_report(controller, credential, bad)
        assert r.status_code == 422, (bad if len(json.dumps(bad)) < 300 else "big", r.text)
    huge = {"assets": [{"asset_id": a["id"], "state": "ready", "detail": "x" * 400}] * 12000}
    r = post_report(controller, credential, huge)
    assert r.status_code == 413
    shown = asset(controller, admin, a["name"])
    assert (shown["state"], shown["flows"]) == ("new", 0)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "web 1"},
        {"name": "web\n1"},
        {"name": "../etc"},
        {"name": "-rf"},
        {"name": "a" * 254},
        {"name": "ok", "ssh_user": "root; rm"},
        {"name": "ok", "ssh_port": 0},
        {"name": "ok", "address": "10.0.0.1%eth0"},
        {"name": "ok", "server": "x\u202e"},
    ],
    ids=["space", "newline", "path", "dash", "long", "user", "port", "zone", "bidi-server"],
)
def test_hostile_asset_input_is_refused_without_echo(
    controller: LocalController, admin: AccountSession, server: tuple[str, str], body: dict[str, Any]
) -> None:
    full = {"address": "10.88.9.9", "server": server[0]} | body
    r = raw(controller, "POST", "/v1/segment/assets", full, admin.token)
    assert r.status_code == 422, r.text
    assert "\n" not in r.json()["detail"] and "rm" not in r.json()["detail"].replace("form", "")


def test_hostile_rule_sources_names_and_fingerprints(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    a = new_asset(controller, admin, unique, server[0])
    path = f"/v1/segment/assets/{a['name']}"
    for sources in (["site:../x"], ["10.0.0.1/33"], ["group:x"], ["10.0.0.0/8\n"], [], ["clients"] * 300):
        r = raw(
            controller,
            "POST",
            f"{path}/rules",
            {"protocol": "tcp", "port_first": 22, "sources": sources},
            admin.token,
        )
        assert r.status_code == 422, (sources, r.text)
    r = raw(
        controller,
        "POST",
        f"{path}/rules",
        {"protocol": "tcp", "port_first": 22, "sources": ["site:nowhere"]},
        admin.token,
    )
    assert r.status_code == 404
    for fingerprint in ("MD5:aa", "SHA256:" + "A" * 42 + "\n", "SHA256:" + "-" * 43):
        r = raw(controller, "POST", f"{path}/trust", {"fingerprint": fingerprint}, admin.token)
        assert r.status_code == 422
    for hostile in ("web%0A1", "%2E%2E", "x%E2%80%AE"):
        assert raw(controller, "GET", f"/v1/segment/assets/{hostile}", token=admin.token).status_code == 404
    assert (
        raw(controller, "POST", "/v1/segment-servers", {"name": "seg\u0000"}, admin.token).status_code == 422
    )
    assert (
        raw(controller, "POST", f"{path}/rules/99999999999999/approve", token=admin.token).status_code == 404
    )


def test_jump_hosts_and_server_deletion(
    controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    ok(
        raw(
            controller,
            "PUT",
            "/v1/segment/jump-hosts",
            {"jump_hosts": ["192.0.2.0/28", "2001:db8::/64"]},
            admin.token,
        )
    )
    assert ok(raw(controller, "GET", "/v1/segment/jump-hosts", token=admin.token))["jump_hosts"] == [
        "192.0.2.0/28",
        "2001:db8::/64",
    ]
    assert (
        raw(
            controller, "PUT", "/v1/segment/jump-hosts", {"jump_hosts": ["192.0.2.1/28"]}, admin.token
        ).status_code
        == 422
    )
    name, credential = new_server(controller, admin, unique)
    a = new_asset(controller, admin, unique, name)
    assert raw(controller, "DELETE", f"/v1/segment-servers/{name}", token=admin.token).status_code == 409
    ok(raw(controller, "DELETE", f"/v1/segment/assets/{a['name']}", token=admin.token), 204)
    ok(raw(controller, "DELETE", f"/v1/segment-servers/{name}", token=admin.token), 204)
    assert raw(controller, "GET", "/v1/snapshot", token=credential).status_code == 401
    assert run_sql(controller, f"SELECT count(*) FROM segment_servers WHERE name = '{name}'") == [("0",)]
