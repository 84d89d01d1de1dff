"""The controller's side of active-active groups, through the real API: the mode and
what it refuses (SNAT off, a virtual IP), the slots and ports in the snapshots the
gateway and the connectors get, and drain (audited, a new revision, in the list)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.controller.test_objects import Unique, change, enroll, make_connector_group, refused

from zerogate.testbed.localrun import AccountSession, LocalController


def connector(controller: LocalController, admin: AccountSession, group: str, name: str) -> dict[str, Any]:
    key = admin.client.post(f"/v1/connector-groups/{group}/provisioning-keys", {})["key"]
    return enroll(controller, key, name)


def snapshot(controller: LocalController, credential: str) -> dict[str, Any]:
    with controller.client(credential) as dev:
        snap: dict[str, Any] = dev.get("/v1/snapshot")
    return snap


def test_active_active_refuses_snat_off_and_a_virtual_ip(admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    message = refused(
        422, lambda: make_connector_group(admin, unique("aa"), mode="active-active", snat=False)
    )
    assert "needs snat true" in message and "replies" in message
    group = make_connector_group(admin, unique("aa"), snat=False)
    message = refused(
        422, lambda: c.patch(f"/v1/connector-groups/{group['name']}", {"mode": "active-active"})
    )
    assert "needs snat true" in message
    vip = group["subnets"][0].rsplit(".", 1)[0] + ".5"
    c.patch(f"/v1/connector-groups/{group['name']}", {"snat": True, "vrrp_virtual_ip": vip})
    message = refused(
        422, lambda: c.patch(f"/v1/connector-groups/{group['name']}", {"mode": "active-active"})
    )
    assert "vrrp_virtual_ip" in message
    assert c.get(f"/v1/connector-groups/{group['name']}")["mode"] == "standby"
    c.delete(f"/v1/connector-groups/{group['name']}")


def test_slots_ports_and_drain(controller: LocalController, admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    group = make_connector_group(admin, unique("aa"))
    first = connector(controller, admin, group["name"], unique("aa-one"))
    with change(admin, "update-connector-group"):
        out = c.patch(f"/v1/connector-groups/{group['name']}", {"mode": "active-active"})
    assert out["mode"] == "active-active"
    second = connector(controller, admin, group["name"], unique("aa-two"))  # enrolled into it: a slot too
    gw_key = c.post("/v1/gateways", {"name": unique("gw"), "public_endpoint": "gw.example.test"})
    gateway = c.post(f"/v1/gateways/{gw_key['name']}/provisioning-keys", {})["key"]
    gw = enroll(controller, gateway, gw_key["name"])

    entries = {e["name"]: e for e in snapshot(controller, gw["credential"])["connectors"]}
    mine = [entries[d["name"]] for d in (first, second)]
    slots = [e["slot"] for e in mine]
    assert all(isinstance(s, int) and 1 <= s <= 255 for s in slots) and len(set(slots)) == 2, mine
    port_first = gw_key["port_first"]
    assert [e["listen_port"] for e in mine] == [port_first + 1 + s for s in slots]
    dialled = snapshot(controller, second["credential"])["gateways"]
    assert {g["port"] for g in dialled if g["name"] == gw_key["name"]} == {port_first + 1 + slots[1]}
    # a port range that would leave a slot without its port is refused, and nothing changes
    shrink = {"port_last": port_first + max(slots)}
    assert "widen the range" in refused(422, lambda: c.patch(f"/v1/gateways/{gw_key['name']}", shrink))
    assert c.get(f"/v1/gateways/{gw_key['name']}")["port_last"] == gw_key["port_last"]

    name = quote(second["name"])
    with change(admin, "update-connector") as records:  # a new revision: the gateways must hear it
        assert c.patch(f"/v1/connectors/{name}", {"draining": True})["draining"] is True
    assert any(r["details"].get("draining") is True for r in records), records
    listed = {x["name"]: x["draining"] for x in c.get("/v1/connectors")}
    assert (listed[first["name"]], listed[second["name"]]) == (False, True)
    entries = {e["name"]: e for e in snapshot(controller, gw["credential"])["connectors"]}
    assert (entries[first["name"]]["draining"], entries[second["name"]]["draining"]) == (False, True)

    with change(admin, "update-connector-group"):
        c.patch(f"/v1/connector-groups/{group['name']}", {"mode": "standby"})
    entries = {e["name"]: e for e in snapshot(controller, gw["credential"])["connectors"]}
    assert entries[first["name"]]["slot"] is None and entries[first["name"]]["listen_port"] is None
    dialled = snapshot(controller, second["credential"])["gateways"]
    assert {g["port"] for g in dialled if g["name"] == gw_key["name"]} == {port_first}
    for d in (first, second):
        c.delete(f"/v1/connectors/{quote(d['name'])}")
    c.delete(f"/v1/gateways/{gw_key['name']}")
    c.delete(f"/v1/connector-groups/{group['name']}")
