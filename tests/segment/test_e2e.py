"""End to end: a real controller, a real segment server (``zerogate segment enroll``
and ``run``) in the fleet's server namespace, a real SSH host serving HTTP and a
real client. The admin adds the host, trusts the key the server reported, lets
it learn, approves the proposed rule and protects it: the learned flow still
works, an unlearned port is refused; unprotect restores it; break-glass removes
enforcement while the controller is stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerogate.testbed.segmentlab import SegmentLab, host_key_fingerprint
from zerogate.testbed.sshhosts import SshFleet

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or (shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists()),
    reason="needs root, network namespaces and OpenSSH's sshd",
)
LEARNED, UNLEARNED = 8080, 8081


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SshFleet]:
    with SshFleet(1, tmp_path / "fleet", clients=1) as f:
        yield f


def curl(fleet: SshFleet, address: str, port: int) -> bool:
    r = fleet.run(fleet.client_ns(0), ["curl", "-sS", "-o", "/dev/null", "-m", "3", f"http://{address}:{port}/"],
                  check=False, timeout=10)  # fmt: skip
    return r.returncode == 0


def test_learn_protect_unprotect_and_break_glass(fleet: SshFleet, tmp_path: Path) -> None:
    host = fleet.hosts[0]
    address = str(host.address)
    servers = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host.ns,
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                address,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        for port in (LEARNED, UNLEARNED)
    ]
    lab = SegmentLab(fleet, tmp_path)
    try:
        lab.start_controller()
        lab.wait(
            "the host's web servers",
            lambda: curl(fleet, address, LEARNED) and curl(fleet, address, UNLEARNED),
        )
        # the server's key pair is the one the fleet's hosts authorize (enroll keeps it)
        enrolled = lab.enroll_server(user="root")
        assert "Kept the existing SSH key pair" in enrolled, enrolled
        lab.start_server()
        api = lab.api

        # the admin adds the host; the server reports the key it offers
        api.add_asset("web", address, server=lab.server_name, ssh_user="root")
        lab.wait("the offered host key", lambda: bool(api.asset("web")["observed_host_key_fingerprint"]))
        offered = api.asset("web")["observed_host_key_fingerprint"]
        assert api.asset("web")["state"] == "host_key_unknown"
        assert offered == host_key_fingerprint(fleet, host)
        api.trust("web", offered)
        lab.wait("the first contact", lambda: api.asset("web")["state"] == "ready")

        # learning: the client's requests to the learned port become flows
        api.set_mode("web", "learning", window_seconds=3600)
        lab.wait("learning", lambda: api.asset("web")["state"] == "learning")

        def learned() -> bool:
            assert curl(fleet, address, LEARNED)
            return any(f["port"] == LEARNED for f in api.flows("web"))

        lab.wait("the learned flow", learned)
        proposal = api.propose("web")
        rule = next(r for r in proposal["proposed"] if r["port_first"] <= LEARNED <= r["port_last"])
        assert not any(r["port_first"] <= UNLEARNED <= r["port_last"] for r in proposal["proposed"])
        api.approve("web", rule["id"])

        # protect: the learned flow works, the unlearned one is refused
        api.set_mode("web", "protected")
        lab.wait("enforcement", lambda: api.asset("web")["state"] == "enforced", timeout=90)
        assert api.asset("web")["enforced_revision"] == api.asset("web")["rules_revision"]
        assert fleet.nft(host, "list", "table", "inet", "zerogate_segment").returncode == 0
        assert curl(fleet, address, LEARNED)
        assert not curl(fleet, address, UNLEARNED)

        # unprotect: our table goes, everything answers again
        api.unprotect("web")
        lab.wait("unprotect", lambda: api.asset("web")["state"] == "ready")
        assert fleet.nft(host, "list", "table", "inet", "zerogate_segment").returncode != 0
        assert curl(fleet, address, UNLEARNED)

        # protected again (through learning, as the controller wants), then break-glass
        # with the server and the controller stopped
        api.set_mode("web", "learning", window_seconds=3600)
        api.set_mode("web", "protected")
        lab.wait("enforcement again", lambda: api.asset("web")["state"] == "enforced", timeout=90)
        assert not curl(fleet, address, UNLEARNED)
        assert lab.server.stop(), "the segment server did not stop on SIGTERM"
        lab.stop_controller()
        r = lab.server.break_glass()
        assert r.returncode == 0, r.stdout + r.stderr
        assert "web" in r.stdout and "removed" in r.stdout
        assert fleet.nft(host, "list", "table", "inet", "zerogate_segment").returncode != 0
        assert curl(fleet, address, UNLEARNED)
    finally:
        lab.close()
        for p in servers:
            p.terminate()
            p.wait(10)
