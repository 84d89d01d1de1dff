"""End to end, nothing faked: a real controller (:class:`~zerogate.testbed.segmentlab.SegmentLab`),
``zerogate segment run`` enrolled and configured with its JIT listener through the
environment (``ZEROGATE_SEGMENT_JIT_*``), a real protected SSH host serving TCP, two
client namespaces. The admin marks a port for just-in-time access; the user asks
through the listener with password and TOTP, reaches the port from exactly that client,
and the admin's revocation closes it on the host.
"""

from __future__ import annotations

import os
import shutil
import ssl
from pathlib import Path

import httpx
import pytest

from zerogate.pki.ca import create_ca, issue_server_certificate
from zerogate.segment.checks import tcp_connects
from zerogate.segment.jit_listener import API_PATH
from zerogate.testbed.segmentlab import FAST_SETTINGS, SegmentLab, host_key_fingerprint
from zerogate.testbed.sshhosts import SERVER_ADDRESS, SshFleet, call_in_netns, client_address, tcp_services

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists() or shutil.which("nft") is None,
    reason="needs root, network namespaces, nftables and OpenSSH's sshd",
)
PORT = 5432
LEARNED = 8080  # the controller protects only an asset with an approved rule: this port's
LISTEN_PORT = 8443
PASSWORD = "user password 12345"  # a throwaway test account


def test_user_asks_reaches_the_port_and_revocation_closes_it(fleet: SshFleet, tmp_path: Path) -> None:
    host = fleet.hosts[0]
    ca_key, ca_cert = create_ca("jit e2e CA")
    key_pem, cert_pem = issue_server_certificate(ca_key, ca_cert, [str(SERVER_ADDRESS)])
    cert, key, ca = tmp_path / "jit.crt", tmp_path / "jit.key", tmp_path / "ca.pem"
    cert.write_bytes(cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    ca.write_bytes(ca_cert)
    lab = SegmentLab(fleet, tmp_path)

    def reaches(client: int) -> bool:
        return call_in_netns(fleet.client_ns(client), lambda: tcp_connects(host.address, PORT, 0.5))

    jit = {
        "ZEROGATE_SEGMENT_JIT_LISTEN": f"{SERVER_ADDRESS}:{LISTEN_PORT}",
        "ZEROGATE_SEGMENT_JIT_CERT_FILE": str(cert),
        "ZEROGATE_SEGMENT_JIT_KEY_FILE": str(key),
    }
    with lab, tcp_services(host, (PORT, LEARNED)):
        lab.start_controller()
        lab.enroll_server(user="root")
        lab.start_server(FAST_SETTINGS | jit)
        api = lab.api
        api.add_asset("db", str(host.address), server=lab.server_name, ssh_user="root")
        lab.wait("the offered host key", lambda: bool(api.asset("db")["observed_host_key_fingerprint"]))
        api.trust("db", host_key_fingerprint(fleet, host))
        lab.wait("the first contact", lambda: api.asset("db")["state"] == "ready")
        api.set_mode("db", "learning", window_seconds=3600)
        lab.wait("learning", lambda: api.asset("db")["state"] == "learning")

        def learned() -> bool:
            assert call_in_netns(fleet.client_ns(1), lambda: tcp_connects(host.address, LEARNED, 1.0))
            return any(f["port"] == LEARNED for f in api.flows("db"))

        lab.wait("the learned flow", learned)
        proposal = api.propose("db")
        rule = next(r for r in proposal["proposed"] if r["port_first"] <= LEARNED <= r["port_last"])
        assert not rule["port_first"] <= PORT <= rule["port_last"]
        api.approve("db", rule["id"])
        api.set_mode("db", "protected")
        lab.wait("enforcement", lambda: api.asset("db")["state"] == "enforced", timeout=90)
        assert not reaches(0) and not reaches(1)

        # Activated (TOTP confirmed) but never signed in: a sign-in would use up the
        # next time step as well, and the request below would wait up to 30 s for a new one.
        admin = lab.controller.sessions[0]
        created = admin.client.post("/v1/users", {"username": "alice", "groups": []})
        authenticator = lab.controller.activate_account("alice", created["activation_code"], PASSWORD)
        api.call("POST", "/v1/segment/assets/db/jit-ports", {"port": PORT, "users": ["alice"]}, 201)

        url = f"https://{SERVER_ADDRESS}:{LISTEN_PORT}{API_PATH}"
        tls = ssl.create_default_context(cafile=str(ca))

        # One fresh code for both requests: the listener checks the password first, so
        # the refused request does not use the code up (the accepted one shows it).
        code = authenticator.code()

        def ask(client: int, password: str) -> httpx.Response:
            body = {"username": "alice", "password": password, "totp": code, "asset": "db",
                    "port": PORT, "protocol": "tcp", "duration": 3600}  # fmt: skip
            return call_in_netns(
                fleet.client_ns(client), lambda: httpx.post(url, json=body, verify=tls, timeout=60)
            )

        lab.wait(
            "the JIT listener",
            lambda: call_in_netns(fleet.client_ns(0), lambda: tcp_connects(SERVER_ADDRESS, LISTEN_PORT, 0.5)),
        )
        wrong = ask(1, "not the password")
        assert wrong.status_code == 401 and not reaches(1)
        r = ask(0, PASSWORD)
        assert r.status_code == 201, r.text
        assert r.json()["source"] == str(client_address(0))
        assert reaches(0) and not reaches(1)  # at once, exactly that source

        openings = api.call("GET", "/v1/segment/jit-openings")
        opening = next(o for o in openings if o["source"] == str(client_address(0)))
        api.call("POST", f"/v1/segment/jit-openings/{opening['id']}/revoke", {})
        lab.wait("the revoked opening to close", lambda: not reaches(0), timeout=30)
