"""Enrollment: a connector, gateway or segment server with an install string, a
client with its user's session. Keys are made here, on the device (a TLS client
key with its CSR, and the WireGuard key pair); only the CSR and the WireGuard
*public* key are sent. The result lands in the state directory (see
:mod:`zerogate.agent.state`). A segment server also makes its own SSH key pair
there (:func:`enroll_segment`): it logs in to its assets with it.

Errors (each says what happened and what to do; the CLI prints it and exits 1)::

    EnrollmentError
    ├── AlreadyEnrolled   the state directory holds an enrollment (--force replaces it)
    ├── WrongRole         the install string enrolls another role (that device now exists)
    └── DeviceRefused     the controller no longer accepts this client device

The controller's own errors pass through untouched:
:class:`~zerogate.netops.controller_api.ControllerError` (unreachable, TLS pin
mismatch or interception, HTTP errors such as a spent or unknown key) and
:class:`ValueError` for an install string that does not parse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerogate.agent.state import StateDir, save_identity, write_private
from zerogate.netops import links
from zerogate.netops.controller_api import ApiError, ControllerClient, fetch_ca
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.install_string import parse_install_string
from zerogate.pki.wireguard import generate_keypair


class EnrollmentError(Exception):
    """Enrollment did not happen (or did not finish); ``str()`` is the message for the user."""


class AlreadyEnrolled(EnrollmentError):
    pass


class WrongRole(EnrollmentError):
    def __init__(self, message: str, role: str) -> None:
        super().__init__(message)
        self.role = role  # the role the install string enrolls


class DeviceRefused(EnrollmentError):
    """The controller refused this client device (revoked, removed, account disabled)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message  # the controller's own words


def enroll_device(
    role: str, install_string: str, name: str, state_dir: Path, force: bool
) -> dict[str, object]:
    """Enroll this host as ``role``; the summary saved in ``device.json`` plus ``state_dir``."""
    state = StateDir(state_dir)
    if state.enrolled() and not force:
        raise AlreadyEnrolled(f"{state_dir} already holds an enrolled {role}; pass --force to replace it")
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
        raise WrongRole(
            f"this install string enrolls a {r['role']}, not a {role}: run 'zerogate {r['role']} enroll' "
            f"(device {r['device_id']} was enrolled; an admin can revoke it)",
            str(r["role"]),
        )
    summary = {
        "role": role,
        "name": r["name"],
        "device_id": r["device_id"],
        "controller_url": info.controller_url,
        "ca_pin": info.ca_pin,
        "wg_public_key": wg_public,
    }
    save_identity(
        state_dir,
        key_pem=key_pem,
        wg_private=wg_private,
        credential=r["credential"],
        certificate=r["certificate"],
        ca_pem=ca_pem,
        info=summary,
    )
    return summary | {"state_dir": str(state_dir)}


@dataclass(frozen=True)
class ClientRegistration:
    device: dict[str, Any]  # what device.json holds
    moved_from_default_block: bool  # the default address block collided with a local network


def register_client(
    state_dir: Path, info: dict[str, Any], token: str, name: str, interface: str
) -> ClientRegistration:
    """Register this host as the signed-in user's client device (new keys each time).

    ``info`` is ``client.json`` (controller URL and CA); the local networks are
    sent so that the controller picks an address block that collides with none.
    """
    key_pem = generate_private_key()
    wg_private, wg_public = generate_keypair()
    local = [str(n) for n in links.local_networks(exclude=[interface]) if n.version == 4]
    with ControllerClient(info["url"], info["ca_pem"].encode(), token=token) as c:
        r = c.post(
            "/v1/clients",
            {
                "name": name,
                "csr": create_csr(key_pem, name).decode(),
                "wg_public_key": wg_public,
                "local_networks": local,
            },
        )
    device = {
        "role": "client",
        "name": r["name"],
        "device_id": r["device_id"],
        "controller_url": info["url"],
        "address": r["address"],
        "address_block": r["address_block"],
        "wg_public_key": wg_public,
    }
    save_identity(
        state_dir,
        key_pem=key_pem,
        wg_private=wg_private,
        credential=r["credential"],
        certificate=r["certificate"],
        ca_pem=info["ca_pem"].encode(),
        info=device,
    )
    StateDir(state_dir).remove(StateDir.REVOKED)
    return ClientRegistration(device, bool(r["moved_from_default_block"]))


def resume_client(state_dir: Path, info: dict[str, Any], token: str) -> None:
    """Open a session for the registered client device; DeviceRefused when the
    controller no longer accepts it (403/404)."""
    device = json.loads((StateDir(state_dir) / StateDir.DEVICE).read_text())
    with ControllerClient(info["url"], info["ca_pem"].encode(), token=token) as c:
        try:
            c.post(f"/v1/clients/{device['device_id']}/session")
        except ApiError as exc:
            if exc.status in (403, 404):
                raise DeviceRefused(exc.message) from exc
            raise


# --------------------------------------------------------------------------- segment server

SSH_KEY = "ssh_ed25519"  # in the state directory, 0600: the key the server logs in to its assets with
SSH_PUBLIC_KEY = "ssh_ed25519.pub"


@dataclass(frozen=True)
class SegmentEnrollment:
    summary: dict[str, object]  # as enroll_device returns it
    public_key: str  # "ssh-ed25519 AAAA... zerogate-segment-NAME", for the assets' authorized_keys
    key_created: bool  # False: an existing key pair was kept (the assets already authorize it)


def ensure_ssh_key(state_dir: Path, comment: str) -> tuple[str, bool]:
    """The server's SSH key pair in ``state_dir`` (private 0600, OpenSSH format):
    made when missing, kept otherwise. Returns the public line and whether it was made."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = state_dir / SSH_KEY, state_dir / SSH_PUBLIC_KEY
    if private.exists() and public.exists():
        return public.read_text().strip(), False
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    text = f"{line.decode()} {comment}"
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(private, pem.decode())
    public.write_text(text + "\n")
    public.chmod(0o644)
    return text, True


def enroll_segment(install_string: str, name: str, state_dir: Path, force: bool) -> SegmentEnrollment:
    """Enroll this host as a segment server, then make (or keep) its SSH key pair."""
    summary = enroll_device("segment", install_string, name, state_dir, force)
    public_key, created = ensure_ssh_key(state_dir, f"zerogate-segment-{summary['name']}")
    return SegmentEnrollment(summary | {"ssh_public_key": public_key}, public_key, created)
