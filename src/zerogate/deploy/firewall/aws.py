"""AWS output: security groups as JSON in the EC2 ``IpPermissions`` shape (pure)."""

from __future__ import annotations

import json
from typing import Any

from zerogate.deploy.firewall.cloud import (
    CloudRule,
    cloud_groups,
    group_description,
    group_name,
    split_versions,
)
from zerogate.deploy.firewall.rendering import Rendering
from zerogate.deploy.firewall.spec import Format
from zerogate.model.firewall import FirewallSpec, PortRange, Ruleset


def render_aws(rs: Ruleset) -> Rendering:
    groups, cloud_notes = cloud_groups(rs)
    notes = [
        *rs.notes,
        *cloud_notes,
        "a new AWS security group allows all egress by default: revoke that rule (IpProtocol -1, "
        "0.0.0.0/0) so only the egress below remains",
    ]
    doc: dict[str, Any] = {"SecurityGroups": [_aws_group(rs.spec, g, rules) for g, rules in groups.items()]}
    text = json.dumps(doc, indent=2) + "\n"
    return Rendering(Format.AWS_SG, ((f"zerogate-{rs.spec.role}.aws-sg.json", text),), tuple(notes))


def _aws_permission(cr: CloudRule) -> dict[str, Any]:
    perm: dict[str, Any] = {"IpProtocol": "-1" if cr.proto == "any" else cr.proto}
    if cr.proto != "any":
        ports = cr.ports or PortRange(0, 65535)
        perm["FromPort"], perm["ToPort"] = ports.first, ports.last
    v4, v6 = split_versions(cr.cidrs)
    perm["IpRanges"] = [{"CidrIp": c, "Description": cr.why} for c in v4]
    perm["Ipv6Ranges"] = [{"CidrIpv6": c, "Description": cr.why} for c in v6]
    return perm


def _aws_group(spec: FirewallSpec, group: str, rules: list[CloudRule]) -> dict[str, Any]:
    return {
        "GroupName": group_name(spec, group),
        "Description": group_description(spec, group),
        "IpPermissions": [_aws_permission(r) for r in rules if r.ingress],
        "IpPermissionsEgress": [_aws_permission(r) for r in rules if not r.ingress],
    }
