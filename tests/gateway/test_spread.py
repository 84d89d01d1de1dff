"""Active-active groups on the gateway: the bucket table (a lost or draining member
moves only its own share), the per-connector links and the tables nft accepts, and
the daemon re-spreading on probe results (against an in-memory data plane)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fakedataplane import FakeDataplane
from zerogate.agent.state import DeviceIdentity
from zerogate.gateway import daemon as gateway_daemon
from zerogate.gateway.daemon import Gateway
from zerogate.gateway.plan import choose_active, plan_gateway, render_gateway_nft
from zerogate.gateway.spread import (
    BUCKETS,
    SpreadPlan,
    bucket_table,
    link_name,
    plan_spread,
    render_spread_table,
)
from zerogate.model.snapshot import ConnectorEntry, GatewaySnapshot, RevokedSnapshot, parse_snapshot
from zerogate.netops import links, nftables
from zerogate.netops.wireguard import PeerStatus

SUBNET = "10.1.0.0/24"


def key(n: int) -> str:
    return f"{n:0>43}="


def entry(name: str, n: int, slot: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "device_id": n,
        "wg_public_key": key(n),
        "address": f"100.64.255.{n}",
        "connector_group": "site" if slot is not None else "other",
        "subnets": [SUBNET] if slot is not None else ["10.2.0.0/24"],
        "slot": slot,
        "listen_port": 51821 + slot if slot is not None else None,
        **extra,
    }


def snapshot(*connectors: dict[str, Any]) -> GatewaySnapshot:
    data: dict[str, Any] = {
        "revision": 3,
        "role": "gateway",
        "device_id": 1,
        "name": "gw1",
        "gateway": {
            "name": "gw1",
            "public_endpoint": "gw.example.test",
            "port_first": 51820,
            "port_last": 53000,
        },
        "tunnel_addresses": ["100.64.0.1"],
        "client_blocks": ["100.64.0.0/16"],
        "connectors": list(connectors),
        "clients": [
            {"device_id": 20, "wg_public_key": key(20), "address": "100.64.0.2", "session_expires_at": None}
        ],
        "policy": {"grants": [], "valid_until": None},
    }
    return parse_snapshot("gateway", data)


TRIO = (entry("cn1", 10, 1), entry("cn2", 11, 2), entry("cn3", 12, 3))


def members(*extra: dict[str, Any]) -> tuple[ConnectorEntry, ...]:
    return snapshot(*TRIO, *extra).connectors


def test_buckets_spread_over_all_and_a_lost_member_moves_only_its_own() -> None:
    trio = members()
    full = bucket_table(trio, {"cn1", "cn2", "cn3"})
    assert len(full) == BUCKETS and all(full.count(s) >= BUCKETS // 6 for s in (1, 2, 3)), full
    without_1 = bucket_table(trio, {"cn2", "cn3"})
    assert set(without_1) == {2, 3}
    assert all(after == before for before, after in zip(full, without_1, strict=True) if before != 1)
    # it comes back: it takes back exactly its buckets, the others are not disturbed
    assert bucket_table(trio, {"cn1", "cn2", "cn3"}) == full


def test_a_draining_member_gets_no_buckets_unless_it_is_all_there_is() -> None:
    trio = snapshot(entry("cn1", 10, 1), entry("cn2", 11, 2, draining=True), entry("cn3", 12, 3)).connectors
    up = {"cn1", "cn2", "cn3"}
    assert set(bucket_table(trio, up)) == {1, 3}
    assert set(bucket_table(trio, {"cn2"})) == {2}  # the only one up: it serves
    assert set(bucket_table(trio, set())) == {1, 3}  # none up yet: the non-draining ones


def test_active_active_connectors_get_their_own_links_not_main_peers() -> None:
    snap = snapshot(*TRIO, entry("solo", 13))
    plan = plan_gateway(snap, interface="zg7gw", now=snap_time(), active={"other": "solo"}, up={"cn1", "cn2"})
    assert [p.public_key for p in plan.peers] == [key(20), key(13)]  # the client and the standby group
    assert plan.routes == ("10.2.0.0/24",)
    assert [(link.interface, link.listen_port, link.slot) for link in plan.spread.links] == [
        ("zg7gwa1", 51822, 1),
        ("zg7gwa2", 51823, 2),
        ("zg7gwa3", 51824, 3),
    ]
    first = plan.spread.links[0]
    assert first.peer.allowed_ips == ("100.64.255.10/32", SUBNET) and first.addresses == ("100.64.0.1/32",)
    assert set(plan.spread.groups[0].buckets) == {1, 2}  # cn3 does not answer probes
    assert 'iifname { "zg7gw", "zg7gwa1", "zg7gwa2", "zg7gwa3" } jump from_tunnel' in plan.nft_body.text
    assert choose_active(snap.connectors, {"cn1", "cn2", "solo"}, {}) == {"other": "solo"}


def snap_time() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


def test_link_names_fit_and_differ() -> None:
    names = {link_name("zerogate-gw-01", s) for s in range(1, 256)}
    assert len(names) == 255 and all(len(n) <= 15 for n in names)
    assert link_name("zg0", 7) == "zg0a7"


def test_the_tables_are_what_nft_accepts() -> None:
    """``nft -c``: the spread table and the policy table with links load as rendered."""
    plan = plan_spread("zg0", members(), {"cn1", "cn2", "cn3"})
    text = plan.nft_text
    assert (
        'iifname "zg0" ct state new ip daddr { 10.1.0.0/24 } ct mark and 0xff000000 == 0 jump group_0' in text
    )
    assert "ct mark set ct mark and 0x00ffffff or 0x02000000" in text  # the flow recorder's bits kept
    assert "meta mark set ct mark and 0xff000000" in text
    nftables.check(nftables.replace_table_script("inet", "zerogate_spread", text))
    policy = render_gateway_nft("zg0", ["100.64.0.2"], [], ["100.64.0.1"], plan.interfaces)
    nftables.check(nftables.replace_table_script("inet", "zerogate_check", policy))
    assert render_spread_table("zg0", []).count("chain") == 1


class FakeSpread:
    def __init__(self) -> None:
        self.plans: list[SpreadPlan] = []
        self.teardowns = 0

    def apply(self, plan: SpreadPlan) -> None:
        self.plans.append(plan)

    def status(self) -> list[PeerStatus]:
        return []

    def teardown(self) -> None:
        self.teardowns += 1


def test_the_daemon_respreads_when_a_member_goes_down_and_logs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(links, "enable_forwarding", lambda: None)
    monkeypatch.setattr(gateway_daemon, "nudge", lambda addresses: None)
    caplog.set_level(logging.INFO, logger=gateway_daemon.__name__)
    identity = DeviceIdentity(tmp_path, "gateway", "gw1", 1, "https://127.0.0.1:1", b"", "zgd_x", "k")
    spread = FakeSpread()
    gw = Gateway(identity, FakeDataplane(), spread=spread)
    gw.apply(snapshot(*TRIO))
    gw.set_live_connectors({"cn1", "cn2", "cn3"})
    full = spread.plans[-1].groups[0].buckets
    assert set(full) == {1, 2, 3}
    gw.set_live_connectors({"cn2", "cn3"})
    moved = spread.plans[-1].groups[0].buckets
    assert set(moved) == {2, 3} and all(a == b for a, b in zip(full, moved, strict=True) if a != 1)
    assert "active-active group site: new flows spread over cn2" in caplog.text
    peers = {p["name"]: p for p in gw.report()["peers"] if p.get("role") == "connector"}
    assert peers == {}  # the fake spread reports no peers; the main interface has none of them
    gw.apply(RevokedSnapshot(role="gateway", device_id=1, name="gw1"))
    assert spread.teardowns == 1
