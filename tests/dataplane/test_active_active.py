"""An active-active connector group end to end: three connectors of group ``site``
(SNAT on, so nginx sees the connector's LAN address and the address tells which
connector carried a connection) in one topology with one client.

- fresh connections spread over all three;
- a draining connector gets no new connections, while a flow it carried goes on;
- one connector killed: fresh connections all succeed through the two others,
  and a long-running flow through a survivor keeps working across the kill.

The tests share one deployment and run in order; each states what it starts from.
The topology uses the testbed's slot-numbered names (``zg{k}-*``; the gateway's
per-connector interfaces are ``zg{k}gwa<slot>``), which the slot sweep removes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zerogate.testbed.apps import start_nginx
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.topology import Topology

pytestmark = [pytest.mark.xdist_group("active_active"), pytest.mark.slow]

CONNECTORS = (1, 2, 3)
BURST = 45  # fresh connections per count: P(a connector of three gets none) ~ 3 * (2/3)^45 < 1e-7

# One fresh TCP connection per request (HTTP/1.0: nginx closes it), each from a new source
# port; prints the addresses nginx saw ("error" for a failed connection) as a JSON list.
BURST_SCRIPT = r"""
import json, socket, sys
address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = []
for _ in range(count):
    try:
        with socket.create_connection((address, port), timeout=3) as s:
            s.settimeout(3)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        seen.append(data.decode().rstrip("\n").rsplit("\n", 1)[-1].strip())
    except OSError as exc:
        seen.append("error")
print(json.dumps(seen))
"""

# One long-running connection: a keep-alive request every 50 ms until STOPFILE exists
# (at most 120 s). Prints "first ADDRESS" at once, then a JSON summary at the end.
LONG_SCRIPT = r"""
import json, os, socket, sys, time
address, port, stopfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen, error, count = set(), None, 0
try:
    with socket.create_connection((address, port), timeout=3) as s:
        s.settimeout(5)
        started = time.monotonic()
        while not os.path.exists(stopfile) and time.monotonic() - started < 120:
            s.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError("closed by the server")
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
            while len(body) < length:
                body += s.recv(4096)
            addr = body.decode().strip()
            if not seen:
                print("first", addr, flush=True)
            seen.add(addr)
            count += 1
            time.sleep(0.05)
except OSError as exc:
    error = str(exc) or type(exc).__name__
