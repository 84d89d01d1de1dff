"""Cloud security groups from a host ruleset: what AWS, Azure and Terraform outputs share (pure).

A security group is stateful and sees no interfaces, no forwarding and no source
ports; :func:`cloud_groups` keeps what it can and says what it could not keep.
"""

from __future__ import annotations

from dataclasses import dataclass

from zerogate.deploy.firewall.rendering import SHORT_NAMES
from zerogate.model.firewall import ANYWHERE, FirewallSpec, Hook, Network, PortRange, Proto, Role, Ruleset


@dataclass(frozen=True)
class CloudRule:
    """A security-group rule: stateful, no interfaces, no source ports; ``ports`` None = all."""

    ingress: bool
    proto: Proto
    ports: PortRange | None
    cidrs: tuple[Network, ...]
    why: str


def cloud_groups(rs: Ruleset) -> tuple[dict[str, list[CloudRule]], list[str]]:
    """The ruleset as security groups (one per network interface) plus what could not be kept."""
    spec = rs.spec
    if spec.role is Role.CLOUD:
        group_of = {spec.mgmt_interface: "mgmt", spec.service_interface: "service"}
        groups: dict[str, list[CloudRule]] = {"mgmt": [], "service": []}
    else:
        group_of, groups = {}, {SHORT_NAMES[spec.role]: []}
    default_group = next(iter(groups))
    notes: list[str] = []

    def add(group: str | None, cr: CloudRule) -> None:
        target = groups[group_of.get(group or "", default_group)]
        if not any(
            (c.ingress, c.proto, c.ports, c.cidrs) == (cr.ingress, cr.proto, cr.ports, cr.cidrs)
            for c in target
        ):
            target.append(cr)

    tunnel_only, forwards = False, False
    for rule in rs.rules:
        if rule.host_only:
            continue
        if rule.proto == "ping":  # only ever inside the tunnel, which a security group cannot see
            tunnel_only = True
            continue
        if rule.hook is Hook.INPUT:
            if rule.iif == spec.tunnel:
                tunnel_only = True
                continue
            add(rule.iif, CloudRule(True, rule.proto, rule.dport, rule.saddr or ANYWHERE, rule.why))
        elif rule.hook is Hook.OUTPUT:
            if rule.oif == spec.tunnel:
                tunnel_only = True
                continue
            ports = rule.dport
            if rule.sport and not rule.dport:
                notes.append(
                    f"a security group cannot match source ports: {rule.why!r} (source port {rule.sport}) "
                    f"is widened to all {rule.proto.upper()} ports out"
                )
            add(rule.oif, CloudRule(False, rule.proto, ports, rule.daddr or ANYWHERE, rule.why))
        else:
            if rule.iif == spec.tunnel and rule.oif == spec.tunnel:
                tunnel_only = True
                continue
            forwards = True
            if rule.iif != spec.tunnel:
                add(rule.iif, CloudRule(True, rule.proto, rule.dport, rule.saddr or ANYWHERE, rule.why))
            if rule.oif != spec.tunnel:
                add(rule.oif, CloudRule(False, rule.proto, rule.dport, rule.daddr or ANYWHERE, rule.why))
    if tunnel_only:
        notes.append(
            f"rules on the tunnel interface {spec.tunnel} cannot be expressed: a security group sees only "
            "the encrypted WireGuard UDP; render a host format (nftables) for them"
        )
    if forwards:
        notes.append(
            "this instance forwards packets: disable the source/destination check (AWS) or enable IP "
            "forwarding on the NIC (Azure); the interface binding and anti-spoofing of the host rules "
            "need a host format (nftables) as well"
        )
    return groups, notes


def group_name(spec: FirewallSpec, group: str) -> str:
    return f"zerogate-{spec.role}" if group == SHORT_NAMES[spec.role] else f"zerogate-{spec.role}-{group}"


def group_description(spec: FirewallSpec, group: str) -> str:
    if spec.role is Role.CLOUD:
        iface = spec.mgmt_interface if group == "mgmt" else spec.service_interface
        return f"zerogate cloud-connector {group} interface ({iface})"
    return f"zerogate {spec.role}"


def split_versions(nets: tuple[Network, ...]) -> tuple[list[str], list[str]]:
    return [str(n) for n in nets if n.version == 4], [str(n) for n in nets if n.version == 6]
