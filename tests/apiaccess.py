"""Plain HTTPS requests to a test controller, with whatever token a test holds
(a device credential, a user's session), and the status code left to the test."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from zerogate.netops.controller_api import make_ssl_context
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController


def raw(
    controller: LocalController,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    params: dict[str, Any] | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(
        base_url=controller.url, verify=make_ssl_context(controller.ca_pem), trust_env=False, timeout=30
    ) as h:
        return h.request(method, path, json=body, headers=headers, params=params)


def register(
    controller: LocalController, session: AccountSession, name: str, local_networks: list[str] | None = None
) -> httpx.Response:
    """Register a client device for the signed-in user, with fresh keys."""
    body = {
        "name": name,
        "csr": create_csr(generate_private_key(), name).decode(),
        "wg_public_key": generate_keypair()[1],
        "local_networks": local_networks or [],
    }
    return raw(controller, "POST", "/v1/clients", body, token=session.token)


def enroll_connector(
    controller: LocalController, admin: AccountSession, prefix: str, subnet: str
) -> dict[str, Any]:
    """A connector enrolled in a new group ``<prefix>-<random>`` fronting ``subnet``:
    the enrollment answer (device_id, name, credential, ...)."""
    group = f"{prefix}-{uuid.uuid4().hex[:6]}"
    admin.client.post("/v1/connector-groups", {"name": group, "subnets": [subnet]})
    key = admin.client.post(f"/v1/connector-groups/{group}/provisioning-keys", {})
    body = {
        "key": key["key"],
        "name": f"conn-{uuid.uuid4().hex[:6]}",
        "csr": create_csr(generate_private_key(), "connector").decode(),
        "wg_public_key": generate_keypair()[1],
    }
    with controller.client() as c:
        enrolled: dict[str, Any] = c.post("/v1/enroll", body)
    return enrolled


def enroll_gateway(controller: LocalController, admin: AccountSession) -> tuple[int, str, str]:
    """A gateway enrolled with fresh keys: (device id, name, credential)."""
    name = f"hgw-{uuid.uuid4().hex[:6]}"
    admin.client.post("/v1/gateways", {"name": name, "public_endpoint": "gw.example.test"})
    key = admin.client.post(f"/v1/gateways/{name}/provisioning-keys", {})["key"]
    body = {
        "key": key,
        "name": name,
        "csr": create_csr(generate_private_key(), name).decode(),
        "wg_public_key": generate_keypair()[1],
    }
    enrolled = raw(controller, "POST", "/v1/enroll", body).json()
    return int(enrolled["device_id"]), name, str(enrolled["credential"])
