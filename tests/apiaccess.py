"""Plain HTTPS requests to a test controller, with whatever token a test holds
(a device credential, a user's session), and the status code left to the test."""

from __future__ import annotations

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
