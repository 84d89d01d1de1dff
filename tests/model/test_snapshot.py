"""The typed, versioned config snapshot: what the controller builds is what a
device parses, other majors are refused with a message saying what to
upgrade, a newer minor's fields are ignored, bad types and shapes are refused
without echoing them, and a snapshot.json cached before versions still works."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from pydantic import ValidationError

from zerogate.model.snapshot import (
    SCHEMA_VERSION,
    ClientPeer,
    ClientSnapshot,
    ConnectorEntry,
    ConnectorGroupConfig,
    ConnectorSnapshot,
    GatewayConfig,
    GatewayEntry,
    GatewayGrant,
    GatewayPolicy,
    GatewaySnapshot,
    InvalidSnapshot,
    RevokedSnapshot,
    Snapshot,
    SnapshotError,
    UnsupportedSchema,
    parse_snapshot,
)

KEY = "A" * 43 + "="
EXPIRES = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def gateway_entry() -> GatewayEntry:
    return GatewayEntry(
        name="edge",
        endpoint="gw.example.test",
        port=51820,
        port_first=51820,
        port_last=51900,
        wg_public_key=KEY,
        tunnel_address="100.64.0.1",
    )


def built() -> dict[str, Snapshot]:
    """One snapshot per role, built from the same kinds of values the controller has
    (strings from the database, aware datetimes, compiled rules)."""
    grant = GatewayGrant.from_rules(
        7,
        "web and ssh",
        [IPv4Address("100.64.0.3"), "100.64.0.2"],
        [
            (IPv4Network("10.1.0.0/24"), "tcp", 80, 80),
            ("10.1.0.5/32", "tcp", 22, 22),
            ("10.1.0.0/25", "icmp", 0, 0),
            ("10.2.0.0/30", "any", 0, 65535),
        ],
    )
    gateway = GatewaySnapshot(
        revision=42,
        device_id=1,
        name="edge",
        gateway=GatewayConfig(
            name="edge", public_endpoint="gw.example.test", port_first=51820, port_last=51900
        ),
        tunnel_addresses=("100.64.0.1",),
        client_blocks=("100.64.0.0/16",),
        connectors=(
            ConnectorEntry(
                name="cn-a",
                device_id=10,
                wg_public_key=KEY,
                address="100.64.255.1",
                connector_group="site",
                subnets=("10.1.0.0/24",),
            ),
        ),
        clients=(
            ClientPeer(device_id=20, wg_public_key=KEY, address="100.64.0.2", session_expires_at=EXPIRES),
            ClientPeer(device_id=21, wg_public_key=KEY, address=None, session_expires_at=None),
        ),
        policy=GatewayPolicy(grants=(grant,), valid_until=EXPIRES + timedelta(hours=1)),
    )
    connector = ConnectorSnapshot(
        revision=42,
        device_id=10,
        name="cn-a",
        address="100.64.255.1",
        connector_group=ConnectorGroupConfig(
            name="site", subnets=("10.1.0.0/24",), snat=True, vrrp_virtual_ip="10.1.0.254"
        ),
        client_blocks=("100.64.0.0/16",),
        gateways=(gateway_entry(),),
    )
    client = ClientSnapshot(
        revision=42,
        device_id=20,
        name="laptop",
        address="100.64.0.2",
        session_expires_at=EXPIRES,
        gateways=(gateway_entry(),),
        routes=("10.1.0.5/32",),
        applications=("ssh", "web"),
    )
    return {"gateway": gateway, "connector": connector, "client": client}


def over_the_wire(snapshot: Snapshot) -> dict[str, Any]:
    """What the controller sends (its JSON body) as the device's HTTP client hands it over."""
    return dict(json.loads(json.dumps(snapshot.model_dump(mode="json"), sort_keys=True)))


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("role", ["gateway", "connector", "client"])
def test_what_the_controller_builds_is_what_the_device_parses(role: str) -> None:
    sent = built()[role]
    parsed = parse_snapshot(role, over_the_wire(sent))
    assert parsed == sent
    assert type(parsed) is type(sent) and parsed.schema_version == SCHEMA_VERSION == "1.2"
    assert over_the_wire(parsed) == over_the_wire(sent)  # and back to the same JSON


