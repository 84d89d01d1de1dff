"""Terraform output: ``aws_security_group`` resources, one per network interface (pure)."""

from __future__ import annotations

import json

from zerogate.deploy.firewall.cloud import (
    CloudRule,
    cloud_groups,
    group_description,
    group_name,
    split_versions,
)
from zerogate.deploy.firewall.rendering import Rendering, header
from zerogate.deploy.firewall.spec import Format
from zerogate.model.firewall import PortRange, Ruleset


def render_terraform(rs: Ruleset) -> Rendering:
    groups, cloud_notes = cloud_groups(rs)
    notes = [*rs.notes, *cloud_notes]
    text = _terraform(rs, groups, notes)
    return Rendering(Format.TERRAFORM, ((f"zerogate-{rs.spec.role}.tf", text),), tuple(notes))


def _hcl_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _terraform(rs: Ruleset, groups: dict[str, list[CloudRule]], notes: list[str]) -> str:
    how = [
        "Terraform: aws_security_group resources, one per network interface. Terraform removes AWS's",
        "default allow-all egress rule, so only the egress blocks below remain.",
    ]
    out = [
        header(rs, Format.TERRAFORM, how, notes),
        '\nvariable "vpc_id" {\n  description = "VPC to create the security groups in"\n'
        "  type        = string\n}\n",
    ]
    for group, rules in groups.items():
        name = group_name(rs.spec, group)
        out.append(f'\nresource "aws_security_group" "{name.replace("-", "_")}" {{\n')
        out.append(f'  name        = "{name}"\n  description = "{group_description(rs.spec, group)}"\n')
        out.append("  vpc_id      = var.vpc_id\n")
        for ingress in (True, False):
            kind = "ingress" if ingress else "egress"
            chosen = [r for r in rules if r.ingress is ingress]
            if not chosen:
                out.append(f"\n  {kind} = []\n")
            for cr in chosen:
                ports = cr.ports or PortRange(0, 65535)
                first, last = (0, 0) if cr.proto == "any" else (ports.first, ports.last)
                v4, v6 = split_versions(cr.cidrs)
                block: list[tuple[str, str]] = [
                    ("description", json.dumps(cr.why)),
                    ("protocol", '"-1"' if cr.proto == "any" else f'"{cr.proto}"'),
                    ("from_port", str(first)),
                    ("to_port", str(last)),
                ]
                block += [("cidr_blocks", _hcl_list(v4))] if v4 else []
                block += [("ipv6_cidr_blocks", _hcl_list(v6))] if v6 else []
                width = max(len(k) for k, _ in block)
                lines = [f"    {k.ljust(width)} = {v}\n" for k, v in block]
                out.append(f"\n  {kind} {{\n" + "".join(lines) + "  }\n")
        out.append(
            f'\n  tags = {{\n    Name            = "{name}"\n'
            f'    "zerogate-role" = "{rs.spec.role}"\n  }}\n}}\n'
        )
    return "".join(out)
