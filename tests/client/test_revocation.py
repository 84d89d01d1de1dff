"""``zerogate client up --follow`` when an admin revokes the device: a real
controller and the real client in a network namespace (wireguard-go).

The client must take its tunnel down, forget the cached snapshot, say once why
and what to do, and exit 1 — not crash with a traceback and leave the
interface and its routes behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.localrun import zerogate_argv
from zerogate.testbed.topology import Topology

pytestmark = [pytest.mark.xdist_group("client-revocation"), pytest.mark.slow]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Topology(clients=1, connectors=0, attacker=False) as topo:
        lab = Lab(topo)
        try:
            lab.start_controller()
            lab.create_org()  # users alice and dave; the gateway is not enrolled: no handshake to wait for
            yield lab
        finally:
            lab.close()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _has_link(lab: Lab, ns: str, name: str) -> bool:
    return lab.topo.run(ns, ["ip", "link", "show", "dev", name], check=False).returncode == 0


def test_follow_tears_down_and_says_why_when_the_device_is_revoked(lab: Lab) -> None:
    ns = lab.client_ns("alice")
    iface, state = lab.topo.wg_interface(ns), lab.state(ns)
    lab.client_login("alice")
    log = lab.topo.tmp / "client-follow.log"
    argv = ["client", "up", "--follow", "--state-dir", str(state), "--interface", iface, "--name", "laptop"]
    proc = lab.topo.popen(ns, [*zerogate_argv(), *argv], log=log)
    try:
        wait_for(
            lambda: "Following policy changes" in _read(log), 60, "client up --follow to start following"
        )
        assert _has_link(lab, ns, iface) and (state / "snapshot.json").exists()

        lab.admin.post(f"/v1/devices/{lab.device_id('alice')}/revoke")
        took = wait_for(lambda: proc.poll() is not None, 15, "the client to exit after the revocation")
        print(f"client exited {took:.1f} s after the revocation")
    except BaseException:
        print(f"--- client log ---\n{_read(log)[-4000:]}")
        print(f"--- controller log ---\n{_read(lab.topo.tmp / 'controller.log')[-3000:]}")
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)

    said = _read(log)
    print(f"--- client output ---\n{said}")
    assert proc.returncode == 1, said
    assert "Traceback" not in said and "KeyError" not in said, said
    assert "the controller no longer accepts this device" in said, said
    assert f"removed the tunnel interface {iface} and its routes" in said, said
    assert said.count("--force") == 1, said
    assert not _has_link(lab, ns, iface), "the tunnel interface was left behind"
    assert not (state / "snapshot.json").exists()

    status = lab.zg(ns, "client", "status", "--json", "--state-dir", str(state), "--interface", iface)
    assert json.loads(status)["tunnel"] == "revoked"
    again = lab.topo.run(
        ns,
        [*zerogate_argv(), "client", "status", "--state-dir", str(state), "--interface", iface],
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("--force") == 1 and "tunnel up" not in again.stdout


def test_status_without_follow_asks_the_controller_and_never_shows_a_revoked_device_as_up(lab: Lab) -> None:
    ns = lab.client_ns("alice")
    iface, state = lab.topo.wg_interface(ns), lab.state(ns)
    lab.client_login("alice")
    lab.zg(
        ns, "client", "up", "--force", "--state-dir", str(state), "--interface", iface, "--name", "laptop2"
    )
    try:
        status = json.loads(
            lab.zg(ns, "client", "status", "--json", "--state-dir", str(state), "--interface", iface)
        )
        assert status["controller"] == "accepts" and status["tunnel"] != "revoked", status

        lab.admin.post(f"/v1/devices/{lab.device_id('alice')}/revoke")
        shown = lab.topo.run(
            ns,
            [*zerogate_argv(), "client", "status", "--state-dir", str(state), "--interface", iface],
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert "revoked" in shown.stdout and "refuses" in shown.stdout, shown.stdout
        assert "zerogate client down" in shown.stderr and shown.stderr.count("--force") == 1, shown.stderr
        assert (state / "revoked").exists()  # remembered: later calls need not ask
    finally:
        lab.zg(ns, "client", "down", "--state-dir", str(state), "--interface", iface)