def test_the_json_keeps_the_keys_devices_read_and_the_times_as_before() -> None:
    wire = over_the_wire(built()["gateway"])
    assert set(wire) == {
        "schema_version", "revision", "role", "device_id", "name", "gateway", "tunnel_addresses",
        "client_blocks", "connectors", "clients", "policy",
    }  # fmt: skip
    assert wire["clients"][0]["session_expires_at"] == "2030-01-02T03:04:05.678000+00:00"  # isoformat()
    assert wire["clients"][0]["address"] == "100.64.0.2" and wire["client_blocks"] == ["100.64.0.0/16"]
    client = over_the_wire(built()["client"])
    assert client["routes"] == ["10.1.0.5/32"] and client["gateways"][0]["tunnel_address"] == "100.64.0.1"


def test_grants_arrive_as_the_disjoint_elements_of_the_gateways_sets() -> None:
    [grant] = over_the_wire(built()["gateway"])["policy"]["grants"]
    assert grant == {
        "policy_id": 7,
        "name": "web and ssh",
        "sources": ["100.64.0.3", "100.64.0.2"],
        # 10.1.0.5 is inside the /24: cut out with both ports, not overlapping
        "services": [
            "10.1.0.0-10.1.0.4 . tcp . 80",
            "10.1.0.5 . tcp . 22",
            "10.1.0.5 . tcp . 80",
            "10.1.0.6-10.1.0.255 . tcp . 80",
        ],
        "icmp": ["10.1.0.0-10.1.0.127"],
        "any_protocol": ["10.2.0.0-10.2.0.3"],
    }


def test_ipv6_destinations_are_left_out_of_the_grant() -> None:
    grant = GatewayGrant.from_rules(1, "v6", ["100.64.0.2"], [("fd00:1::/64", "tcp", 80, 80)])
    assert (grant.services, grant.icmp, grant.any_protocol) == ((), (), ())


def test_a_snapshot_is_a_frozen_value() -> None:
    snap = built()["client"]
    with pytest.raises(ValidationError):
        snap.revision = 43  # type: ignore[misc]


def test_the_revoked_marker_has_the_shape_the_daemons_were_given_before() -> None:
    marker = RevokedSnapshot.of(built()["connector"])
    assert marker.model_dump() == {
        "role": "connector",
        "device_id": 10,
        "name": "cn-a",
        "revision": -1,
        "revoked": True,
    }


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("role", "version", "message"),
    [
        (
            "connector",
            "2.0",
            "this connector understands snapshot schema 1.x; the controller sent 2.0: upgrade zerogate on this host",
        ),
        (
            "gateway",
            "17.3",
            "this gateway understands snapshot schema 1.x; the controller sent 17.3: upgrade zerogate on this host",
        ),
        (
            "client",
            "0.9",
            "this client understands snapshot schema 1.x; the controller sent 0.9: upgrade the controller",
        ),
    ],
)
def test_another_major_version_is_refused_saying_what_to_upgrade(
    role: str, version: str, message: str
) -> None:
    wire = over_the_wire(built()[role]) | {"schema_version": version}
    with pytest.raises(UnsupportedSchema) as refused:
        parse_snapshot(role, wire)
    assert str(refused.value) == message
    assert isinstance(refused.value, SnapshotError) and isinstance(refused.value, ValueError)


def test_a_newer_minor_is_accepted_and_its_new_fields_ignored() -> None:
    wire = over_the_wire(built()["gateway"])
    wire |= {"schema_version": "1.7", "mtu": 1380}
    wire["clients"][0]["hostname"] = "laptop-7"
    wire["policy"]["grants"][0]["log"] = True
    parsed = parse_snapshot("gateway", wire)
    assert parsed.schema_version == "1.7"
    assert parsed.clients == built()["gateway"].clients  # type: ignore[union-attr]


def test_an_unknown_field_of_this_minor_is_refused() -> None:
    for where in ("top", "nested"):
        wire = over_the_wire(built()["gateway"])
        (wire if where == "top" else wire["clients"][0])["mtu"] = 1380
        with pytest.raises(InvalidSnapshot, match="Extra inputs are not permitted"):
            parse_snapshot("gateway", wire)


