"""The settings zerogate's firewalld zone and policy need, computed without a bus (no root needed)."""

from __future__ import annotations

from zerogate.netops.firewalld_plan import (
    close_port,
    plan_policy,
    plan_zone,
    plan_zone_removal,
    port_spec,
    reload_needed_for,
)

WG_PORTS = (51820, 53000)


def test_port_spec_writes_ranges_and_single_ports_as_firewalld_does() -> None:
    assert port_spec((51820, 53000)) == ("51820-53000", "udp")
    assert port_spec((51820, 51820)) == ("51820", "udp")


def test_plan_zone_creates_an_accepting_forwarding_zone_and_keeps_what_others_put_there() -> None:
    created = plan_zone(None, "zg0")
    assert created is not None
    assert (created["target"], created["forward"], created["interfaces"]) == (
        ("s", "ACCEPT"),
        ("b", True),
        ("as", ["zg0"]),
    )
    existing = {"target": ("s", "ACCEPT"), "forward": ("b", True), "interfaces": ("as", ["zg1"])}
    grown = plan_zone(existing, "zg0")
    assert grown is not None and grown["interfaces"] == ("as", ["zg1", "zg0"])
    assert plan_zone(grown, "zg0") is None  # already fits: nothing to send
    tampered = {**grown, "target": ("s", "%%REJECT%%"), "forward": ("b", False)}
    fixed = plan_zone(tampered, "zg1")
    assert fixed is not None and fixed["target"] == ("s", "ACCEPT") and fixed["forward"] == ("b", True)


def test_plan_policy_opens_our_ports_from_any_zone_before_the_zones_rules() -> None:
    created = plan_policy(None, WG_PORTS)
    assert created is not None
    assert created["ports"] == ("a(ss)", [("51820-53000", "udp")])
    assert (created["ingress_zones"], created["egress_zones"]) == (("as", ["ANY"]), ("as", ["HOST"]))
    assert created["priority"][1] < 0 and created["target"] == ("s", "CONTINUE")
    shared = plan_policy(created, (41641, 41641))
    assert shared is not None and shared["ports"][1] == [("51820-53000", "udp"), ("41641", "udp")]
    assert plan_policy(shared, WG_PORTS) is None
    assert plan_policy({**shared, "priority": ("i", 10)}, WG_PORTS) is not None


def test_removal_deletes_our_objects_only_once_nothing_else_is_in_them() -> None:
    ours = {"interfaces": ("as", ["zg0"])}
    assert plan_zone_removal(ours, "zg0") == "delete"
    shared = {"interfaces": ("as", ["zg1", "zg0"])}
    assert plan_zone_removal(shared, "zg0") == "remove-interface"
    assert plan_zone_removal(shared, "zg9") is None  # not ours: nothing to do
    with_source = {"interfaces": ("as", ["zg0"]), "sources": ("as", ["10.0.0.0/8"])}
    assert plan_zone_removal(with_source, "zg0") == "remove-interface"
    policy = {"ports": ("a(ss)", [("51820-53000", "udp"), ("41641", "udp")])}
    assert close_port(policy, ("41641", "udp")) == [("51820-53000", "udp")]
    assert close_port({"ports": ("a(ss)", [("41641", "udp")])}, ("41641", "udp")) == []
    assert close_port(policy, ("9999", "udp")) is None


def test_a_reload_is_needed_only_for_what_runtime_changes_cannot_bring() -> None:
    zone = {"target": ("s", "ACCEPT")}
    policy = {"priority": ("i", -1)}
    assert reload_needed_for(zone) == ""
    assert reload_needed_for(zone, policy, policy_wanted=True) == ""
    assert reload_needed_for(None) == "zone zerogate"
    assert reload_needed_for({"target": ("s", "default")}) == "the ACCEPT target of zone zerogate"
    assert reload_needed_for(zone, None, policy_wanted=True) == "policy zerogate-wg"
    assert (
        reload_needed_for(None, {"priority": ("i", 0)}, policy_wanted=True)
        == "zone zerogate and the priority of policy zerogate-wg"
    )
