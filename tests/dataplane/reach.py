"""Reachability probes shared by the data-plane tests: does a fresh TCP connection
from a user's client namespace to the app get through, and how soon after a
change does it stop?"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.dbaccess import run_sql

from zerogate.testbed.lab import Lab, wait_for

PROBE_TIMEOUT = 0.3  # a TCP connect through the tunnel takes a few ms; no SYN retry is needed
SURE_TIMEOUT = 3.0  # long enough that a loaded machine still connects when the path is open


def tcp_connects(lab: Lab, user: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """One fresh TCP connection from the user's client to the app."""
    script = f"exec 3<>/dev/tcp/{lab.topo.app_address}/{port}"
    r = lab.topo.run(lab.client_ns(user), ["timeout", str(timeout), "bash", "-c", script], check=False)
    return r.returncode == 0


def assert_cut_within(lab: Lab, user: str, port: int, action: Callable[[], object], what: str) -> float:
    """Run ``action``, then open fresh connections until one fails.

    The cut happened no later than the end of the first failing attempt:
    its start plus PROBE_TIMEOUT. That bound must be within 2 s. A short
    attempt can also fail because the machine is busy, so a failure counts
    only when a patient attempt right after it fails too.
    """
    wait_for(
        lambda: tcp_connects(lab, user, port, SURE_TIMEOUT), 30, f"{what}: {user} connects before the change"
    )
    started = time.monotonic()
    action()
    while True:
        attempt = time.monotonic()
        if not tcp_connects(lab, user, port) and not tcp_connects(lab, user, port, SURE_TIMEOUT):
            bound = attempt - started + PROBE_TIMEOUT
            assert bound <= 2.0, f"{what}: traffic still flowed {bound:.2f} s after the change"
            return bound
        assert attempt - started < 10, f"{what}: traffic still flows after 10 s"


def ensure_reaches(lab: Lab, user: str, port: int) -> None:
    """Bring ``user`` back to a working tunnel to the app's ``port``, whatever an
    earlier test left behind (disabled, session expired, device revoked): each
    test states its own starting point instead of relying on the order tests run in."""
    if tcp_connects(lab, user, port, SURE_TIMEOUT):
        return
    lab.admin.patch(f"/v1/users/{user}", {"disabled": False})
    lab.client_login(user)
    lab.client_up(user, force=True)
    wait_for(lambda: tcp_connects(lab, user, port, SURE_TIMEOUT), 30, f"{user} reaches port {port} again")


def address(lab: Lab, user: str) -> str:
    return str(run_sql(lab.controller, f"select address from devices where id = {lab.device_id(user)}")[0][0])


def serving_connector(lab: Lab) -> int:
    """Which connector the gateway sends the LAN to now: the peer whose allowed IPs hold it."""
    gw = lab.topo.run("gw", ["wg", "show", lab.topo.wg_interface("gw"), "allowed-ips"]).stdout
    holder = next(line.split()[0] for line in gw.splitlines() if str(lab.topo.lan) in line.split()[1:])
    for i in (1, 2):
        key = lab.topo.run(f"cn{i}", ["wg", "show", lab.topo.wg_interface(f"cn{i}"), "public-key"]).stdout
        if key.strip() == holder:
            return i
    raise AssertionError(f"no connector holds {lab.topo.lan}:\n{gw}")
