"""A segment deployment on an :class:`~zerogate.testbed.sshhosts.SshFleet`: for the
segment end-to-end tests and the segment demo.

``SegmentLab(fleet, tmp)`` runs, each the real thing:

- a :class:`LocalController` on 127.0.0.1 in the root namespace, with a
  bootstrapped admin whose requests go through :class:`SegmentApi`;
- a :class:`Relay` that makes that controller answer on 127.0.0.1 inside the
  fleet's server namespace (:func:`forward_into`), where the segment server runs;
- a :class:`SegmentServer`: a state directory holding the fleet's key pair (the
  one every host authorizes), ``zerogate segment enroll`` with an install
  string, then ``zerogate segment run`` in the server namespace, logging to a
  file, with the short intervals of :data:`FAST_SETTINGS`.

:func:`start_host_nginx` starts the testbed's nginx (the same configuration as
the data-plane app host) on a fleet host. :func:`host_key_fingerprint` is the
fingerprint an admin would check on the host before trusting it.

``close`` stops what the lab started, by PID, in reverse order, and never
raises; the fleet removes its namespaces and account itself.

Errors: :class:`SegmentLabError` (a :class:`TestbedError`) when the controller
answers a request with another status than expected or an app does not start;
:meth:`SegmentLab.wait` raises :class:`TimeoutError` ending with the server's log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerogate.netops.command import spawn
from zerogate.netops.command import stop as stop_processes
from zerogate.netops.controller_api import ControllerClient
from zerogate.testbed.apps import Nginx, netns_launcher, render_nginx_conf
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import LocalController, zerogate_argv
from zerogate.testbed.sshhosts import SshFleet, SshHost, call_in_netns
from zerogate.testbed.topology import TestbedError

__all__ = [
    "FAST_SETTINGS",
    "POLL_INTERVAL",
    "Relay",
    "SegmentApi",
    "SegmentLab",
    "SegmentLabError",
    "SegmentServer",
    "forward_into",
    "host_key_fingerprint",
    "start_host_nginx",
]

# A server that reads, reports and re-polls every second or two: a run takes
# seconds instead of the production minutes.
FAST_SETTINGS = {
    "ZEROGATE_SEGMENT_COLLECT_INTERVAL": "1",
    "ZEROGATE_SEGMENT_REPORT_INTERVAL": "1",
    "ZEROGATE_SEGMENT_WATCH_SECONDS": "2",
    "ZEROGATE_SEGMENT_LOG_LEVEL": "debug",
}
POLL_INTERVAL = 0.2  # seconds between two looks at the controller while waiting
STOP_TIMEOUT = 15.0
_LOG_TAIL_CHARS = 3000


class SegmentLabError(TestbedError):
    """A request got another answer than expected, or an app did not start; the message says which."""


# -- the controller, reachable from the server namespace ---------------------------


class Relay:
    """127.0.0.1:``port`` inside ``ns`` relays every connection to 127.0.0.1:``port``
    of this process's namespace. One thread accepts, two pump each connection."""

    def __init__(self, ns: str, port: int) -> None:
        self.ns, self.port = ns, port
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._guard = threading.Lock()
        self._listener = call_in_netns(ns, self._listen, timeout=10)
        self._acceptor = threading.Thread(target=self._accept, name=f"relay-{ns}", daemon=True)
        self._acceptor.start()

    def _listen(self) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        return s

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                inner, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                outer = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                outer.settimeout(None)
            except OSError:
                inner.close()  # the controller is not there: the caller sees a closed connection
                continue
            with self._guard:
                self._open |= {inner, outer}
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and cut every relayed connection."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        with self._guard:
            sockets, self._open = self._open, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._acceptor.join(5)


def forward_into(ns: str, port: int) -> Relay:
    """127.0.0.1:``port`` inside ``ns`` relays to 127.0.0.1:``port`` here (the controller)."""
    return Relay(ns, port)


# -- the admin's requests ---------------------------------------------------------------


