"""End to end, nothing faked: a real controller (:class:`~zerogate.testbed.segmentlab.SegmentLab`),
a real enrolled segment server with its JIT listener, a real protected SSH host serving
TCP, two client namespaces. The admin marks a port for just-in-time access; the user asks
through the listener with password and TOTP, reaches the port from exactly that client,
and the admin's revocation closes it on the host.

The segment daemon runs in this process (in the fleet's server namespace) rather than as
``zerogate segment run``, because the listener's settings reach the daemon through
``zerogate segment run`` only once its wiring passes ``jit_listen`` on (see the JIT
README notes); the daemon, its snapshot follower, SSH and the listener are the real ones.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from zerogate.agent.state import DeviceIdentity
from zerogate.pki.ca import create_ca, issue_server_certificate
from zerogate.segment.checks import tcp_connects
from zerogate.segment.daemon import SegmentDaemon, SshHostOps
from zerogate.segment.jit_listener import API_PATH
from zerogate.segment.ssh import Access
from zerogate.testbed.segmentlab import SegmentLab, host_key_fingerprint
from zerogate.testbed.sshhosts import SERVER_ADDRESS, SshFleet, call_in_netns, client_address

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists() or shutil.which("nft") is None,
    reason="needs root, network namespaces, nftables and OpenSSH's sshd",
)
PORT = 5432
LEARNED = 8080  # the controller protects only an asset with an approved rule: this port's
LISTEN_PORT = 8443


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SshFleet]:
    with SshFleet(1, tmp_path / "fleet", clients=2) as f:
        try:
            yield f
        except BaseException:
            print(f.logs())
            raise


def test_user_asks_reaches_the_port_and_revocation_closes_it(fleet: SshFleet, tmp_path: Path) -> None:
    host = fleet.hosts[0]
    services = [
        subprocess.Popen(
            ["ip", "netns", "exec", host.ns, sys.executable, "-m", "http.server", str(p), "--bind", str(host.address)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in (PORT, LEARNED)
    ]  # fmt: skip
    ca_key, ca_cert = create_ca("jit e2e CA")
    key_pem, cert_pem = issue_server_certificate(ca_key, ca_cert, [str(SERVER_ADDRESS)])
    cert, key, ca = tmp_path / "jit.crt", tmp_path / "jit.key", tmp_path / "ca.pem"
    cert.write_bytes(cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    ca.write_bytes(ca_cert)
    stop = threading.Event()
    runner: threading.Thread | None = None
    lab = SegmentLab(fleet, tmp_path)

    def reaches(client: int) -> bool:
        return call_in_netns(fleet.client_ns(client), lambda: tcp_connects(host.address, PORT, 0.5))

    try:
        lab.start_controller()
        lab.wait(
            "the host's service",
            lambda: call_in_netns(host.ns, lambda: tcp_connects(host.address, PORT, 1.0)),
        )
        lab.enroll_server(user="root")
        state = lab.server.state_dir
        identity = DeviceIdentity.load(state, "segment")
        ops = SshHostOps(
            Access(state / "ssh_ed25519", state / "assets", remote_dir=str(tmp_path / "on-host"))
        )
        daemon = SegmentDaemon(
            identity, ops, collect_interval=1, report_interval=1, watch_seconds=2,
            jit_listen=(f"{SERVER_ADDRESS}:{LISTEN_PORT}", str(cert), str(key)),
        )  # fmt: skip

        def start() -> threading.Thread:
            t = threading.Thread(target=daemon.run, args=(stop,), name="segment-daemon", daemon=True)
            t.start()
            return t

        runner = fleet.call(start)
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

        admin = lab.controller.sessions[0]
        user = lab.controller.create_user(admin, "alice", [])
        api.call("POST", "/v1/segment/assets/db/jit-ports", {"port": PORT, "users": ["alice"]}, 201)

        url = f"https://{SERVER_ADDRESS}:{LISTEN_PORT}{API_PATH}"
        tls = ssl.create_default_context(cafile=str(ca))

        def ask(client: int, password: str) -> httpx.Response:
            body = {"username": "alice", "password": password, "totp": user.authenticator.code(), "asset": "db",
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
        r = ask(0, user.password)
        assert r.status_code == 201, r.text
        assert r.json()["source"] == str(client_address(0))
        assert reaches(0) and not reaches(1)  # at once, exactly that source

        openings = api.call("GET", "/v1/segment/jit-openings")
        opening = next(o for o in openings if o["source"] == str(client_address(0)))
        api.call("POST", f"/v1/segment/jit-openings/{opening['id']}/revoke", {})
        lab.wait("the revoked opening to close", lambda: not reaches(0), timeout=30)
    finally:
        stop.set()
        if runner is not None:
            runner.join(timeout=15)
        lab.close()
        for service in services:
            service.kill()
            service.wait(5)
