"""A whole zerogate deployment on a :class:`Topology`: controller, gateway,
connectors and clients, each the real ``zerogate`` command in its namespace.

Used by the end-to-end tests, ``scripts/demo.py`` and the data-plane benchmark.
The organisation it creates:

- connector group ``site`` fronting the LAN (SNAT on), connectors ``cn1``..``cnN``
- applications ``web`` (nginx, TCP 80), ``ssh`` (TCP 22), ``db`` (PostgreSQL, TCP 5432)
- groups ``eng`` (policy ``eng-apps``: web + ssh) and ``dba`` (policy ``dba-db``: db)
- users ``alice`` (eng) on client 1 and ``dave`` (dba) on client 2
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerogate.netops.command import run
from zerogate.netops.controller_api import ControllerClient
from zerogate.testbed.localrun import Authenticator, LocalController, zerogate_argv
from zerogate.testbed.topology import Topology

USERS = {"alice": "eng", "dave": "dba"}
PASSWORD = "correct horse battery 42"  # noqa: S105 - a throwaway test account


@dataclass
class Person:
    username: str
    password: str
    auth: Authenticator
    client_index: int


@dataclass
class Lab:
    topo: Topology
    database: str = ""
    controller: LocalController = field(init=False)
    admin: ControllerClient = field(init=False)
    admin_token: str = ""
    people: dict[str, Person] = field(default_factory=dict)
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    spawned: dict[str, tuple[str, list[str], dict[str, str] | None]] = field(default_factory=dict)

    # -- control plane

    def start_controller(self, extra_env: dict[str, str] | None = None) -> None:
        self.controller = LocalController(
            self.topo.tmp / "controller",
            database=self.database,
            host=str(self.topo.host_address),
            log_path=self.topo.tmp / "controller.log",
            extra_env=extra_env or {},
        )
        self.controller.init().start()
        session = self.controller.bootstrap_admin("admin", "lab admin password 12345")
        self.admin_token = session.token
        self.admin = session.client

    def stop_controller(self) -> None:
        self.controller.stop()

    def restart_controller(self) -> None:
        """Start the stopped controller again (same port and data) and reconnect the admin."""
        self.controller.start()
        self.admin = ControllerClient(self.controller.url, self.controller.ca_pem, token=self.admin_token)

    def create_org(self, *, snat: bool = True) -> None:
        a, t = self.admin, self.topo
        app = str(t.app_address)
        a.post("/v1/connector-groups", {"name": "site", "subnets": [str(t.lan)], "snat": snat})
        for name, port in (("web", "80"), ("ssh", "22"), ("db", "5432")):
            a.post(
                "/v1/applications",
                {
                    "name": name,
                    "connector_group": "site",
                    "destinations": [{"address": f"{app}/32", "protocol": "tcp", "ports": [port]}],
                },
            )
        a.post("/v1/groups", {"name": "eng"})
        a.post("/v1/groups", {"name": "dba"})
        a.post("/v1/policies", {"name": "eng-apps", "groups": ["eng"], "applications": ["web", "ssh"]})
        a.post("/v1/policies", {"name": "dba-db", "groups": ["dba"], "applications": ["db"]})
        a.post("/v1/gateways", {"name": "edge", "public_endpoint": str(t.gateway_address)})
        for i, (user, group) in enumerate(USERS.items(), start=1):
            created = a.post("/v1/users", {"username": user, "groups": [group]})
            auth = self.controller.activate_account(user, created["activation_code"], PASSWORD)
            self.people[user] = Person(user, PASSWORD, auth, i)

    # -- commands in namespaces

    def zg(
        self, ns: str, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> str:
        r = self.topo.run(ns, [*zerogate_argv(), *args], input=input, check=False, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(
                f"zerogate {' '.join(args[:3])} in {ns} failed ({r.returncode}):\n{r.stderr}{r.stdout}"
            )
        return r.stdout

    def state(self, role: str) -> Path:
        return self.topo.tmp / f"state-{role}"

    def _spawn(
        self, role: str, ns: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``env``: extra variables (e.g. ``ZEROGATE_CONNECTOR_VRRP_PEERS``) on top of ours."""
        log = self.topo.tmp / f"{role}.log"
        full_env = {**os.environ, **env} if env else None
        proc = self.topo.popen(ns, [*zerogate_argv(), *args, "--log-level", "debug"], log=log, env=full_env)
        self.daemons[role] = proc
        self.spawned[role] = (ns, args, env)
        return proc

    def log(self, role: str) -> str:
        try:
            return (self.topo.tmp / f"{role}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- data plane

    def start_gateway(self) -> None:
        key = self.admin.post("/v1/gateways/edge/provisioning-keys", {})["install_string"]
        self.zg("gw", "gateway", "enroll", key, "--state-dir", str(self.state("gw")), "--name", "edge")
        self._spawn(
            "gw",
            "gw",
            [
                "gateway",
                "run",
                "--state-dir",
                str(self.state("gw")),
                "--interface",
                self.topo.wg_interface("gw"),
            ],
        )

    def start_connector(self, i: int, *, enroll: bool = True, env: dict[str, str] | None = None) -> None:
        role = f"cn{i}"
        if enroll:
            key = self.admin.post("/v1/connector-groups/site/provisioning-keys", {})["install_string"]
            self.zg(role, "connector", "enroll", key, "--state-dir", str(self.state(role)), "--name", role)
        self._spawn(
            role,
            role,
            [
                "connector",
                "run",
                "--state-dir",
                str(self.state(role)),
                "--interface",
                self.topo.wg_interface(role),
            ],
            env,
        )

    def crash_connector(self, i: int) -> None:
        """Connector ``i`` dies as with its host: SIGKILL (by PID) to its keepalived
        (stopped first, so it cannot respawn its VRRP child or give up the virtual IP
        politely), to the daemon, and to the wireguard-go it started; a kernel
        WireGuard interface (which outlives its daemon) is deleted. The virtual IP
        stays on the dead connector's interface, as after a crash of keepalived."""
        role = f"cn{i}"
        pids = [_read_pid(self.state(role) / name) for name in ("keepalived.pid", "keepalived-vrrp.pid")]
        parent, child = pids
        with contextlib.suppress(ProcessLookupError):
            if parent:
                os.kill(parent, signal.SIGSTOP)
            if child:
                os.kill(child, signal.SIGKILL)
            if parent:
                os.kill(parent, signal.SIGKILL)
        proc = self.daemons.pop(role)
        proc.kill()
        proc.wait(timeout=10)
        ns = self.topo.ns(role)
        for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
            with contextlib.suppress(OSError, ValueError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                    os.kill(int(pid), signal.SIGKILL)
        self.topo.run(role, ["ip", "link", "del", self.topo.wg_interface(role)], check=False)

    def stop(self, role: str) -> None:
        proc = self.daemons.pop(role)
        proc.terminate()
        proc.wait(timeout=20)

    def restart(self, role: str) -> None:
        """Start ``role``'s daemon again with the same arguments (SIGTERM first if it runs)."""
        if role in self.daemons:
            self.stop(role)
        ns, args, env = self.spawned[role]
        self._spawn(role, ns, args, env)

    def client_login(self, user: str) -> str:
        p = self.people[user]
        ns = f"cl{p.client_index}"
        return self.zg(
            ns,
            "client",
            "login",
            "--url",
            self.controller.url,
            "--pin",
            self.controller.ca_pin,
            "--username",
            user,
            "--totp",
            p.auth.code(),
            "--password-stdin",
            "--state-dir",
            str(self.state(ns)),
            input=p.password + "\n",
        )

    def client_up(self, user: str, *, force: bool = False) -> dict[str, Any]:
        ns = f"cl{self.people[user].client_index}"
        out = self.zg(
            ns,
            "client",
            "up",
            "--state-dir",
            str(self.state(ns)),
            "--interface",
            self.topo.wg_interface(ns),
            "--name",
            f"{user}-laptop",
            "--json",
            *(["--force"] if force else []),
        )
        return dict(json.loads(out))

    def client_ns(self, user: str) -> str:
        return f"cl{self.people[user].client_index}"

    def device_id(self, user: str) -> int:
        info = json.loads((self.state(self.client_ns(user)) / "device.json").read_text())
        return int(info["device_id"])

    def wait_connectors_up(self, names: list[str], timeout: float = 20) -> None:
        def ready() -> bool:
            return all(f"connector {n} is up" in self.log("gw") for n in names)

        wait_for(ready, timeout, f"connectors {names} up at the gateway:\n{self.log('gw')[-3000:]}")

    def deploy(self, connectors: int = 1) -> None:
        """Controller, org, gateway, connectors; clients signed in and up."""
        self.start_controller()
        self.create_org()
        self.start_gateway()
        for i in range(1, connectors + 1):
            self.start_connector(i)
        self.wait_connectors_up([f"cn{i}" for i in range(1, connectors + 1)])
        for user in self.people:
            self.client_login(user)
            self.client_up(user)

    def close(self) -> None:
        for role in list(self.daemons):
            try:
                self.stop(role)
            except Exception:  # noqa: S110 - the topology kills what is left
                pass
        if hasattr(self, "admin"):
            self.admin.close()
        if hasattr(self, "controller"):
            self.controller.stop()


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 1 else None


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``check`` until true; return the seconds it took, or raise naming ``what``."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)