@dataclass
class SegmentApi:
    """An admin's requests to the controller; each checks the status it expects."""

    client: ControllerClient

    def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        """The decoded answer; :class:`SegmentLabError` on another status below 400
        (:class:`~zerogate.netops.controller_api.ApiError` from 400 on)."""
        r = self.client.request(method, path, json=body)
        if r.status_code != status:
            raise SegmentLabError(f"{method} {path} answered {r.status_code}, not {status}: {r.text[:500]}")
        return r.json() if r.content else None

    def create_server(self, name: str) -> str:
        """A segment server object and a provisioning key for it: the install string."""
        self.call("POST", "/v1/segment-servers", {"name": name}, 201)
        key = self.call("POST", f"/v1/segment-servers/{name}/provisioning-keys", {}, 201)
        return str(key["install_string"])

    def add_asset(self, name: str, address: str, server: str, ssh_user: str) -> dict[str, Any]:
        body = {"name": name, "address": address, "server": server, "ssh_user": ssh_user}
        return dict(self.call("POST", "/v1/segment/assets", body, 201))

    def asset(self, name: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/v1/segment/assets/{name}"))

    def trust(self, name: str, fingerprint: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/v1/segment/assets/{name}/trust", {"fingerprint": fingerprint}))

    def set_mode(self, name: str, mode: str, window_seconds: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": mode}
        if window_seconds is not None:
            body["window_seconds"] = window_seconds
        return dict(self.call("POST", f"/v1/segment/assets/{name}/mode", body))

    def flows(self, name: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/v1/segment/assets/{name}/flows"))

    def propose(self, name: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/v1/segment/assets/{name}/propose", {}))

    def approve(self, name: str, rule_id: int) -> dict[str, Any]:
        return dict(self.call("POST", f"/v1/segment/assets/{name}/rules/{rule_id}/approve", {}))

    def unprotect(self, name: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/v1/segment/assets/{name}/unprotect", {}))


# -- the segment server -------------------------------------------------------------------


@dataclass
class SegmentServer:
    """``zerogate segment`` in the fleet's server namespace, with its state directory and log."""

    fleet: SshFleet
    state_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    # The assets' directory for our files (the setting asset_dir): the fleet's hosts share
    # this machine's file system, so a root login's default would be left in /var/lib.
    asset_dir: Path | None = None

    def _env(self, settings: Mapping[str, str]) -> dict[str, str]:
        extra = {"ZEROGATE_SEGMENT_ASSET_DIR": str(self.asset_dir)} if self.asset_dir else {}
        return os.environ | dict(settings) | extra

    def enroll(self, install_string: str, user: str) -> str:
        """Put the fleet's key pair in a new state directory (enroll keeps it), enroll; its output."""
        self.state_dir.mkdir(mode=0o700, parents=True)
        key = self.state_dir / "ssh_ed25519"
        shutil.copy(self.fleet.key, key)
        key.chmod(0o600)
        shutil.copy(self.fleet.key.with_suffix(".pub"), key.with_suffix(".pub"))
        argv = [*zerogate_argv(), "segment", "enroll", install_string, "--state-dir", str(self.state_dir),
                "--user", user]  # fmt: skip
        return self.fleet.run(self.fleet.server_ns, argv, timeout=60).stdout

    def start(self, settings: Mapping[str, str] = FAST_SETTINGS) -> None:
        argv = [*zerogate_argv(), "segment", "run", "--state-dir", str(self.state_dir)]
        with self.log.open("ab") as out:  # the child keeps its own copy
            self.process = spawn(
                ["ip", "netns", "exec", self.fleet.server_ns, *argv],
                stdout=out,
                env=self._env(settings),
            )

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; True when it was running and ended on SIGTERM."""
        proc, self.process = self.process, None
        return proc is not None and stop_processes([proc], timeout)[0]

    def break_glass(self) -> subprocess.CompletedProcess[str]:
        """``zerogate segment break-glass --all`` from the cached inventory (the controller may be down)."""
        argv = [*zerogate_argv(), "segment", "break-glass", "--all", "--state-dir", str(self.state_dir)]
        if self.asset_dir:
            argv = ["env", f"ZEROGATE_SEGMENT_ASSET_DIR={self.asset_dir}", *argv]
        return self.fleet.run(self.fleet.server_ns, argv, check=False, timeout=120)

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log yet)"


# -- the whole lab ----------------------------------------------------------------------------


@dataclass
class SegmentLab:
    """Controller, relay and segment server for ``fleet``; see the module docstring."""

    fleet: SshFleet
    tmp: Path
    server_name: str = "seg"
    controller: LocalController = field(init=False)
    server: SegmentServer = field(init=False)
    api: SegmentApi = field(init=False)
    relay: Relay | None = None

    def __post_init__(self) -> None:
        self.controller = LocalController(self.tmp / "controller")
        self.server = SegmentServer(self.fleet, self.tmp / "segment", self.tmp / "segment.log")

    def start_controller(self) -> None:
        """Initialise and start the controller and sign the first admin in."""
        self.controller.init().start()
        self.api = SegmentApi(self.controller.bootstrap_admin().client)

    def enroll_server(self, user: str) -> str:
        """Create the segment server object, relay the controller into the server
        namespace and enroll there; ``user`` is the assets' account (for the sudoers
        line). Returns enroll's output."""
        install_string = self.api.create_server(self.server_name)
        if user == "root":  # another login writes below its own home, which the fleet removes
            self.server.asset_dir = self.tmp / "on-host"
        self.relay = forward_into(self.fleet.server_ns, self.controller.port)
        return self.server.enroll(install_string, user)

    def start_server(self, settings: Mapping[str, str] = FAST_SETTINGS) -> None:
        """``zerogate segment run`` in the server namespace (after :meth:`enroll_server`)."""
        self.server.start(settings)

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> float:
        """Seconds until ``check`` held (polled every :data:`POLL_INTERVAL`); on
        timeout :class:`TimeoutError` with the server's log tail."""
        try:
            return wait_for(check, timeout, what, interval=POLL_INTERVAL)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- segment server log\n{self.server.log_tail()}") from None

    def stop_controller(self) -> None:
        self.controller.stop()

    def close(self) -> None:
        """Server, relay, controller, by PID; never raises."""
        with contextlib.suppress(Exception):
            self.server.stop()
        if self.relay is not None:
            with contextlib.suppress(Exception):
                self.relay.close()
            self.relay = None
        with contextlib.suppress(Exception):
            self.controller.stop()

    def __enter__(self) -> SegmentLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- on the hosts -------------------------------------------------------------------------------


def host_key_fingerprint(fleet: SshFleet, host: SshHost) -> str:
    """``SHA256:...`` of the host's key, as ``ssh-keygen -l`` prints it."""
    line = f"{host.address} {host.host_key}\n"
    out = fleet.run(fleet.server_ns, ["ssh-keygen", "-l", "-E", "sha256", "-f", "-"], input=line).stdout
    return out.split()[1]


def start_host_nginx(fleet: SshFleet, host: SshHost, timeout: float = 20.0) -> Nginx:
    """The testbed's nginx (port 80 echoes the client's address, 8080 a fixed body)
    on ``host``'s address, awaited until it answers there. The caller stops it by PID
    (the fleet kills what is left in its namespaces)."""
    program = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if program is None:
        raise SegmentLabError("nginx not found; install the Debian package 'nginx-light'")
    base = fleet.tmp / f"nginx-{host.index}"
    (base / "temp").mkdir(parents=True)
    conf, log = base / "nginx.conf", base / "error.log"
    conf.write_text(render_nginx_conf(host.address, base))
    proc = netns_launcher(host.ns)([program, "-p", str(base), "-c", str(conf), "-e", str(log)], log)
    nginx = Nginx(host.address, proc, log)
    probe = ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1",
             nginx.url(host.address)]  # fmt: skip

    def answers() -> bool:
        if proc.poll() is not None:
            raise SegmentLabError(f"nginx on {host.ns} exited with {proc.returncode}:\n{_tail(log)}")
        return fleet.run(host.ns, probe, check=False, timeout=5).stdout == "200"

    try:
        wait_for(answers, timeout, f"nginx on {host.ns}", interval=POLL_INTERVAL)
    except TimeoutError as exc:
        proc.kill()
        proc.wait(5)
        raise SegmentLabError(f"{exc}:\n{_tail(log)}") from None
    return nginx


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return "(no log)"
