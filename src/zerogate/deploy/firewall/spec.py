"""Options of ``zerogate firewall render``: parsed once into a frozen :class:`FirewallSpec`.

Errors: :class:`FirewallSpecError` (a ``ValueError``) for a bad option or a
role/format pair that makes no sense; its message names the option and the fix.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from enum import StrEnum

from zerogate.model.firewall import FirewallSpec, Network, PortRange, Role
from zerogate.netops.wireguard import DEFAULT_INTERFACES

NFT_TABLE = "inet zerogate_host"
DEFAULT_PORT_RANGE = "51820-53000"
DEFAULT_CONTROLLER_PORT = 443
DEFAULT_MGMT_INTERFACE = "eth0"
DEFAULT_SERVICE_INTERFACE = "eth1"
RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


class FirewallSpecError(ValueError):
    """A bad option or role/format pair; the message says what to change."""


class Format(StrEnum):
    NFTABLES = "nftables"
    IPTABLES = "iptables"
    FIREWALLD = "firewalld"
    AWS_SG = "aws-sg"
    AZURE_NSG = "azure-nsg"
    TERRAFORM = "terraform"


CLOUD_FORMATS = frozenset({Format.AWS_SG, Format.AZURE_NSG, Format.TERRAFORM})


def default_tunnel(role: Role) -> str:
    """The tunnel interface the role's daemon (or client) creates unless told otherwise."""
    if role is Role.CLIENT:
        return DEFAULT_INTERFACES["client"]
    return DEFAULT_INTERFACES["gateway" if role is Role.GATEWAY else "connector"]


def command_line(spec: FirewallSpec, fmt: Format) -> str:
    """The ``zerogate firewall render`` line that reproduces this rendering."""
    args = ["zerogate firewall render", f"--role {spec.role}", f"--format {fmt}"]
    if spec.role is not Role.CLIENT:
        args += [f"--port-range {spec.port_range}", f"--controller-port {spec.controller_port}"]
    args.append(f"--tunnel-interface {spec.tunnel}")
    if spec.role is Role.CLOUD:
        args += [
            f"--mgmt-interface {spec.mgmt_interface}",
            f"--service-interface {spec.service_interface}",
        ]
        args += [f"--local-range {n}" for n in spec.local_ranges]
    if spec.allow_ssh:
        args.append("--allow-ssh")
    args += [f"--mgmt-cidr {n}" for n in spec.mgmt_cidrs]
    args += [f"--subnet {n}" for n in spec.subnets]
    return " ".join(args)


# Which options mean something for which role (others are refused, so a typo'd intent is not lost).
_APPLIES: dict[str, frozenset[Role]] = {
    "--port-range": frozenset({Role.GATEWAY, Role.CONNECTOR, Role.CLOUD}),
    "--controller-port": frozenset({Role.GATEWAY, Role.CONNECTOR, Role.CLOUD}),
    "--local-range": frozenset({Role.CLOUD}),
    "--subnet": frozenset({Role.CONNECTOR, Role.CLOUD}),
    "--mgmt-interface": frozenset({Role.CLOUD}),
    "--service-interface": frozenset({Role.CLOUD}),
    "--allow-ssh": frozenset({Role.CLIENT}),
}


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise FirewallSpecError(
            f"--role {text!r} is not a role: use one of {', '.join(r.value for r in Role)}"
        ) from None


def parse_port_range(text: str) -> PortRange:
    m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", text)
    if not m:
        raise FirewallSpecError(f"--port-range {text!r}: write it as FIRST-LAST, e.g. {DEFAULT_PORT_RANGE}")
    first, last = int(m.group(1)), int(m.group(2))
    if not (1 <= first <= 65535 and 1 <= last <= 65535):
        raise FirewallSpecError(f"--port-range {text!r}: ports must be between 1 and 65535")
    if last <= first:
        raise FirewallSpecError(
            f"--port-range {text!r}: needs at least two ports, FIRST < LAST (WireGuard listens on the "
            f"first, the reachability probe answers on the next), e.g. {DEFAULT_PORT_RANGE}"
        )
    return PortRange(first, last)


def parse_port(value: int, option: str) -> int:
    if not 1 <= value <= 65535:
        raise FirewallSpecError(f"{option} {value}: a port is a number between 1 and 65535")
    return value


