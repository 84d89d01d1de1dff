"""Management-path checks: after the new rules are live, can an operator still get in?

:class:`SshBannerCheck` opens a fresh TCP connection and wants an ``SSH-`` banner
(the default for this host); an SSH target checks with a fresh login instead
(:class:`zerogate.deploy.firewall.targets.SshLoginCheck`).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str


class ManagementCheck(Protocol):
    def run(self) -> CheckResult: ...


def parse_check_target(text: str, default_port: int = 22) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``HOST`` -> (host, port)."""
    host, port = text.strip(), str(default_port)
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad check target {text!r}: use [ADDRESS]:PORT for IPv6")
        host, port = inner, rest[1:] or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad check target {text!r}: use HOST:PORT, e.g. 127.0.0.1:22")
    return host, int(port)


@dataclass(frozen=True)
class SshBannerCheck:
    """A fresh TCP connection that must yield an ``SSH-`` banner line within ``timeout`` seconds."""

    host: str
    port: int
    timeout: float = 5.0

    def run(self) -> CheckResult:
        where = f"{self.host}:{self.port}"
        start = time.monotonic()
        end = start + self.timeout
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                data = b""
                while not _banner(data):
                    left = end - time.monotonic()
                    if left <= 0 or len(data) > 4096:
                        break
                    s.settimeout(left)
                    chunk = s.recv(1024)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            timed_out = isinstance(exc, TimeoutError)
            reason = f"no answer within {self.timeout:g} s" if timed_out else (exc.strerror or str(exc))
            return CheckResult(False, f"no SSH banner from {where} ({reason})")
        if banner := _banner(data):
            return CheckResult(
                True, f"SSH banner {banner!r} from {where} in {time.monotonic() - start:.2f} s"
            )
        return CheckResult(False, f"{where} answered without an SSH banner within {self.timeout:g} s")


def _banner(data: bytes) -> str:
    lines = data.split(b"\n")
    for line in lines[:-1]:  # complete lines only
        if line.startswith(b"SSH-"):
            return line.rstrip(b"\r").decode(errors="replace")
    return ""
