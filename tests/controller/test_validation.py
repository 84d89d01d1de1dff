"""Bad input is refused with a 4xx that says what is wrong, and changes nothing.

Every case compares the affected collections and the config revision before
and after the refused request. The objects the cases refer to (``{cg}``,
``{app}``, ...) are made once per controller by the ``world`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from zerogate.netops.controller_api import ApiError, ControllerClient
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController

SITE_A, SITE_B = "10.50.0.0/24", "10.51.0.0/24"
LONG = "d" * 256


@pytest.fixture(scope="module")
def world(controller: LocalController, admin: AccountSession) -> Iterator[dict[str, Any]]:
    """One of everything, for the cases to collide with and refer to."""
    c = admin.client
    names = {
        "cg": "site-a",
        "cg2": "site-b",
        "app": "wiki",
        "group": "staff",
        "policy": "staff-wiki",
        "gw": "edge-1",
        "conn": "conn-1",
        "user": "val-user",
    }
    c.post("/v1/connector-groups", {"name": names["cg"], "subnets": [SITE_A], "vrrp_virtual_ip": "10.50.0.1"})
    c.post("/v1/connector-groups", {"name": names["cg2"], "subnets": [SITE_B]})
    c.post(
        "/v1/applications",
        {
            "name": names["app"],
            "connector_group": names["cg"],
            "destinations": [{"address": "10.50.0.10", "protocol": "tcp", "ports": ["443"]}],
        },
    )
    c.post("/v1/groups", {"name": names["group"]})
    c.post(
        "/v1/policies", {"name": names["policy"], "groups": [names["group"]], "applications": [names["app"]]}
    )
    c.post("/v1/gateways", {"name": names["gw"], "public_endpoint": "edge1.example.net"})
    key = c.post(f"/v1/connector-groups/{names['cg']}/provisioning-keys", {"max_uses": 50})
    enroll(controller, key["key"], names["conn"])
    user = controller.create_user(admin, names["user"], [names["group"]])
    yield {"names": names, "key": key, "user": user}
    # Open kept-alive connections would make the controller's shutdown wait 5 s.
    user.client.close()
    admin.client.close()


def enroll(controller: LocalController, key: str, name: str, **override: Any) -> dict[str, Any]:
    body = {
        "key": key,
        "name": name,
        "csr": create_csr(generate_private_key(), "connector").decode(),
        "wg_public_key": generate_keypair()[1],
    } | override
    with controller.client() as c:
        result: dict[str, Any] = c.post("/v1/enroll", body)
    return result


def fill(value: Any, names: dict[str, str]) -> Any:
    """Put the world's names into a case's path and body ('{cg}' -> 'site-a')."""
    if isinstance(value, str):
        return value.format_map(names) if "{" in value else value
    if isinstance(value, list):
        return [fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, names) for k, v in value.items()}
    return value


def call(client: ControllerClient, method: str, path: str, body: Any = None) -> Any:
    if method == "GET":
        return client.get(path)
    if method == "DELETE":
        return client.delete(path)
    return getattr(client, method.lower())(path, body)


def watched(path: str) -> list[str]:
    """The collections a request to ``path`` could change."""
    if "provisioning-keys" in path:
        return ["/v1/provisioning-keys"]
    if path == "/v1/enroll":
        return ["/v1/connectors", "/v1/provisioning-keys", "/v1/devices"]
    if path.startswith("/v1/policy/"):
        return []
    return ["/" + "/".join(path.strip("/").split("/")[:2])]


def assert_refused(
    admin: AccountSession,
    method: str,
    path: str,
    body: Any,
    status: int,
    fragments: list[str],
    client: ControllerClient | None = None,
) -> str:
    watch = watched(path)
    before = [admin.client.get(p) for p in watch]
    revision = admin.client.get("/v1/health")["revision"]
    with pytest.raises(ApiError) as info:
        call(client or admin.client, method, path, body)
    message = info.value.message
    assert info.value.status == status, message
    for fragment in fragments:
        assert fragment in message
    assert [admin.client.get(p) for p in watch] == before, "a refused request changed something"
    assert admin.client.get("/v1/health")["revision"] == revision
    return message


def app_body(*destinations: dict[str, Any], group: str = "{cg}") -> dict[str, Any]:
    return {"name": "new-app", "connector_group": group, "destinations": list(destinations)}


def cg_body(*subnets: str, **extra: Any) -> dict[str, Any]:
    return {"name": "new-site", "subnets": list(subnets), **extra}


def policy_body(**extra: Any) -> dict[str, Any]:
    return {"name": "new-policy", "groups": ["{group}"], "applications": ["{app}"], **extra}


def gw_body(**extra: Any) -> dict[str, Any]:
    return {"name": "new-gw", "public_endpoint": "gw.example.net", **extra}


def dest(
    address: str = "10.50.0.20", protocol: str = "tcp", ports: list[str] | None = None
) -> dict[str, Any]:
    return {"address": address, "protocol": protocol, "ports": ["80"] if ports is None else ports}


def window(**extra: Any) -> dict[str, Any]:
    return {"start": "08:00", "end": "18:00", "tz": "UTC", **extra}


# (id, method, path, body, status, fragments the message must contain)
# fmt: off
CASES: list[tuple[str, str, str, Any, int, list[str]]] = [
    # names
    ("group-name-too-long", "POST", "/v1/groups", {"name": "g" * 65}, 422, ["name", "at most 64"]),
    ("group-name-space", "POST", "/v1/groups", {"name": "two words"}, 422, ["'two words' is not a valid name"]),
    ("group-name-leading-dash", "POST", "/v1/groups", {"name": "-x"}, 422, ["'-x' is not a valid name"]),
    ("group-name-non-ascii", "POST", "/v1/groups", {"name": "grüppe"}, 422, ["is not a valid name"]),
    ("group-name-empty", "POST", "/v1/groups", {"name": ""}, 422, ["name", "at least 1"]),
    ("site-name-slash", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24", name="a/b"), 422,
     ["'a/b' is not a valid name"]),
    ("gateway-name-too-long", "POST", "/v1/gateways", gw_body(name="g" * 65), 422, ["at most 64"]),
    ("app-name-bad", "POST", "/v1/applications", app_body(dest()) | {"name": "wiki!"}, 422,
     ["'wiki!' is not a valid name"]),
    ("policy-name-bad", "POST", "/v1/policies", policy_body(name="a b"), 422, ["'a b' is not a valid name"]),
    ("user-name-upper-case", "POST", "/v1/users", {"username": "Alice"}, 422,
     ["'Alice' is not a valid username"]),
    ("admin-name-too-long", "POST", "/v1/admins", {"username": "a" * 65}, 422, ["at most 64"]),
    # descriptions
    ("group-description", "POST", "/v1/groups", {"name": "g-new", "description": LONG}, 422,
     ["description", "at most 255"]),
    ("site-description", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24", description=LONG), 422,
     ["description", "at most 255"]),
    ("gateway-description", "POST", "/v1/gateways", gw_body(description=LONG), 422, ["at most 255"]),
    ("app-description", "POST", "/v1/applications", app_body(dest()) | {"description": LONG}, 422,
     ["at most 255"]),
    ("policy-description", "POST", "/v1/policies", policy_body(description=LONG), 422, ["at most 255"]),
    ("patch-group-description", "PATCH", "/v1/groups/{group}", {"description": LONG}, 422, ["at most 255"]),
    ("patch-site-description", "PATCH", "/v1/connector-groups/{cg}", {"description": LONG}, 422,
     ["at most 255"]),
    ("patch-connector-description", "PATCH", "/v1/connectors/{conn}", {"description": LONG}, 422,
     ["description", "at most 255"]),
    ("key-description", "POST", "/v1/connector-groups/{cg}/provisioning-keys", {"description": LONG}, 422,
     ["at most 255"]),
    # subnets
    ("subnet-prefix-33", "POST", "/v1/connector-groups", cg_body("10.60.0.0/33"), 422,
     ["'10.60.0.0/33' is not an IP address or CIDR prefix"]),
    ("subnet-not-an-address", "POST", "/v1/connector-groups", cg_body("intranet"), 422,
     ["'intranet' is not an IP address or CIDR prefix"]),
    ("subnet-host-bits", "POST", "/v1/connector-groups", cg_body("10.60.0.1/24"), 422,
     ["host bits set", "did you mean 10.60.0.0/24?"]),
    ("subnets-none", "POST", "/v1/connector-groups", cg_body(), 422, ["subnets", "at least 1"]),
    ("subnets-overlap-in-group", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24", "10.60.0.128/25"),
     422, ["10.60.0.0/24 and 10.60.0.128/25 overlap"]),
    ("subnet-overlaps-other-site", "POST", "/v1/connector-groups", cg_body("10.50.0.0/16"), 409,
     ["10.50.0.0/16 overlaps 10.50.0.0/24 of connector group 'site-a'"]),
    ("patch-subnet-overlaps-other-site", "PATCH", "/v1/connector-groups/{cg2}", {"subnets": ["10.50.0.128/25"]},
     409, ["10.50.0.128/25 overlaps 10.50.0.0/24 of connector group 'site-a'"]),
    ("patch-subnets-strand-app", "PATCH", "/v1/connector-groups/{cg}", {"subnets": ["10.52.0.0/24"], "vrrp_virtual_ip": ""}, 422,
     ["application 'wiki'", "10.50.0.10/32 is outside the subnets of connector group 'site-a'"]),
    ("vip-outside-subnets", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24", vrrp_virtual_ip="10.61.0.1"),
     422, ["10.61.0.1 is in none of the group's subnets"]),
    ("vip-not-an-address", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24", vrrp_virtual_ip="vip"), 422,
     ["'vip' is not an IP address"]),
    # updates are checked as a whole (the merged object), like a create
    ("patch-subnets-overlap-in-group", "PATCH", "/v1/connector-groups/{cg}", {"subnets": [SITE_A, "10.50.0.0/25"]},
     422, ["10.50.0.0/24 and 10.50.0.0/25 overlap"]),
    ("patch-vip-outside-subnets", "PATCH", "/v1/connector-groups/{cg}", {"vrrp_virtual_ip": "10.99.0.1"}, 422,
     ["10.99.0.1 is in none of the group's subnets"]),
    ("patch-subnets-leave-vip-outside", "PATCH", "/v1/connector-groups/{cg}", {"subnets": ["10.50.0.128/25"]},
     422, ["10.50.0.1 is in none of the group's subnets"]),
    ("patch-vip-not-an-address", "PATCH", "/v1/connector-groups/{cg}", {"vrrp_virtual_ip": "vip"}, 422,
     ["'vip' is not an IP address"]),
    ("patch-gateway-ports-reversed", "PATCH", "/v1/gateways/{gw}", {"port_first": 60000}, 422,
     ["port range 60000-53000 is empty (first > last)"]),
    # ports and protocols
    ("port-0", "POST", "/v1/applications", app_body(dest(ports=["0"])), 422, ["1..65535", "0"]),
    ("port-65536", "POST", "/v1/applications", app_body(dest(ports=["65536"])), 422, ["1..65535", "65536"]),
    ("port-range-reversed", "POST", "/v1/applications", app_body(dest(ports=["90-80"])), 422,
     ["reversed", "80-90"]),
    ("port-not-a-number", "POST", "/v1/applications", app_body(dest(ports=["http"])), 422, ["'http'"]),
    ("ports-on-icmp", "POST", "/v1/applications", app_body(dest(protocol="icmp", ports=["80"])), 422,
     ["protocol icmp takes no ports"]),
    ("tcp-without-ports", "POST", "/v1/applications", app_body(dest(ports=[])), 422,
     ["protocol tcp needs at least one port"]),
    ("unknown-protocol", "POST", "/v1/applications", app_body(dest(protocol="sctp")), 422, ["protocol"]),
    # applications and their connector group
    ("app-outside-its-site", "POST", "/v1/applications", app_body(dest("10.51.0.5")), 422,
     ["10.51.0.5/32 is outside the subnets of connector group 'site-a' (10.50.0.0/24)"]),
    ("app-unknown-site", "POST", "/v1/applications", app_body(dest(), group="nope-site"), 404,
     ["no connector group named 'nope-site'"]),
    ("app-no-destinations", "POST", "/v1/applications", app_body(), 422, ["destinations"]),
    ("patch-app-outside-its-site", "PATCH", "/v1/applications/{app}", {"destinations": [dest("10.51.0.5")]},
     422, ["outside the subnets of connector group 'site-a'"]),
    ("patch-app-move-away-from-its-subnets", "PATCH", "/v1/applications/{app}", {"connector_group": "{cg2}"},
     422, ["10.50.0.10/32 is outside the subnets of connector group 'site-b'"]),
    ("patch-app-unknown-site", "PATCH", "/v1/applications/{app}", {"connector_group": "nope-site"}, 404,
     ["no connector group named 'nope-site'"]),
    # policies
    ("policy-unknown-group", "POST", "/v1/policies", policy_body(groups=["nope-group"]), 404,
     ["no group named 'nope-group'"]),
    ("policy-unknown-app", "POST", "/v1/policies", policy_body(applications=["nope-app"]), 404,
     ["no application named 'nope-app'"]),
    ("policy-no-groups", "POST", "/v1/policies", policy_body(groups=[]), 422, ["groups"]),
    ("policy-unknown-time-zone", "POST", "/v1/policies", policy_body(time_window=window(tz="Mars/Olympus")), 422,
     ["unknown time zone 'Mars/Olympus'", "Europe/Berlin"]),
    ("policy-empty-window", "POST", "/v1/policies", policy_body(time_window=window(end="08:00")), 422,
     ["start and end are equal"]),
    ("policy-unknown-day", "POST", "/v1/policies", policy_body(time_window=window(days=["funday"])), 422,
     ["days"]),
    ("policy-bad-time", "POST", "/v1/policies", policy_body(time_window=window(start="25:00")), 422, ["start"]),
    ("patch-policy-unknown-time-zone", "PATCH", "/v1/policies/{policy}",
     {"time_window": window(tz="Europe/Atlantis")}, 422, ["unknown time zone 'Europe/Atlantis'"]),
    ("patch-policy-unknown-app", "PATCH", "/v1/policies/{policy}", {"applications": ["{app}", "nope-app"]}, 404,
     ["no application named 'nope-app'"]),
    # gateways
    ("gateway-ports-reversed", "POST", "/v1/gateways", gw_body(port_first=60000, port_last=50000), 422,
     ["port range 60000-50000 is empty (first > last)"]),
    ("gateway-port-0", "POST", "/v1/gateways", gw_body(port_first=0), 422, ["port_first", "greater than"]),
    ("gateway-port-65536", "POST", "/v1/gateways", gw_body(port_last=65536), 422, ["port_last", "less than"]),
    ("gateway-bad-endpoint", "POST", "/v1/gateways", gw_body(public_endpoint="not a host!"), 422,
     ["'not a host!' is not a hostname or IP address"]),
    # unknown fields
    ("extra-field", "POST", "/v1/groups", {"name": "g-new", "colour": "red"}, 422,
     ["colour", "Extra inputs are not permitted"]),
    ("extra-field-in-destination", "POST", "/v1/applications", app_body(dest() | {"port": 80}), 422,
     ["port", "Extra inputs are not permitted"]),
    ("extra-field-patch", "PATCH", "/v1/policies/{policy}", {"priority": 1}, 422, ["priority"]),
    ("extra-field-pool", "PUT", "/v1/address-pool", {"blocks": ["100.64.0.0/16"], "name": "x"}, 422, ["name"]),
    ("rename-by-patch", "PATCH", "/v1/connectors/{conn}", {"name": "renamed"}, 422, ["name"]),
    # client address pool
    ("pool-overlap", "PUT", "/v1/address-pool", {"blocks": ["100.64.0.0/16", "100.64.128.0/17"]}, 422,
     ["100.64.0.0/16 and 100.64.128.0/17 overlap"]),
    ("pool-ipv6", "PUT", "/v1/address-pool", {"blocks": ["fd00::/64"]}, 422, ["IPv4"]),
    ("pool-too-small", "PUT", "/v1/address-pool", {"blocks": ["100.64.0.0/31"]}, 422, ["/30 or larger"]),
    ("pool-empty", "PUT", "/v1/address-pool", {"blocks": []}, 422, ["blocks"]),
    ("pool-host-bits", "PUT", "/v1/address-pool", {"blocks": ["100.64.0.1/16"]}, 422,
     ["did you mean 100.64.0.0/16"]),
    # accounts and membership
    ("user-unknown-group", "POST", "/v1/users", {"username": "newbie", "groups": ["nope-group"]}, 404,
     ["no group named 'nope-group'"]),
    ("user-bad-email", "POST", "/v1/users", {"username": "newbie", "email": "newbie"}, 422, ["email"]),
    ("admin-in-a-group", "POST", "/v1/admins", {"username": "boss", "groups": ["{group}"]}, 422,
     ["admins are not members of user groups"]),
    ("admin-as-member", "POST", "/v1/groups", {"name": "g-new", "members": ["admin"]}, 422,
     ["only users can be group members, not admins: admin"]),
    ("unknown-member", "PATCH", "/v1/groups/{group}", {"members": ["{user}", "nobody"]}, 404,
     ["no user named 'nobody'"]),
    ("patch-user-unknown-group", "PATCH", "/v1/users/{user}", {"groups": ["nope-group"]}, 404,
     ["no group named 'nope-group'"]),
    ("disable-yourself", "PATCH", "/v1/admins/admin", {"disabled": True}, 422,
     ["cannot disable your own account"]),
    # connectors and provisioning keys
    ("connector-bandwidth", "PATCH", "/v1/connectors/{conn}", {"bandwidth_class": "1gbps"}, 422,
     ["bandwidth_class"]),
    ("connector-location-too-long", "PATCH", "/v1/connectors/{conn}", {"location": "x" * 101}, 422,
     ["location"]),
    ("key-ttl-0", "POST", "/v1/connector-groups/{cg}/provisioning-keys", {"ttl_minutes": 0}, 422,
     ["ttl_minutes"]),
    ("key-max-uses-0", "POST", "/v1/connector-groups/{cg}/provisioning-keys", {"max_uses": 0}, 422,
     ["max_uses"]),
    # explain
    ("explain-not-an-address", "POST", "/v1/policy/explain", {"username": "{user}", "destination": "wiki"}, 422,
     ["'wiki' is not an IP address"]),
    ("explain-port-0", "POST", "/v1/policy/explain",
     {"username": "{user}", "destination": "10.50.0.10", "port": 0}, 422, ["port"]),
    ("explain-tcp-without-port", "POST", "/v1/policy/explain", {"username": "{user}", "destination": "10.50.0.10"},
     422, ["tcp needs a port"]),
    ("explain-icmp-with-port", "POST", "/v1/policy/explain",
     {"username": "{user}", "destination": "10.50.0.10", "protocol": "icmp", "port": 443}, 422,
     ["icmp has no ports"]),
]

ESC = "\x1b[2J"  # "clear the screen" to a terminal that prints it raw
NEWLINE = "U+000A"

# Issue 8: what an attacker found. A trailing newline passed re.match + "$"
# (a second "alice" that prints like the first); control and invisible
# characters reached terminals; network configs the data plane cannot use;
# loose coercion of JSON types.
HARDENING_CASES: list[tuple[str, str, str, Any, int, list[str]]] = [
    # names and endpoints with a trailing newline
    ("user-name-trailing-newline", "POST", "/v1/users", {"username": "{user}\n"}, 422, ["username", NEWLINE]),
    ("admin-name-trailing-newline", "POST", "/v1/admins", {"username": "admin\n"}, 422, ["username", NEWLINE]),
    ("group-name-trailing-newline", "POST", "/v1/groups", {"name": "{group}\n"}, 422, ["name", NEWLINE]),
    ("site-name-trailing-newline", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24", name="{cg}\n"), 422,
     ["name", NEWLINE]),
    ("gateway-name-trailing-newline", "POST", "/v1/gateways", gw_body(name="{gw}\n"), 422, ["name", NEWLINE]),
    ("app-name-trailing-newline", "POST", "/v1/applications", app_body(dest()) | {"name": "{app}\n"}, 422,
     ["name", NEWLINE]),
    ("policy-name-trailing-newline", "POST", "/v1/policies", policy_body(name="{policy}\n"), 422,
     ["name", NEWLINE]),
    ("token-name-trailing-newline", "POST", "/v1/tokens", {"name": "cli\n"}, 422, ["name", NEWLINE]),
    ("gateway-endpoint-trailing-newline", "POST", "/v1/gateways", gw_body(public_endpoint="gw.example.net\n"),
     422, ["public_endpoint", NEWLINE]),
    ("patch-gateway-endpoint-trailing-newline", "PATCH", "/v1/gateways/{gw}",
     {"public_endpoint": "edge1.example.net\n"}, 422, ["public_endpoint", NEWLINE]),
    ("gateway-endpoint-zone-id", "POST", "/v1/gateways", gw_body(public_endpoint="fe80::1%eth0"), 422,
     ["public_endpoint", "zone ids"]),
    ("gateway-endpoint-ipv4-mapped", "POST", "/v1/gateways", gw_body(public_endpoint="::ffff:192.0.2.1"), 422,
     ["IPv4-mapped", "write it as IPv4: 192.0.2.1"]),
    # control and invisible characters in free text
    ("display-name-escape", "POST", "/v1/users", {"username": "newbie", "display_name": ESC + "boss"}, 422,
     ["display_name", "U+001B at position 1", "printable text only"]),
    ("display-name-nul", "POST", "/v1/users", {"username": "newbie", "display_name": "a\x00b"}, 422,
     ["display_name", "U+0000 at position 2"]),
    ("display-name-bidi-override", "POST", "/v1/users", {"username": "newbie", "display_name": "\u202eexe.txt"},
     422, ["U+202E"]),
    ("display-name-zero-width-space", "POST", "/v1/users", {"username": "newbie", "display_name": "ad\u200bmin"},
     422, ["U+200B"]),
    ("display-name-line-separator", "POST", "/v1/users", {"username": "newbie", "display_name": "a\u2028b"},
     422, ["U+2028"]),
    ("display-name-private-use", "POST", "/v1/users", {"username": "newbie", "display_name": "\ue000"}, 422,
     ["U+E000"]),
    ("patch-display-name-escape", "PATCH", "/v1/users/{user}", {"display_name": ESC}, 422,
     ["display_name", "U+001B"]),
    ("email-trailing-newline", "POST", "/v1/users", {"username": "newbie", "email": "new@example.com\n"}, 422,
     ["email", NEWLINE]),
    ("patch-email-escape", "PATCH", "/v1/users/{user}", {"email": "v@example.com" + ESC}, 422,
     ["email", "U+001B"]),
    ("group-description-escape", "POST", "/v1/groups", {"name": "g-new", "description": ESC}, 422,
     ["description", "U+001B"]),
    ("patch-group-description-escape", "PATCH", "/v1/groups/{group}", {"description": ESC}, 422, ["U+001B"]),
    ("site-description-escape", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24", description=ESC), 422,
     ["description", "U+001B"]),
    ("gateway-description-nul", "POST", "/v1/gateways", gw_body(description="a\x00"), 422, ["U+0000"]),
    ("app-description-escape", "POST", "/v1/applications", app_body(dest()) | {"description": ESC}, 422,
     ["U+001B"]),
    ("policy-description-escape", "POST", "/v1/policies", policy_body(description=ESC), 422, ["U+001B"]),
    ("key-description-escape", "POST", "/v1/connector-groups/{cg}/provisioning-keys", {"description": ESC}, 422,
     ["description", "U+001B"]),
    ("connector-description-escape", "PATCH", "/v1/connectors/{conn}", {"description": ESC}, 422,
     ["description", "U+001B"]),
    ("connector-location-escape", "PATCH", "/v1/connectors/{conn}", {"location": ESC}, 422,
     ["location", "U+001B"]),
    ("connector-owner-newline", "PATCH", "/v1/connectors/{conn}", {"owner": "ops\nteam"}, 422,
     ["owner", "U+000A at position 4"]),
    ("policy-time-zone-newline", "POST", "/v1/policies", policy_body(time_window=window(tz="UTC\n")), 422,
     ["tz", NEWLINE]),
    # subnets a connector cannot front
    ("site-subnet-ipv6", "POST", "/v1/connector-groups", cg_body("fd00:1::/64"), 422, ["must be IPv4"]),
    ("patch-site-subnet-ipv6", "PATCH", "/v1/connector-groups/{cg2}", {"subnets": ["fd00:2::/64"]}, 422,
     ["must be IPv4"]),
    ("site-subnet-everything", "POST", "/v1/connector-groups", cg_body("0.0.0.0/0"), 422,
     ["0.0.0.0/0 covers every address"]),
    ("site-subnet-half-of-everything", "POST", "/v1/connector-groups", cg_body("0.0.0.0/1"), 422,
     ["0.0.0.0/1 includes 0.0.0.0/8"]),
    ("site-subnet-this-network", "POST", "/v1/connector-groups", cg_body("0.0.0.0/8"), 422, ["unspecified"]),
    ("site-subnet-loopback", "POST", "/v1/connector-groups", cg_body("127.0.0.0/8"), 422,
     ["127.0.0.0/8 is in 127.0.0.0/8 (loopback addresses)"]),
    ("site-subnet-link-local", "POST", "/v1/connector-groups", cg_body("169.254.10.0/24"), 422, ["link-local"]),
    ("site-subnet-multicast", "POST", "/v1/connector-groups", cg_body("239.1.0.0/16"), 422, ["multicast"]),
    ("site-subnet-reserved", "POST", "/v1/connector-groups", cg_body("240.0.0.0/8"), 422, ["reserved"]),
    ("site-subnet-broadcast", "POST", "/v1/connector-groups", cg_body("255.255.255.255/32"), 422, ["broadcast"]),
    ("site-subnet-ipv4-mapped", "POST", "/v1/connector-groups", cg_body("::ffff:10.1.0.0/120"), 422,
     ["IPv4-mapped", "write it as IPv4: 10.1.0.0/24"]),
    ("site-subnet-ipv4-mapped-overlap", "POST", "/v1/connector-groups", cg_body("::ffff:10.50.0.0/120"), 422,
     ["write it as IPv4: 10.50.0.0/24"]),
    ("site-subnet-zone-id", "POST", "/v1/connector-groups", cg_body("fe80::%eth0/64"), 422, ["zone ids"]),
    ("site-subnet-trailing-newline", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24\n"), 422, [NEWLINE]),
    ("site-subnet-in-client-pool", "POST", "/v1/connector-groups", cg_body("100.64.7.0/24"), 409,
     ["subnet 100.64.7.0/24 overlaps client address block 100.64.0.0/16", "PUT /v1/address-pool"]),
    ("site-subnet-in-pool-alternate", "POST", "/v1/connector-groups", cg_body("100.83.0.0/24"), 409,
     ["overlaps client address block 100.83.0.0/16"]),
    ("site-subnet-covers-client-pool", "POST", "/v1/connector-groups", cg_body("100.0.0.0/8"), 409,
     ["overlaps client address block 100.64.0.0/16"]),
    ("patch-site-subnet-in-client-pool", "PATCH", "/v1/connector-groups/{cg2}", {"subnets": ["100.70.0.0/24"]},
     409, ["overlaps client address block 100.70.0.0/16"]),
    ("vip-ipv4-mapped", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24", vrrp_virtual_ip="::ffff:10.60.0.1"),
     422, ["vrrp_virtual_ip", "write it as IPv4: 10.60.0.1"]),
    ("patch-vip-zone-id", "PATCH", "/v1/connector-groups/{cg}", {"vrrp_virtual_ip": "fe80::1%eth0"}, 422,
     ["zone ids"]),
    ("app-destination-ipv4-mapped", "POST", "/v1/applications", app_body(dest("::ffff:10.50.0.20")), 422,
     ["write it as IPv4: 10.50.0.20/32"]),
    ("app-destination-ipv6", "POST", "/v1/applications", app_body(dest("fd00::1")), 422, ["must be IPv4"]),
    ("patch-app-destination-ipv4-mapped", "PATCH", "/v1/applications/{app}",
     {"destinations": [dest("::ffff:10.50.0.0/120")]}, 422, ["write it as IPv4: 10.50.0.0/24"]),
    ("explain-ipv4-mapped", "POST", "/v1/policy/explain",
     {"username": "{user}", "destination": "::ffff:10.50.0.10", "port": 443}, 422, ["write it as IPv4: 10.50.0.10"]),
    # client address pool blocks clients cannot be given, or that a site fronts
    ("pool-everything", "PUT", "/v1/address-pool", {"blocks": ["0.0.0.0/0"]}, 422, ["covers every address"]),
    ("pool-loopback", "PUT", "/v1/address-pool", {"blocks": ["100.64.0.0/16", "127.0.0.0/16"]}, 422,
     ["loopback"]),
    ("pool-multicast", "PUT", "/v1/address-pool", {"blocks": ["100.64.0.0/16", "224.0.0.0/16"]}, 422,
     ["multicast"]),
    ("pool-ipv4-mapped", "PUT", "/v1/address-pool", {"blocks": ["::ffff:100.90.0.0/112"]}, 422,
     ["write it as IPv4: 100.90.0.0/16"]),
    ("pool-overlaps-site", "PUT", "/v1/address-pool", {"blocks": ["100.64.0.0/16", "10.50.0.0/16"]}, 409,
     ["block 10.50.0.0/16 overlaps subnet 10.50.0.0/24 of connector group 'site-a'"]),
    ("pool-inside-site", "PUT", "/v1/address-pool", {"blocks": ["100.64.0.0/16", "10.51.0.0/28"]}, 409,
     ["overlaps subnet 10.51.0.0/24 of connector group 'site-b'"]),
    # strict JSON types: 0 is not false, true is not 1, "5" is not 5
    ("disabled-as-0", "PATCH", "/v1/users/{user}", {"disabled": 0}, 422, ["disabled", "valid boolean"]),
    ("disabled-as-string", "PATCH", "/v1/users/{user}", {"disabled": "false"}, 422, ["disabled", "valid boolean"]),
    ("token-ttl-as-true", "POST", "/v1/tokens", {"name": "cli", "ttl_days": True}, 422,
     ["ttl_days", "valid integer"]),
    ("token-ttl-as-string", "POST", "/v1/tokens", {"name": "cli", "ttl_days": "5"}, 422, ["ttl_days"]),
    ("token-ttl-as-float", "POST", "/v1/tokens", {"name": "cli", "ttl_days": 5.0}, 422, ["ttl_days"]),
    ("key-max-uses-as-string", "POST", "/v1/connector-groups/{cg}/provisioning-keys", {"max_uses": "5"}, 422,
     ["max_uses", "valid integer"]),
    ("key-ttl-as-true", "POST", "/v1/connector-groups/{cg}/provisioning-keys", {"ttl_minutes": True}, 422,
     ["ttl_minutes"]),
    ("gateway-port-as-string", "POST", "/v1/gateways", gw_body(port_first="51820"), 422, ["port_first"]),
    ("site-snat-as-1", "POST", "/v1/connector-groups", cg_body("10.60.0.0/24", snat=1), 422,
     ["snat", "valid boolean"]),
    ("policy-mfa-as-1", "POST", "/v1/policies", policy_body(require_mfa=1), 422, ["require_mfa"]),
    ("patch-policy-enabled-as-string", "PATCH", "/v1/policies/{policy}", {"enabled": "no"}, 422, ["enabled"]),
    ("policy-time-as-number", "POST", "/v1/policies", policy_body(time_window=window(start=28800)), 422,
     ["start", "text like '08:00'"]),
    ("explain-port-as-string", "POST", "/v1/policy/explain",
     {"username": "{user}", "destination": "10.50.0.10", "port": "443"}, 422, ["port", "valid integer"]),
    ("explain-mfa-as-0", "POST", "/v1/policy/explain",
     {"username": "{user}", "destination": "10.50.0.10", "port": 443, "mfa": 0}, 422, ["mfa"]),
]
# fmt: on


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragments"),
    [c[1:] for c in CASES + HARDENING_CASES],
    ids=[c[0] for c in CASES + HARDENING_CASES],
)
def test_bad_input_is_refused_and_changes_nothing(
    admin: AccountSession,
    world: dict[str, Any],
    method: str,
    path: str,
    body: Any,
    status: int,
    fragments: list[str],
) -> None:
    names = world["names"]
    assert_refused(admin, method, fill(path, names), fill(body, names), status, fill(fragments, names))


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("10.70.0.7", "10.70.0.7/32"),
        (" 10.71.0.0/24 ", "10.71.0.0/24"),
        ("10.72.0.0/255.255.255.0", "10.72.0.0/24"),
    ],
)
def test_subnet_in_any_valid_spelling_is_accepted(admin: AccountSession, written: str, stored: str) -> None:
    """A bare address, spaces around it or a netmask: it is stored in canonical form. (IPv6
    subnets are refused: a connector's firewall sets hold IPv4 only.)"""
    name = "v-" + stored.replace(":", "").replace("/", "-").replace(".", "-")
    created = admin.client.post("/v1/connector-groups", {"name": name, "subnets": [written]})
    assert created["subnets"] == [stored]


# ----------------------------------------------------------------- connector names on enrollment


@pytest.mark.parametrize(
    "name",
    ["c" * 50, "a", "Site A / rack #3 (primary)", "fra-01.dc_2@acme+edge"],
    ids=["50-chars", "1-char", "spaces-and-symbols", "symbols"],
)
def test_connector_name_accepted(
    controller: LocalController, admin: AccountSession, world: dict[str, Any], name: str
) -> None:
    enrolled = enroll(controller, world["key"]["key"], name)
    assert enrolled["name"] == name
    listed = {c["name"]: c for c in admin.client.get("/v1/connectors")}
    assert listed[name]["connector_group"] == world["names"]["cg"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("c" * 51, "at most 50 characters"),
        ("", "at least 1 character"),
        (" leading-space", "not a valid connector name"),
        ("trailing-space ", "not a valid connector name"),
        ("tab\tinside", "U+0009 at position 4"),
        ("naïve", "not a valid connector name"),
        ("conn-1\n", "U+000A at position 7"),
        ("conn-\x1b[2J", "U+001B"),
    ],
    ids=[
        "51-chars",
        "empty",
        "leading-space",
        "trailing-space",
        "control-char",
        "non-ascii",
        "trailing-newline",
        "escape",
    ],
)
def test_connector_name_refused_on_enroll(
    admin: AccountSession, world: dict[str, Any], controller: LocalController, name: str, fragment: str
) -> None:
    body = {
        "key": world["key"]["key"],
        "name": name,
        "csr": create_csr(generate_private_key(), "connector").decode(),
        "wg_public_key": generate_keypair()[1],
    }
    with controller.client() as anonymous:
        assert_refused(admin, "POST", "/v1/enroll", body, 422, ["name", fragment], client=anonymous)