print(json.dumps({"seen": sorted(seen), "requests": count, "error": error}), flush=True)
"""


@dataclass
class LongFlow:
    proc: subprocess.Popen[bytes]
    log: Path
    stopfile: Path

    def first(self) -> str:
        def started() -> bool:
            return "first " in self.log.read_text() or self.proc.poll() is not None

        wait_for(started, 15, f"the long flow answered once ({self.log})")
        text = self.log.read_text()
        assert "first " in text, f"the long flow failed at once: {text}"
        return text.split("first ", 1)[1].split()[0]

    def finish(self) -> dict[str, object]:
        self.stopfile.touch()
        self.proc.wait(timeout=15)
        return dict(json.loads(self.log.read_text().strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Topology(clients=1, connectors=len(CONNECTORS), attacker=False) as topo:
        start_nginx(topo)
        lab = Lab(topo)
        try:
            lab.start_controller()
            lab.create_org(snat=True)
            group = lab.admin.patch("/v1/connector-groups/site", {"mode": "active-active"})
            assert group["mode"] == "active-active"
            lab.start_gateway()
            for i in CONNECTORS:
                lab.start_connector(i)
            lab.wait_connectors_up([f"cn{i}" for i in CONNECTORS])
            lab.client_login("alice")
            lab.client_up("alice")
            yield lab
        except BaseException:
            dump(lab)
            raise
        finally:
            lab.close()


def dump(lab: Lab) -> None:
    for role in ("gw", *(f"cn{i}" for i in CONNECTORS)):
        print(f"--- {role} log (tail) ---\n{lab.log(role)[-4000:]}")
    for argv in (["ip", "rule"], ["nft", "list", "table", "inet", "zerogate_spread"], ["wg", "show"]):
        print(lab.topo.run("gw", argv, check=False).stdout)


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(lab)


def lan_address(lab: Lab, i: int) -> str:
    return str(lab.topo.connector_lan(i))


def burst(lab: Lab, count: int = BURST) -> Counter[str]:
    """Fresh connections from alice to the app: how many each source address (connector) got."""
    argv = [sys.executable, "-c", BURST_SCRIPT, str(lab.topo.app_address), "80", str(count)]
    r = lab.topo.run(lab.client_ns("alice"), argv, check=True, timeout=120)
    return Counter(json.loads(r.stdout))


def long_flow(lab: Lab, name: str) -> LongFlow:
    tmp = lab.topo.tmp
    log, stopfile = tmp / f"long-{name}.log", tmp / f"long-{name}.stop"
    argv = [sys.executable, "-c", LONG_SCRIPT, str(lab.topo.app_address), "80", str(stopfile)]
    proc = lab.topo.popen(lab.client_ns("alice"), argv, log=log)
    return LongFlow(proc, log, stopfile)


def flows_on(lab: Lab, wanted: set[str], name: str) -> dict[str, LongFlow]:
    """Long flows until each address in ``wanted`` carries one (the others are stopped)."""
    found: dict[str, LongFlow] = {}
    for n in range(40):
        flow = long_flow(lab, f"{name}{n}")
        addr = flow.first()
        if addr in wanted and addr not in found:
            found[addr] = flow
            if set(found) == wanted:
                return found
        else:
            flow.finish()
    raise AssertionError(f"40 long flows did not cover {sorted(wanted)}: {sorted(found)}")


def spread_over(lab: Lab, names: set[str]) -> None:
    """Wait until the gateway spreads new flows over exactly ``names``."""

    def spreads() -> bool:
        lines = [line for line in lab.log("gw").splitlines() if "active-active group site:" in line]
        if not lines:
            return False
        shares = lines[-1].split("spread over ", 1)[1].split(" (of", 1)[0]
        return {part.split()[0] for part in shares.split(", ")} == names

    wait_for(spreads, 20, f"the gateway spreads group site over {sorted(names)}")


def test_new_connections_spread_over_all_three(lab: Lab) -> None:
    spread_over(lab, {f"cn{i}" for i in CONNECTORS})
    seen = burst(lab)
    assert seen["error"] == 0, f"failed connections: {seen}"
    assert set(seen) == {lan_address(lab, i) for i in CONNECTORS}, seen
    # each connector has its own interface on the gateway, on its own port of the range
    links = lab.topo.run("gw", ["wg", "show", "all", "listen-port"]).stdout.split()
    ports = {int(p) for p in links[1::2]}
    assert {51820, 51822, 51823, 51824} <= ports, links
    marks = lab.topo.run("gw", ["ip", "rule"]).stdout
    assert "fwmark 0x1000000/0xff000000" in marks and "fwmark 0x3000000/0xff000000" in marks, marks


def test_draining_connector_gets_no_new_flows_but_keeps_its_own(lab: Lab) -> None:
    spread_over(lab, {f"cn{i}" for i in CONNECTORS})
    drained = lan_address(lab, 2)
    flows = flows_on(lab, {drained}, "drain")
    try:
        out = lab.admin.patch("/v1/connectors/cn2", {"draining": True})
        assert out["draining"] is True
        spread_over(lab, {"cn1", "cn3"})
        seen = burst(lab)
        assert seen["error"] == 0, f"failed connections: {seen}"
        assert set(seen) == {lan_address(lab, 1), lan_address(lab, 3)}, seen
        listed = {c["name"]: c["draining"] for c in lab.admin.get("/v1/connectors")}
        assert listed == {"cn1": False, "cn2": True, "cn3": False}
    finally:
        lab.admin.patch("/v1/connectors/cn2", {"draining": False})
    summary = flows[drained].finish()
    assert summary["error"] is None and summary["seen"] == [drained], summary
    assert isinstance(summary["requests"], int) and summary["requests"] > 5, summary
    spread_over(lab, {f"cn{i}" for i in CONNECTORS})


def test_killed_member_moves_only_its_share(lab: Lab) -> None:
    spread_over(lab, {f"cn{i}" for i in CONNECTORS})
    victim, survivor = lan_address(lab, 1), lan_address(lab, 3)
    flows = flows_on(lab, {victim, survivor}, "kill")
    flows[victim].finish()  # it would break with its connector (SNAT on): stop it first
    started = time.monotonic()
    lab.crash_connector(1)
    wait_for(lambda: "connector cn1 is down" in lab.log("gw"), 10, "the gateway saw cn1 go down")
    spread_over(lab, {"cn2", "cn3"})
    took = time.monotonic() - started
    seen = burst(lab)
    assert seen["error"] == 0, f"failed connections after the kill: {seen}"
    assert set(seen) == {lan_address(lab, 2), survivor}, seen
    summary = flows[survivor].finish()
    assert summary["error"] is None and summary["seen"] == [survivor], summary
    print(f"active-active: cn1 killed, its buckets moved after {took:.2f} s; survivor flow intact")


def test_gateway_restart_recreates_and_stop_removes_everything(lab: Lab) -> None:
    """After a crash the gateway takes over what its last run left (no duplicates);
    a clean stop removes the per-connector interfaces, rules, routing tables and marks.
    Runs last: it stops the gateway."""
    t = lab.topo
    links = [f"{t.wg_interface('gw')}a{slot}" for slot in (1, 2, 3)]

    def ours() -> tuple[list[str], list[str]]:
        names = t.run("gw", ["ip", "-br", "link"]).stdout.split()
        rules = [line for line in t.run("gw", ["ip", "rule"]).stdout.splitlines() if "fwmark" in line]
        return [n for n in links if n in names], rules

    proc = lab.daemons.pop("gw")
    proc.kill()  # our own child, by PID: its interfaces, rules and table stay behind
    proc.wait(timeout=10)
    assert ours()[0] == links
    offset = len(lab.log("gw"))
    lab.restart("gw")
    wait_for(lambda: "applied revision" in lab.log("gw")[offset:], 20, "the restarted gateway applied")
    spread_over(lab, {"cn2", "cn3"})  # cn1 is still dead from the test before
    seen = burst(lab)
    assert seen["error"] == 0 and set(seen) == {lan_address(lab, 2), lan_address(lab, 3)}, seen
    present, rules = ours()
    assert present == links and len(rules) == 3, rules

    lab.stop("gw")
    assert ours() == ([], [])
    table = t.run("gw", ["nft", "list", "table", "inet", "zerogate_spread"], check=False)
    assert table.returncode != 0
    assert t.run("gw", ["ip", "route", "show", "table", "23041"], check=False).stdout.strip() == ""