def parse_interface(text: str, option: str) -> str:
    if not _IFNAME.fullmatch(text):
        raise FirewallSpecError(
            f"{option} {text!r} is not a Linux interface name: 1-15 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return text


def parse_networks(values: Sequence[str], option: str) -> tuple[Network, ...]:
    """CIDRs in the order given, duplicates removed; host bits set is an error with the fix."""
    nets: list[Network] = []
    for raw in values:
        text = raw.strip()
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise FirewallSpecError(
                    f"{option} {raw!r} is not an IP network: write ADDRESS/PREFIX, e.g. 10.1.0.0/24"
                ) from None
            raise FirewallSpecError(f"{option} {raw!r} has host bits set: did you mean {loose}?") from None
        if net not in nets:
            nets.append(net)
    return tuple(nets)


def parse_spec(
    role: Role | str,
    *,
    port_range: str | None = None,
    controller_port: int | None = None,
    tunnel_interface: str | None = None,
    mgmt_cidrs: Sequence[str] = (),
    local_ranges: Sequence[str] = (),
    subnets: Sequence[str] = (),
    mgmt_interface: str | None = None,
    service_interface: str | None = None,
    allow_ssh: bool = False,
) -> FirewallSpec:
    """Validate user strings once; ``None`` / empty means "not given" (the default applies)."""
    role = role if isinstance(role, Role) else parse_role(role)
    given = {
        "--port-range": port_range is not None,
        "--controller-port": controller_port is not None,
        "--local-range": bool(local_ranges),
        "--subnet": bool(subnets),
        "--mgmt-interface": mgmt_interface is not None,
        "--service-interface": service_interface is not None,
        "--allow-ssh": allow_ssh,
    }
    for option, is_given in given.items():
        if is_given and role not in _APPLIES[option]:
            users = ", ".join(sorted(r.value for r in _APPLIES[option]))
            raise FirewallSpecError(f"{option} does not apply to --role {role} (only to: {users}); drop it")
    spec = FirewallSpec(
        role=role,
        port_range=parse_port_range(port_range or DEFAULT_PORT_RANGE),
        controller_port=parse_port(
            DEFAULT_CONTROLLER_PORT if controller_port is None else controller_port, "--controller-port"
        ),
        tunnel=parse_interface(tunnel_interface or default_tunnel(role), "--tunnel-interface"),
        mgmt_cidrs=parse_networks(mgmt_cidrs, "--mgmt-cidr"),
        local_ranges=parse_networks(local_ranges or RFC1918, "--local-range"),
        subnets=parse_networks(subnets, "--subnet"),
        mgmt_interface=parse_interface(mgmt_interface or DEFAULT_MGMT_INTERFACE, "--mgmt-interface"),
        service_interface=parse_interface(
            service_interface or DEFAULT_SERVICE_INTERFACE, "--service-interface"
        ),
        allow_ssh=allow_ssh,
    )
    if role is Role.CONNECTOR and not spec.subnets:
        raise FirewallSpecError(
            "--role connector needs at least one --subnet (a subnet this connector fronts), "
            "e.g. --subnet 10.1.0.0/24: forwarding is allowed only to those"
        )
    if role is Role.CLIENT and spec.mgmt_cidrs and not allow_ssh:
        raise FirewallSpecError("--mgmt-cidr limits who may use SSH: add --allow-ssh, or drop --mgmt-cidr")
    if role is Role.CLOUD:
        names = [spec.mgmt_interface, spec.service_interface, spec.tunnel]
        if len(set(names)) != 3:
            raise FirewallSpecError(
                f"--mgmt-interface {spec.mgmt_interface}, --service-interface {spec.service_interface} and "
                f"--tunnel-interface {spec.tunnel} must be three different interfaces"
            )
    return spec


def check_combination(role: Role, fmt: Format) -> None:
    """Refuse pairs that make no sense (an endpoint has no cloud security group)."""
    if role is Role.CLIENT and fmt in CLOUD_FORMATS:
        raise FirewallSpecError(
            f"--format {fmt} describes a cloud security group, but --role client-hardening hardens an "
            "endpoint's own firewall: use --format nftables, iptables or firewalld"
        )
