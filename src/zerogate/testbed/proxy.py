"""A private squid on 127.0.0.1: the HTTP CONNECT proxy for tests of devices behind a proxy.

:class:`Squid` writes its configuration, logs, pid file and working directory
under the directory it is given (no disk cache, no other state), listens on a
free loopback port, lets only localhost use it, allows CONNECT only to the
ports it is told, and logs every request to ``access.log`` (a CONNECT tunnel is
logged when it closes). It is stopped by its PID: SIGTERM, then SIGKILL.

Squid started as root drops to the ``proxy`` user (Debian's package default)
before it opens its access log, so the directory is handed to that user and
every directory above it must be enterable by it: pytest's ``tmp_path`` (under
a 0700 directory) is not; a ``tempfile.TemporaryDirectory()`` in /tmp is.
Errors: :class:`ProxyError`, whose message ends with the tail of squid's own log.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from zerogate.netops.command import spawn
from zerogate.testbed.ports import free_port
from zerogate.testbed.topology import TestbedError

__all__ = ["ProxyError", "Squid", "render_squid_conf", "squid_binary"]

SQUID_USER = "proxy"
_LOG_TAIL = 20


class ProxyError(TestbedError):
    """squid is missing, did not start, or did not stop."""


def squid_binary() -> str | None:
    return shutil.which("squid") or shutil.which("squid", path="/usr/sbin:/sbin")


def render_squid_conf(base: Path, port: int, connect_ports: Sequence[int]) -> str:
    ports = " ".join(str(int(p)) for p in connect_ports)
    return f"""\
http_port 127.0.0.1:{port}
pid_filename {base}/squid.pid
cache_log {base}/cache.log
access_log stdio:{base}/access.log squid
cache_store_log none
coredump_dir {base}
netdb_filename none
cache deny all
cache_mem 8 MB
shutdown_lifetime 0 seconds
acl zg_connect method CONNECT
acl zg_ports port {ports}
http_access deny zg_connect !zg_ports
http_access allow localhost
http_access deny all
"""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Squid:
    base: Path
    connect_ports: tuple[int, ...]
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def service_name(self) -> str:
        """Names squid's shared-memory segments: unique per instance."""
        return f"zgsquid{self.port}"

    @property
    def access_log(self) -> Path:
        return self.base / "access.log"

    def start(self, timeout: float = 30.0) -> Self:
        binary = squid_binary()
        if binary is None:
            raise ProxyError("squid is not installed (Debian package 'squid'; scripts/bootstrap installs it)")
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.base / "squid.conf"
        conf.write_text(render_squid_conf(self.base, self.port, self.connect_ports))
        if os.geteuid() == 0:
            user = pwd.getpwnam(SQUID_USER)
            os.chown(self.base, user.pw_uid, user.pw_gid)
        argv = [binary, "-N", "-n", self.service_name, "-f", str(conf)]
        with open(self.base / "squid.out", "ab") as out:
            self.process = spawn(argv, stdout=out)
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.process.poll() is not None:
                raise ProxyError(f"squid exited with status {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ProxyError(
                    f"squid did not listen on port {self.port} within {timeout:g} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)  # polling interval
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop squid by its PID; its logs are complete afterwards."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        # A squid that died abnormally leaves its shared-memory segments behind.
        for segment in Path("/dev/shm").glob(f"{self.service_name}-*.shm"):  # noqa: S108 - squid names them
            segment.unlink(missing_ok=True)

    def requests(self, method: str) -> list[str]:
        """The access-log lines for ``method`` (e.g. CONNECT) so far."""
        try:
            lines = self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if f" {method} " in line]

    def log_tail(self) -> str:
        parts = []
        for name in ("cache.log", "squid.out"):
            try:
                lines = (self.base / name).read_text(errors="replace").splitlines()[-_LOG_TAIL:]
            except FileNotFoundError:
                continue
            parts.append(f"--- {name} ---\n" + "\n".join(lines))
        return "\n".join(parts) or "(squid wrote no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