@pytest.mark.parametrize(
    ("override", "status", "fragment"),
    [
        ({"wg_public_key": "not-a-key"}, 422, "WireGuard public key"),
        ({"key": "zgk_not-a-real-key"}, 401, "provisioning key not recognised"),
        (
            {
                "csr": "-----BEGIN CERTIFICATE REQUEST-----\n"
                + "A" * 200
                + "\n-----END CERTIFICATE REQUEST-----\n"
            },
            422,
            "csr",
        ),
    ],
    ids=["bad-wireguard-key", "unknown-key", "bad-csr"],
)
def test_bad_enrollment_is_refused(
    admin: AccountSession,
    world: dict[str, Any],
    controller: LocalController,
    override: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    body = {
        "key": world["key"]["key"],
        "name": "never-enrolled",
        "csr": create_csr(generate_private_key(), "connector").decode(),
        "wg_public_key": generate_keypair()[1],
    } | override
    with controller.client() as anonymous:
        assert_refused(admin, "POST", "/v1/enroll", body, status, [fragment], client=anonymous)


def test_connector_description_of_255_is_fine(admin: AccountSession, world: dict[str, Any]) -> None:
    conn = quote(world["names"]["conn"])
    assert (
        admin.client.patch(f"/v1/connectors/{conn}", {"description": "d" * 255})["description"] == "d" * 255
    )


# ----------------------------------------------------------------- who may call the admin API

ADMIN_ONLY: list[tuple[str, str, Any]] = [
    ("GET", "/v1/groups", None),
    ("POST", "/v1/groups", {"name": "sneaky"}),
    ("DELETE", "/v1/groups/{group}", None),
    ("PATCH", "/v1/policies/{policy}", {"enabled": False}),
    ("POST", "/v1/admins", {"username": "sneaky"}),
    ("GET", "/v1/users", None),
    ("PUT", "/v1/address-pool", {"blocks": ["100.100.0.0/16"]}),
    ("POST", "/v1/connector-groups/{cg}/provisioning-keys", {}),
    ("GET", "/v1/audit", None),
    ("POST", "/v1/policy/explain", {"username": "{user}", "destination": "10.50.0.10", "port": 443}),
]
ADMIN_ONLY_IDS = [f"{m} {p}" for m, p, _ in ADMIN_ONLY]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY, ids=ADMIN_ONLY_IDS)
def test_user_session_gets_403(
    admin: AccountSession, world: dict[str, Any], method: str, path: str, body: Any
) -> None:
    user: AccountSession = world["user"]
    names = world["names"]
    assert_refused(
        admin,
        method,
        fill(path, names),
        fill(body, names),
        403,
        ["needs an admin account"],
        client=user.client,
    )


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY, ids=ADMIN_ONLY_IDS)
@pytest.mark.parametrize("token", [None, "zgt_forged"], ids=["no-token", "unknown-token"])
def test_without_a_valid_token_gets_401(
    controller: LocalController,
    admin: AccountSession,
    world: dict[str, Any],
    token: str | None,
    method: str,
    path: str,
    body: Any,
) -> None:
    names = world["names"]
    fragment = "sign in first" if token is None else "token not recognised"
    with controller.client(token) as c:
        assert_refused(admin, method, fill(path, names), fill(body, names), 401, [fragment], client=c)
