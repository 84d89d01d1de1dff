"""``zerogate firewall render``: print a role's firewall rules for a host or cloud target.

The rules come from :mod:`zerogate.deploy.firewall` (pure); this module only
parses options, writes the result and prints what the target cannot express as
notes on standard error. Nothing is written unless rendering worked.
:mod:`zerogate.cli.firewall` registers :func:`render_command`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import typer
from rich.markup import escape

from zerogate.cli.common import err, errors_to_exit, fail
from zerogate.deploy.firewall import (
    DEFAULT_PORT_RANGE,
    NFT_TABLE,
    RFC1918,
    Format,
    Rendering,
    Role,
    parse_spec,
    render,
)

EPILOG = (
    "Roles: gateway: UDP port range in, SSH from --mgmt-cidr, forwarding tunnel to tunnel, controller out. "
    "connector: no inbound port; out only controller TLS, UDP to the gateway range, DNS, NTP; forwards only "
    "from the tunnel to --subnet. client-hardening: drops all inbound but loopback, tunnel, DHCP, "
    "replies and optional SSH. cloud-connector: SSH in on the management interface from --mgmt-cidr; "
    "DNS, TLS/DTLS 443, NTP and the gateway range out; the service interface accepts only --local-range "
    "sources (anti-spoofing)."
    "\n\n"
    f"Formats: nftables: own table {NFT_TABLE}, atomic, load with nft -f. iptables: iptables-restore "
    "--noflush, own ZEROGATE-* chains, IPv4 only. firewalld: zone and policy XML files (--output is then a "
    "directory such as /etc/firewalld). aws-sg: security group JSON in the EC2 IpPermissions shape. "
    "azure-nsg: ARM template. terraform: aws_security_group. Cloud formats cannot express interfaces, "
    "forwarding or source ports; notes on standard error say what was left to the host rules. "
    "client-hardening has no cloud format."
)


def render_command(
    role: Role = typer.Option(..., "--role", help="What the host is."),
    fmt: Format = typer.Option(..., "--format", help="Target firewall or cloud format."),
    port_range: str | None = typer.Option(
        None,
        "--port-range",
        help="Gateway UDP port range FIRST-LAST; WireGuard on the first port, the reachability probe on the "
        f"next (default {DEFAULT_PORT_RANGE}).",
        metavar="FIRST-LAST",
    ),
    controller_port: int | None = typer.Option(
        None, "--controller-port", help="Controller TCP port (default 443).", metavar="PORT"
    ),
    tunnel_interface: str | None = typer.Option(
        None,
        "--tunnel-interface",
        help="Tunnel interface (default: the role's, zg-gw, zg-cn or zg-cl).",
        metavar="IFACE",
    ),
    mgmt_cidr: list[str] | None = typer.Option(
        None,
        "--mgmt-cidr",
        help="Network allowed to SSH in (repeatable). None given: SSH is blocked.",
        metavar="CIDR",
    ),
    local_range: list[str] | None = typer.Option(
        None,
        "--local-range",
        help=f"cloud-connector: local source range (repeatable; default {', '.join(RFC1918)}).",
        metavar="CIDR",
    ),
    subnet: list[str] | None = typer.Option(
        None,
        "--subnet",
        help="Subnet the connector fronts (repeatable; required for connector).",
        metavar="CIDR",
    ),
    mgmt_interface: str | None = typer.Option(
        None,
        "--mgmt-interface",
        help="cloud-connector: management interface (default eth0).",
        metavar="IFACE",
    ),
    service_interface: str | None = typer.Option(
        None,
        "--service-interface",
        help="cloud-connector: service interface (default eth1).",
        metavar="IFACE",
    ),
    allow_ssh: bool = typer.Option(
        False, "--allow-ssh", help="client-hardening: allow inbound SSH (from --mgmt-cidr if given)."
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Write here instead of standard output (firewalld: a directory).",
        metavar="PATH",
    ),
) -> None:
    """Render the firewall rules a role needs, for nftables, iptables, firewalld or a cloud security group."""
    with errors_to_exit():
        spec = parse_spec(
            role,
            port_range=port_range,
            controller_port=controller_port,
            tunnel_interface=tunnel_interface,
            mgmt_cidrs=mgmt_cidr or (),
            local_ranges=local_range or (),
            subnets=subnet or (),
            mgmt_interface=mgmt_interface,
            service_interface=service_interface,
            allow_ssh=allow_ssh,
        )
        rendering = render(spec, fmt)
    if output is None:
        sys.stdout.write(rendering.text)
    else:
        with errors_to_exit():
            written = _write(rendering, output)
        for path in written:
            err.print(f"wrote {path}", highlight=False)
    for note in rendering.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def _write(rendering: Rendering, output: Path) -> list[Path]:
    """Write the file(s), each atomically (temporary file, then rename)."""
    if rendering.fmt is Format.FIREWALLD:
        if output.exists() and not output.is_dir():
            fail(f"--output {output}: firewalld output is several files, so --output must be a directory")
        targets = [(output / name, content) for name, content in rendering.files]
    else:
        if output.is_dir():
            fail(f"--output {output} is a directory: give a file name, e.g. {output / rendering.files[0][0]}")
        targets = [(output, rendering.files[0][1])]
    for path, _ in targets:
        if not path.parent.is_dir() and path.parent.exists():
            fail(f"{path.parent} is not a directory")
    for path, content in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return [path for path, _ in targets]