def test_a_newer_minor_still_checks_the_fields_this_device_knows() -> None:
    wire = over_the_wire(built()["connector"]) | {"schema_version": "1.1", "revision": "42"}
    with pytest.raises(InvalidSnapshot, match="revision: Input should be a valid integer"):
        parse_snapshot("connector", wire)


@pytest.mark.parametrize("version", ["1", "1.0.1", "v1.0", "1.x", "", "1.0\n", "\u0661.\u0660", 1.0, None])
def test_a_malformed_schema_version_is_refused(version: object) -> None:
    wire = over_the_wire(built()["client"]) | {"schema_version": version}
    with pytest.raises(InvalidSnapshot, match=r"schema_version is not MAJOR\.MINOR"):
        parse_snapshot("client", wire)


# --------------------------------------------------------------------------- strict types


def test_each_role_gets_its_own_type_and_another_roles_snapshot_is_refused() -> None:
    with pytest.raises(InvalidSnapshot, match="the snapshot is for 'client', but this device is a gateway"):
        parse_snapshot("gateway", over_the_wire(built()["client"]))
    with pytest.raises(InvalidSnapshot, match="not a JSON object"):
        parse_snapshot("client", [over_the_wire(built()["client"])])
    with pytest.raises(ValueError, match="no snapshot type"):
        parse_snapshot("portal", {})


