"""What zerogate's firewalld zone and policy must hold: pure settings computations.

firewalld must accept zerogate's traffic itself (an accept in our own nftables
table cannot overrule a reject in firewalld's; see :mod:`zerogate.netops.firewalld`),
through two objects named after us:

* zone ``zerogate``: target ACCEPT, forwarding on, holding the tunnel
  interface. It is the ingress zone of everything that comes out of the
  tunnel, so firewalld accepts that traffic for the host (probes over the
  tunnel) and for forwarding (tunnel to the site LAN on a connector, tunnel to
  tunnel on a gateway). Replies from the LAN are ``ct state established``,
  which firewalld accepts before it looks at zones. firewalld deliberately does
  no filtering on the tunnel: which subnets, which client addresses,
  anti-spoofing are enforced by our own table, which still sees every packet
  and can still drop it.
* policy ``zerogate-wg``: ingress ANY, egress HOST, our WireGuard UDP port(s),
  priority -1. A policy and not a port in the default zone, because WireGuard
  arrives on whichever interface faces the internet, and that interface can be
  in any zone (the default zone only covers interfaces no zone claims). A
  negative priority runs it before every zone's own rules.


:mod:`zerogate.netops.firewalld` reads an object's settings over D-Bus, asks
:func:`plan_zone` / :func:`plan_policy` (or, to take ours away again,
:func:`plan_zone_removal` / :func:`close_port`) what they must become, and
writes only when there is a change. Settings are firewalld's ``a{sv}``
dictionaries as jeepney passes them both ways (name -> (D-Bus signature,
value)); whatever other programs put into our objects is kept. No I/O here,
so the planning is tested without a bus or root.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "POLICY",
    "POLICY_PRIORITY",
    "ZONE",
    "Settings",
    "close_port",
    "open_ports",
    "plan_policy",
    "plan_zone",
    "plan_zone_removal",
    "port_spec",
    "reload_needed_for",
    "setting",
]

ZONE = "zerogate"
POLICY = "zerogate-wg"
POLICY_PRIORITY = -1

# a{sv} as jeepney passes it both ways: name -> (D-Bus signature, value)
Settings = dict[str, tuple[str, Any]]


def port_spec(ports: tuple[int, int]) -> tuple[str, str]:
    """(port, protocol) as firewalld writes it: ``("51820-53000", "udp")`` or ``("51820", "udp")``."""
    low, high = ports
    return (str(low) if low == high else f"{low}-{high}", "udp")


def setting(settings: Settings | None, key: str, default: Any) -> Any:
    """The value of ``key`` in ``settings``, or ``default`` when it is absent (or there are none)."""
    if settings is None or key not in settings:
        return default
    return settings[key][1]


def open_ports(settings: Settings | None) -> list[tuple[Any, ...]]:
    """The (port, protocol) pairs a policy opens (jeepney gives D-Bus structs as tuples)."""
    return [tuple(p) for p in setting(settings, "ports", [])]


def plan_zone(current: Settings | None, interface: str) -> Settings | None:
    """The settings zone ``zerogate`` needs (keeping whatever else it has), or None if it fits."""
    interfaces = list(setting(current, "interfaces", []))
    wanted: Settings = dict(current or {})
    if current is None:
        wanted["short"] = ("s", "zerogate")
        wanted["description"] = (
            "s",
            "zerogate tunnel interfaces. Accepts input and forwarding from them; the zerogate "
            "nftables table does the filtering. Managed by zerogate.",
        )
    wanted["target"] = ("s", "ACCEPT")
    wanted["forward"] = ("b", True)
    if interface not in interfaces:
        interfaces.append(interface)
    wanted["interfaces"] = ("as", interfaces)
    return None if current is not None and wanted == current else wanted


def plan_policy(current: Settings | None, wanted_ports: tuple[int, int]) -> Settings | None:
    """The settings policy ``zerogate-wg`` needs to open ``wanted_ports``, or None if it fits."""
    ports = open_ports(current)
    wanted: Settings = dict(current or {})
    if current is None:
        wanted["short"] = ("s", "zerogate WireGuard")
        wanted["description"] = ("s", "WireGuard UDP ports of zerogate, from any zone. Managed by zerogate.")
        wanted["target"] = ("s", "CONTINUE")
    if setting(current, "priority", 0) >= 0:
        wanted["priority"] = ("i", POLICY_PRIORITY)  # before the zones' own rules
    wanted["ingress_zones"] = ("as", ["ANY"])
    wanted["egress_zones"] = ("as", ["HOST"])
    if port_spec(wanted_ports) not in ports:
        ports.append(port_spec(wanted_ports))
    wanted["ports"] = ("a(ss)", ports)
    return None if current is not None and wanted == current else wanted


def plan_zone_removal(current: Settings, interface: str) -> Literal["delete", "remove-interface"] | None:
    """What taking ``interface`` out of zone ``zerogate`` takes: deleting the zone once
    nothing (no interface, no source) is left in it, removing the interface, or nothing."""
    interfaces = list(setting(current, "interfaces", []))
    remaining = [i for i in interfaces if i != interface]
    if not remaining and not setting(current, "sources", []):
        return "delete"
    return "remove-interface" if remaining != interfaces else None


def close_port(current: Settings | None, spec: tuple[str, str]) -> list[tuple[Any, ...]] | None:
    """The ports policy ``zerogate-wg`` keeps open once ``spec`` is closed; None if it is not open."""
    ports = open_ports(current)
    if spec not in ports:
        return None
    ports.remove(spec)
    return ports


def reload_needed_for(
    zone: Settings | None, policy: Settings | None = None, *, policy_wanted: bool = False
) -> str:
    """What firewalld's runtime lacks that only a reload (from the permanent configuration)
    can bring, given the runtime zone and policy settings (None: the object is missing);
    empty when nothing. Runtime changes cannot create objects, set a zone's target or a
    policy's priority."""
    missing: list[str] = []
    if zone is None:
        missing.append(f"zone {ZONE}")
    elif setting(zone, "target", "") != "ACCEPT":
        missing.append(f"the ACCEPT target of zone {ZONE}")
    if policy_wanted:
        if policy is None:
            missing.append(f"policy {POLICY}")
        elif setting(policy, "priority", 0) >= 0:
            missing.append(f"the priority of policy {POLICY}")
    return " and ".join(missing)
