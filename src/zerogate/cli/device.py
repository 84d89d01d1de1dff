"""``zerogate connector enroll`` / ``zerogate gateway enroll``.

Enrollment makes the device's keys on the device (a TLS client key with its
CSR, and the WireGuard key pair); only the CSR and the WireGuard *public* key
are sent. The result lands in the state directory, secrets 0600:
``device.key``, ``wg.key``, ``credential``; plus ``device.pem``, ``ca.pem``
and ``device.json``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import typer

from zerogate.cli.common import JsonOpt, emit, errors_to_exit, fail, out
from zerogate.netops.controller_api import ControllerClient, fetch_ca
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.install_string import parse_install_string
from zerogate.pki.wireguard import generate_keypair

connector_app = typer.Typer(
    help="Network connector: dials out to gateways and forwards into its site.", no_args_is_help=True
)
gateway_app = typer.Typer(
    help="Gateway: the public edge that clients and connectors meet at.", no_args_is_help=True
)


def _write(path: Path, data: str, secret: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def enroll_device(
    role: str, install_string: str, name: str, state_dir: Path, force: bool
) -> dict[str, object]:
    marker = state_dir / "device.json"
    if marker.exists() and not force:
        fail(f"{state_dir} already holds an enrolled {role}; pass --force to replace it")
    info = parse_install_string(install_string)
    ca_pem = fetch_ca(info.controller_url, info.ca_pin)
    key_pem = generate_private_key()
    wg_private, wg_public = generate_keypair()
    with ControllerClient(info.controller_url, ca_pem) as c:
        r = c.post(
            "/v1/enroll",
            {
                "key": info.key,
                "name": name,
                "csr": create_csr(key_pem, name).decode(),
                "wg_public_key": wg_public,
            },
        )
    if r["role"] != role:
        fail(
            f"this install string enrolls a {r['role']}, not a {role}: run 'zerogate {r['role']} enroll' "
            f"(device {r['device_id']} was enrolled; an admin can revoke it)"
        )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    _write(state_dir / "device.key", key_pem.decode(), True)
    _write(state_dir / "wg.key", wg_private + "\n", True)
    _write(state_dir / "credential", r["credential"] + "\n", True)
    _write(state_dir / "device.pem", r["certificate"], False)
    _write(state_dir / "ca.pem", ca_pem.decode(), False)
    summary = {
        "role": role,
        "name": r["name"],
        "device_id": r["device_id"],
        "controller_url": info.controller_url,
        "ca_pin": info.ca_pin,
        "wg_public_key": wg_public,
    }
    _write(marker, json.dumps(summary, indent=2) + "\n", False)
    return summary | {"state_dir": str(state_dir)}


def _command(role: str, app: typer.Typer) -> None:
    @app.command()
    def enroll(
        install_string: str = typer.Argument(
            ..., help="The line from 'zerogate admin key create' (starts with zg1.)."
        ),
        name: str = typer.Option(
            socket.gethostname()[:50], "--name", help="Name for this device (default: host name)."
        ),
        state_dir: Path = typer.Option(
            Path(f"/var/lib/zerogate/{role}"), "--state-dir", help="Where keys and credentials are kept."
        ),
        force: bool = typer.Option(False, "--force", help="Replace an existing enrollment in --state-dir."),
        as_json: bool = JsonOpt,
    ) -> None:
        """Enroll this host with an install string; its private keys never leave it."""
        with errors_to_exit():
            summary = enroll_device(role, install_string, name, state_dir, force)
        if as_json:
            emit(summary, True)
        else:
            out.print(
                f"[green]Enrolled[/] {role} {summary['name']} as device {summary['device_id']}; state in {state_dir}"
            )

    enroll.__doc__ = f"Enroll this host as a {role} with an install string; its private keys never leave it."


_command("connector", connector_app)
_command("gateway", gateway_app)
