"""Run a real controller on this machine: for the demo, the tests and the benchmarks.

:class:`LocalController` initialises a deployment in a directory, starts
``zerogate controller run`` as a child process on 127.0.0.1 (a free port),
waits until it answers, and stops it (by its PID) on exit. The bootstrap
helpers play the part of the admin's authenticator app: they compute TOTP
codes from the secret the controller handed out, exactly as a phone would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from zerogate.netops.command import run, spawn
from zerogate.netops.controller_api import ControllerClient, fetch_ca
from zerogate.pki.totp import time_step, totp_code

_LISTENING = re.compile(r"listening on https://[^:]+:(\d+)")


# Everything a test suite or demo does comes from 127.0.0.1, so the per-source
# limits on refused provisioning keys would throttle unrelated tests, and
# aggregated refusal records would hide the one a test looks for. Local
# deployments get a high limit and a record per refusal; tests of the throttle
# and of aggregation set their own values through ``extra_env``, which wins.
LOCAL_DEFAULTS = {
    "ZEROGATE_KEY_FAILURES_PER_SOURCE": "10000",
    "ZEROGATE_AUDIT_REFUSAL_WINDOW_SECONDS": "0",
}


class LocalControllerError(Exception):
    """The controller did not initialise or start; the message includes its output."""


def zerogate_argv() -> list[str]:
    return [sys.executable, "-m", "zerogate.cli.main"]


# The previous time step is handed out only while the current one has at least this
# long to run: far longer than any request takes, even on a loaded machine.
PREVIOUS_STEP_MARGIN = 20.0


@dataclass
class Authenticator:
    """TOTP codes for one account, never reusing a time step (the server refuses replays)."""

    secret: str
    last_step: int = -1

    def code(self) -> str:
        while True:
            now = time.time()
            step = time_step(now)
            # The server accepts one step either side of its own clock. The previous
            # step only early in the current one: a step boundary passing mid-request
            # would make it two steps old. The next step stays valid across a boundary.
            # Three codes per 30 s instead of two spare most tests a wait for the next step.
            early = (step + 1) * 30 - now > PREVIOUS_STEP_MARGIN
            for candidate in (step - 1, step, step + 1) if early else (step, step + 1):
                if candidate > self.last_step:
                    self.last_step = candidate
                    return totp_code(self.secret, candidate * 30 + 1)
            time.sleep(max(0.05, (step + 1) * 30 - now))


@dataclass
class AccountSession:
    username: str
    password: str
    authenticator: Authenticator
    token: str
    client: ControllerClient


@dataclass
class LocalController:
    data_dir: Path
    database: str = ""
    host: str = "127.0.0.1"  # listen address, also put in the server certificate
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    ca_pin: str = ""
    ca_pem: bytes = b""
    bootstrap_code: str = ""
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    sessions: list[AccountSession] = field(default_factory=list)

    # -- lifecycle

    def init(self) -> Self:
        argv = [
            *zerogate_argv(),
            "controller",
            "init",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"{self.host}:0",
            "--server-name",
            self.host,
            "--server-name",
            "localhost",
            "--json",
        ]
        if self.database:
            argv += ["--database", self.database]
        r = run(argv, env=self._env(), timeout=120, check=False)
        if r.returncode != 0:
            raise LocalControllerError(
                f"controller init failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}"
            )
        info = json.loads(r.stdout)
        self.ca_pin, self.bootstrap_code = info["ca_pin"], info["bootstrap_code"]
        return self

    def start(self, timeout: float = 30.0) -> Self:
        log_path = self.log_path or self.data_dir.parent / f"{self.data_dir.name}-controller.log"
        self.log_path = log_path
        offset = len(self.output())  # a restart appends: look only at the new output
        log = open(log_path, "ab")  # handed to the child; our copy is closed right after
        argv = [
            *zerogate_argv(),
            "controller",
            "run",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"{self.host}:{self.port}",  # a restart keeps the port the devices know
        ]
        self.process = spawn(argv, stdout=log, env=self._env())
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalControllerError(
                    f"controller exited with {self.process.returncode}:\n{self.output()}"
                )
            m = _LISTENING.search(self.output()[offset:])
            if m:
                self.port = int(m.group(1))
                self.url = f"https://{self.host}:{self.port}"
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise LocalControllerError(f"controller did not start within {timeout:.0f} s:\n{self.output()}")
        self.ca_pem = fetch_ca(self.url, self.ca_pin)
        with self.client() as c:
            while True:
                try:
                    c.get("/v1/health")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        # Close our signed-in clients first: an open keep-alive connection makes
        # the server wait out its graceful-shutdown timeout.
        for session in self.sessions:
            session.client.close()
        self.sessions.clear()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.stop()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except FileNotFoundError:
            return ""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
        return env | {"LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1"} | LOCAL_DEFAULTS | self.extra_env

    # -- API access

    def client(self, token: str | None = None) -> ControllerClient:
        return ControllerClient(self.url, self.ca_pem, token=token, timeout=30)

    def bootstrap_admin(
        self,
        username: str = "admin",
        password: str = "correct horse battery staple",  # noqa: S107 - throwaway local deployments
    ) -> AccountSession:
        with self.client() as c:
            enrollment = c.post(
                "/v1/auth/bootstrap",
                {"code": self.bootstrap_code, "username": username, "password": password},
            )
        return self._finish_enrollment(username, password, enrollment)

    def activate(
        self,
        username: str,
        activation_code: str,
        password: str = "user password 12345",  # noqa: S107
    ) -> AccountSession:
        auth = self.activate_account(username, activation_code, password)
        return self.login(username, password, auth)

    def activate_account(self, username: str, activation_code: str, password: str) -> Authenticator:
        """Set the password and confirm TOTP, without signing in (the caller signs in elsewhere)."""
        with self.client() as c:
            enrollment = c.post(
                "/v1/auth/activate",
                {"username": username, "activation_code": activation_code, "password": password},
            )
        return self._confirm_totp(username, password, enrollment)

    def _finish_enrollment(self, username: str, password: str, enrollment: dict[str, Any]) -> AccountSession:
        return self.login(username, password, self._confirm_totp(username, password, enrollment))

    def _confirm_totp(self, username: str, password: str, enrollment: dict[str, Any]) -> Authenticator:
        auth = Authenticator(enrollment["totp_secret"])
        with self.client() as c:
            c.post("/v1/auth/totp/confirm", {"username": username, "password": password, "totp": auth.code()})
        return auth

    def login(self, username: str, password: str, auth: Authenticator) -> AccountSession:
        with self.client() as c:
            r = c.post("/v1/auth/login", {"username": username, "password": password, "totp": auth.code()})
        session = AccountSession(username, password, auth, r["token"], self.client(r["token"]))
        self.sessions.append(session)
        return session

    def create_user(self, admin: AccountSession, username: str, groups: list[str]) -> AccountSession:
        created = admin.client.post("/v1/users", {"username": username, "groups": groups})
        return self.activate(username, created["activation_code"])
