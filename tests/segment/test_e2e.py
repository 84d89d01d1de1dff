"""End to end: a real controller, a real segment server (``zerogate segment enroll``
and ``run``) in the fleet's server namespace, a real SSH host serving HTTP and a
real client. The admin adds the host, trusts the key the server reported, lets
it learn, approves the proposed rule and protects it: the learned flow still
works, an unlearned port is refused; unprotect restores it; break-glass removes
enforcement while the controller is stopped."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiaccess import raw
from zerogate.testbed.localrun import AccountSession, LocalController
from zerogate.testbed.sshhosts import SshFleet, call_in_netns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or (shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists()),
    reason="needs root, network namespaces and OpenSSH's sshd",
)
ZEROGATE = str(Path(sys.executable).with_name("zerogate"))
LEARNED, UNLEARNED = 8080, 8081


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 60.0, log: Path | None = None) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.2)


def forward_into(ns: str, port: int) -> Callable[[], None]:
    """127.0.0.1:``port`` inside ``ns`` relays to 127.0.0.1:``port`` here (the controller)."""

    def listen() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        return s

    listener = call_in_netns(ns, listen, timeout=10)
    stop = threading.Event()

    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        while not stop.is_set():
            try:
                inner, _ = listener.accept()
            except OSError:
                return
            outer = socket.create_connection(("127.0.0.1", port))
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def close() -> None:
        stop.set()
        listener.close()

    return close


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
    lc = LocalController(tmp_path / "controller").init().start()
    close_forward: Callable[[], None] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    log = tmp_path / "segment.log"
    try:
        wait_for(
            "the host's web servers",
            lambda: curl(fleet, address, LEARNED) and curl(fleet, address, UNLEARNED),
        )
        admin: AccountSession = lc.bootstrap_admin()

        def api(method: str, path: str, body: Any = None, status: int = 200) -> Any:
            return ok(raw(lc, method, path, body, admin.token), status)

        ok(raw(lc, "POST", "/v1/segment-servers", {"name": "seg"}, admin.token), 201)
        key = api("POST", "/v1/segment-servers/seg/provisioning-keys", {}, 201)
        close_forward = forward_into(fleet.server_ns, lc.port)

        # the server's key pair: the one the fleet's hosts authorize (enroll keeps it)
        state = tmp_path / "segment"
        state.mkdir(mode=0o700)
        shutil.copy(fleet.key, state / "ssh_ed25519")
        (state / "ssh_ed25519").chmod(0o600)
        shutil.copy(fleet.key.with_suffix(".pub"), state / "ssh_ed25519.pub")
        enrolled = fleet.run(fleet.server_ns, [ZEROGATE, "segment", "enroll", key["install_string"],
                                               "--state-dir", str(state), "--user", "root"], timeout=60)  # fmt: skip
        assert "Kept the existing SSH key pair" in enrolled.stdout, enrolled.stdout
        env = os.environ | {
            "ZEROGATE_SEGMENT_COLLECT_INTERVAL": "1", "ZEROGATE_SEGMENT_REPORT_INTERVAL": "1",
            "ZEROGATE_SEGMENT_WATCH_SECONDS": "2", "ZEROGATE_SEGMENT_LOG_LEVEL": "debug",
        }  # fmt: skip
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                ["ip", "netns", "exec", fleet.server_ns, ZEROGATE, "segment", "run", "--state-dir", str(state)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip

        def asset() -> dict[str, Any]:
            return api("GET", "/v1/segment/assets/web")  # type: ignore[no-any-return]

        # the admin adds the host; the server reports the key it offers
        api(
            "POST",
            "/v1/segment/assets",
            {"name": "web", "address": address, "server": "seg", "ssh_user": "root"},
            201,
        )
        offered = wait_for("the offered host key", lambda: asset()["observed_host_key_fingerprint"], log=log)
        assert asset()["state"] == "host_key_unknown"
        expected = fleet.run(fleet.server_ns, ["ssh-keygen", "-l", "-E", "sha256", "-f", "-"],
                             input=f"{address} {host.host_key}\n").stdout.split()[1]  # fmt: skip
        assert offered == expected
        api("POST", "/v1/segment/assets/web/trust", {"fingerprint": offered})
        wait_for("the first contact", lambda: asset()["state"] == "ready", log=log)

        # learning: the client's requests to the learned port become flows
        api("POST", "/v1/segment/assets/web/mode", {"mode": "learning", "window_seconds": 3600})
        wait_for("learning", lambda: asset()["state"] == "learning", log=log)

        def learned() -> bool:
            assert curl(fleet, address, LEARNED)
            flows = api("GET", "/v1/segment/assets/web/flows")
            return any(f["port"] == LEARNED for f in flows)

        wait_for("the learned flow", learned, log=log)
        proposal = api("POST", "/v1/segment/assets/web/propose", {})
        rule = next(r for r in proposal["proposed"] if r["port_first"] <= LEARNED <= r["port_last"])
        assert not any(r["port_first"] <= UNLEARNED <= r["port_last"] for r in proposal["proposed"])
        api("POST", f"/v1/segment/assets/web/rules/{rule['id']}/approve", {})

        # protect: the learned flow works, the unlearned one is refused
        api("POST", "/v1/segment/assets/web/mode", {"mode": "protected"})
        wait_for("enforcement", lambda: asset()["state"] == "enforced", timeout=90, log=log)
        assert asset()["enforced_revision"] == asset()["rules_revision"]
        assert fleet.nft(host, "list", "table", "inet", "zerogate_segment").returncode == 0
        assert curl(fleet, address, LEARNED)
        assert not curl(fleet, address, UNLEARNED)

        # unprotect: our table goes, everything answers again
        api("POST", "/v1/segment/assets/web/unprotect", {})
        wait_for("unprotect", lambda: asset()["state"] == "ready", log=log)
        assert fleet.nft(host, "list", "table", "inet", "zerogate_segment").returncode != 0
        assert curl(fleet, address, UNLEARNED)

        # protected again (through learning, as the controller wants), then break-glass
        # with the server and the controller stopped
        api("POST", "/v1/segment/assets/web/mode", {"mode": "learning", "window_seconds": 3600})
        api("POST", "/v1/segment/assets/web/mode", {"mode": "protected"})
        wait_for("enforcement again", lambda: asset()["state"] == "enforced", timeout=90, log=log)
        assert not curl(fleet, address, UNLEARNED)
        daemon.terminate()
        daemon.wait(15)
        lc.stop()
        r = fleet.run(fleet.server_ns, [ZEROGATE, "segment", "break-glass", "--all", "--state-dir", str(state)],
                      check=False, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "web" in r.stdout and "removed" in r.stdout
        assert fleet.nft(host, "list", "table", "inet", "zerogate_segment").returncode != 0
        assert curl(fleet, address, UNLEARNED)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
        if close_forward is not None:
            close_forward()
        lc.stop()
        for p in servers:
            p.terminate()
            p.wait(10)