def change(wire: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: Any = wire
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return wire


@pytest.mark.parametrize(
    ("role", "path", "value"),
    [
        ("connector", "gateways.0.port", "51820"),  # a number as text
        ("connector", "gateways.0.port", 51820.0),
        ("connector", "gateways.0.port", 0),
        ("connector", "revision", True),
        ("connector", "connector_group.snat", 1),  # 1 is no boolean
        ("connector", "connector_group.snat", "true"),
        ("connector", "address", 1684340481),  # an address as a number
        ("connector", "address", "100.64.255.1/32"),
        ("connector", "client_blocks.0", "100.64.0.1/16"),  # host bits set
        ("connector", "connector_group.subnets", "10.1.0.0/24"),  # a list, not a string
        ("connector", "gateways.0.wg_public_key", KEY[:-1] + "\n"),  # a new line into wg's config
        ("connector", "gateways.0.endpoint", "gw.example.test\nPostUp = rm -rf /"),
        ("connector", "gateways.0.endpoint", "gw example"),
        ("client", "session_expires_at", "2030-01-02T03:04:05"),  # no time zone
        ("client", "session_expires_at", 1893553445),
        ("client", "routes.0", "10.1.0.5/33"),
        ("client", "applications", [1]),
        ("gateway", "policy.grants.0.services.0", "10.1.0.5 . tcp . 22 }; flush ruleset; #"),
        ("gateway", "policy.grants.0.services.0", "10.1.0.5 . sctp . 22"),
        ("gateway", "policy.grants.0.services.0", "10.1.0.5 . tcp . 65536"),
        ("gateway", "policy.grants.0.icmp.0", "10.1.0.0/25"),
        ("gateway", "policy.grants.0.sources.0", "100.64.0.2\n"),
        ("gateway", "policy.grants.0.sources.0", "100.64.0.256"),
        ("gateway", "clients.0.device_id", None),
        ("gateway", "policy", None),
    ],
)
def test_bad_types_and_shapes_are_refused(role: str, path: str, value: object) -> None:
    wire = change(over_the_wire(built()[role]), path, value)
    with pytest.raises(InvalidSnapshot) as refused:
        parse_snapshot(role, wire)
    message = str(refused.value)
    assert message.startswith(f"the {role} snapshot is not valid: {path}")
    if isinstance(value, str) and len(value) > 8:
        assert value not in message  # untrusted text is not echoed into logs


def test_a_missing_field_is_refused_and_the_error_lists_a_few() -> None:
    wire = over_the_wire(built()["gateway"])
    for name in ("clients", "connectors", "policy", "gateway", "tunnel_addresses"):
        del wire[name]
    with pytest.raises(InvalidSnapshot) as refused:
        parse_snapshot("gateway", wire)
    assert "Field required" in str(refused.value) and "(and 2 more)" in str(refused.value)


# --------------------------------------------------------------------------- cached before versions


def legacy(role: str) -> dict[str, Any]:
    """snapshot.json as a device cached it before schema versions: no schema_version,
    and a gateway's grants with their policy rules instead of set elements."""
    wire = over_the_wire(built()[role])
    del wire["schema_version"]
    if role == "gateway":
        wire["policy"]["grants"] = [
            {
                "policy_id": 7,
                "name": "web and ssh",
                "sources": ["100.64.0.3", "100.64.0.2"],
                "rules": [
                    ["10.1.0.0/24", "tcp", 80, 80],
                    ["10.1.0.5/32", "tcp", 22, 22],
                    ["10.1.0.0/25", "icmp", 0, 0],
                    ["10.2.0.0/30", "any", 0, 65535],
                    ["fd00:1::/64", "tcp", 80, 80],
                ],
            }
        ]
    return wire


@pytest.mark.parametrize("role", ["gateway", "connector", "client"])
def test_a_snapshot_cached_without_a_version_is_read_as_1_0(role: str) -> None:
    parsed = parse_snapshot(role, legacy(role))
    assert parsed.schema_version == "1.0"
    assert (
        parsed.model_copy(update={"schema_version": SCHEMA_VERSION}) == built()[role]
    )  # the same grants as now sent


def test_a_cached_legacy_grant_with_bad_rules_is_refused() -> None:
    for rules in ([["10.1.0.0/24", "tcp", "80", 80]], [["10.1.0.5/24", "tcp", 80, 80]], "all"):
        wire = legacy("gateway")
        wire["policy"]["grants"][0]["rules"] = rules
        with pytest.raises(InvalidSnapshot, match=r"policy\.grants\.0"):
            parse_snapshot("gateway", wire)


def test_rules_are_only_read_from_a_document_without_a_version() -> None:
    wire = legacy("gateway") | {"schema_version": "1.0"}
    with pytest.raises(InvalidSnapshot, match=r"policy\.grants\.0\.services: Field required"):
        parse_snapshot("gateway", wire)


def segment_wire() -> dict[str, Any]:
    rule = {"rule_id": 1, "action": "accept", "protocol": "tcp", "port_first": 80, "port_last": 80}
    asset = {
        "asset_id": 7,
        "name": "web-1",
        "address": "192.0.2.10",
        "ssh_port": 22,
        "ssh_user": "zerogate-segment",
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKk4w0o0Sx3m8Hn7c1bVtq4fXc9o0C8w9h3G0dY9n1aB",
        "mode": "protected",
        "rules_revision": 3,
        "rules": [{**rule, "sources": ["198.51.100.0/24", "2001:db8::/64"]}],
        "jump_hosts": ["203.0.113.5/32"],
    }
    return {"role": "segment", "revision": 4, "device_id": 9, "name": "seg-1", "assets": [asset]}


def test_a_segment_snapshot_parses_and_round_trips() -> None:
    snap = parse_snapshot("segment", segment_wire())
    assert snap.assets[0].rules[0].sources[1].version == 6
    assert parse_snapshot("segment", over_the_wire(snap)) == snap


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("assets.0.name", "web 1; rm -rf /"),  # not a host name
        ("assets.0.name", "web-1\n"),  # a trailing newline is no match
        ("assets.0.ssh_user", "Root"),
        ("assets.0.host_key", "ssh-ed25519 AAAA\nssh-rsa AAAA"),  # one key line, nothing more
        ("assets.0.mode", "enforcing"),
        ("assets.0.address", 3221225994),  # a number is no address
        ("assets.0.rules.0.port_first", "80"),
    ],
)
def test_a_segment_snapshot_refuses_what_would_reach_a_command_line(path: str, value: object) -> None:
    wire = segment_wire()
    node: Any = wire
    *parents, last = path.split(".")
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[last] = value
    with pytest.raises(InvalidSnapshot):
        parse_snapshot("segment", wire)
