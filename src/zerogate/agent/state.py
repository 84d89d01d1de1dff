"""A device's state directory, in one place: every file it holds, with its mode,
and the enrolled identity read from it.

Layout (the directory itself 0700, root only)::

    device.json      0644  the enrollment marker, written last (role, name, device id, controller URL)
    credential       0600  the device's bearer credential for the controller API
    wg.key           0600  WireGuard private key
    device.key       0600  TLS client key (its CSR was sent at enrollment, the key never)
    device.pem       0644  the device certificate the controller issued
    ca.pem           0644  the controller's CA, pinned at enrollment
    snapshot.json    0600  the last snapshot that applied cleanly (fail-static)
    endpoints.json   0600  gateway: the endpoints its peers last handshook from
    forwarding.json  0600  connector: net.ipv4.ip_forward as it was before zerogate
    revoked          0600  client: the controller refused this device (until 'up --force')
    client.json      0600  client: controller URL, CA, user, session end
    session          0600  client: the sign-in token
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from zerogate.netops.controller_api import ControllerClient
from zerogate.netops.files import write_private

__all__ = ["DeviceIdentity", "NotEnrolled", "StateDir", "StateFile", "save_identity", "write_private"]

DIR_MODE = 0o700
DEFAULT_TIMEOUT = 35.0  # seconds: a 25-s long-poll plus room for the answer


class NotEnrolled(RuntimeError):
    """The state directory holds no usable enrollment for this role; says what to run."""


class StateFile(NamedTuple):
    name: str
    mode: int


@dataclass(frozen=True)
class StateDir:
    """Where a device keeps its keys and state; each file's name and mode are named here."""

    path: Path

    DEVICE = StateFile("device.json", 0o644)
    CREDENTIAL = StateFile("credential", 0o600)
    WG_KEY = StateFile("wg.key", 0o600)
    DEVICE_KEY = StateFile("device.key", 0o600)
    DEVICE_CERT = StateFile("device.pem", 0o644)
    CA = StateFile("ca.pem", 0o644)
    SNAPSHOT = StateFile("snapshot.json", 0o600)
    ENDPOINTS = StateFile("endpoints.json", 0o600)
    FORWARDING = StateFile("forwarding.json", 0o600)
    REVOKED = StateFile("revoked", 0o600)
    CLIENT = StateFile("client.json", 0o600)
    SESSION = StateFile("session", 0o600)

    SECRETS = (CREDENTIAL, WG_KEY)  # refused when others can read them

    def __truediv__(self, file: StateFile) -> Path:
        return self.path / file.name

    def create(self) -> None:
        """The directory, 0700 even when it existed with a wider mode."""
        self.path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(self.path, DIR_MODE)

    def write(self, file: StateFile, data: str) -> None:
        """Atomically replace ``file`` with ``data``, with that file's mode."""
        write_private(self / file, data, file.mode)

    def read(self, file: StateFile) -> str:
        return (self / file).read_text()

    def exists(self, file: StateFile) -> bool:
        return (self / file).exists()

    def remove(self, file: StateFile) -> None:
        (self / file).unlink(missing_ok=True)

    def read_json(self, file: StateFile) -> Any:
        return json.loads(self.read(file))

    def enrolled(self) -> bool:
        return self.exists(self.DEVICE)


@dataclass(frozen=True)
class DeviceIdentity:
    state_dir: Path
    role: str
    name: str
    device_id: int
    controller_url: str
    ca_pem: bytes
    credential: str
    wg_private_key: str

    @property
    def state(self) -> StateDir:
        return StateDir(self.state_dir)

    @classmethod
    def load(cls, state_dir: Path, role: str) -> DeviceIdentity:
        state = StateDir(state_dir)
        if not state.enrolled():
            raise NotEnrolled(
                f"{state_dir} holds no enrolled {role}: run 'zerogate {role} enroll <install-string>' first"
            )
        info = state.read_json(StateDir.DEVICE)
        if info.get("role") != role:
            raise NotEnrolled(f"{state_dir} holds a {info.get('role')}, not a {role}")
        for secret in StateDir.SECRETS:
            if (state / secret).stat().st_mode & 0o077:
                raise NotEnrolled(f"{state / secret} is readable by others: chmod 600 it")
        return cls(
            state_dir=state_dir,
            role=role,
            name=str(info["name"]),
            device_id=int(info["device_id"]),
            controller_url=str(info["controller_url"]),
            ca_pem=(state / StateDir.CA).read_bytes(),
            credential=state.read(StateDir.CREDENTIAL).strip(),
            wg_private_key=state.read(StateDir.WG_KEY).strip(),
        )

    def client(self, timeout: float = DEFAULT_TIMEOUT) -> ControllerClient:
        return ControllerClient(self.controller_url, self.ca_pem, token=self.credential, timeout=timeout)


def save_identity(
    state_dir: Path,
    *,
    key_pem: bytes,
    wg_private: str,
    credential: str,
    certificate: str,
    ca_pem: bytes,
    info: dict[str, Any],
) -> None:
    """Write an enrolled device's state: secrets 0600, then ``device.json`` last (the marker)."""
    state = StateDir(state_dir)
    state.create()
    state.write(StateDir.DEVICE_KEY, key_pem.decode())
    state.write(StateDir.WG_KEY, wg_private + "\n")
    state.write(StateDir.CREDENTIAL, credential + "\n")
    state.write(StateDir.DEVICE_CERT, certificate)
    state.write(StateDir.CA, ca_pem.decode())
    state.write(StateDir.DEVICE, json.dumps(info, indent=2) + "\n")
