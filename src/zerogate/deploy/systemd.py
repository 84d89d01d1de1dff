"""systemd units for the controller, gateway and connector: rendered as text, checked, then written.

Each role runs as ``zerogate-<role>.service`` with the narrowest sandbox that
still lets it work:

* **controller** runs as the unprivileged user ``zerogate`` with no
  capabilities at all, except ``CAP_NET_BIND_SERVICE`` when it listens on a
  port below 1024 (443 by default). Full kernel/device protection; it only
  needs TCP/IP and Unix sockets (PostgreSQL, logging).
* **gateway** and **connector** run as root, but the capability bounding set
  is cut down to ``CAP_NET_ADMIN`` (WireGuard, routes, nftables) — plus
  ``CAP_NET_RAW`` on the gateway for its ICMP liveness probes of connectors —
  so root here cannot read other users' files, load modules, trace processes
  or mount anything. They need ``AF_NETLINK`` (ip, nft, wg), ``/dev/net/tun``
  (wireguard-go, when the kernel has no WireGuard module) and
  ``/run/wireguard`` (wireguard-go's control sockets). They write
  ``net.ipv4.ip_forward`` (and per-interface net sysctls) at every reconcile,
  which ``ProtectKernelTunables=yes`` would forbid by making ``/proc/sys``
  read-only; so it is ``no`` for them, and the bounding set still limits them
  to network sysctls (``CAP_NET_ADMIN``).

Every role: ``NoNewPrivileges``, ``ProtectSystem=strict`` with
``ReadWritePaths=`` only for its state directory, ``ProtectHome``,
``PrivateTmp``, a ``@system-service`` system-call filter, ``Restart=on-failure``.
Settings that belong to the host (proxy variables, ``ZEROGATE_*``) live in an
``EnvironmentFile=`` under ``/etc/zerogate``.

:func:`render_unit` is pure (golden-tested); :func:`check_unit` is a small
structural parser-based check; :func:`verify_unit` runs ``systemd-analyze
verify``, which works without systemd as PID 1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zerogate.netops.command import CommandError, run
from zerogate.netops.wireguard import DEFAULT_INTERFACES

__all__ = [
    "ROLES",
    "Role",
    "UnitSpec",
    "capabilities",
    "check_unit",
    "default_state_dir",
    "env_file_path",
    "exec_start",
    "parse_unit",
    "render_env_file",
    "render_unit",
    "unit_name",
    "verify_unit",
]

Role = Literal["controller", "gateway", "connector"]
ROLES: tuple[Role, ...] = ("controller", "gateway", "connector")
SERVICE_USER = "zerogate"
PRIVILEGED_PORT_LIMIT = 1024
# systemd accepts more, but a path we write into several directives must need no quoting.
# Both used with fullmatch: with match, '$' accepts a trailing newline, which
# in a unit file starts a directive of the caller's choosing.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+/-]*")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")

_DESCRIPTIONS: dict[Role, str] = {
    "controller": "zerogate controller (API, portal, keys, policy)",
    "gateway": "zerogate gateway (WireGuard edge and policy enforcement)",
    "connector": "zerogate connector (dials out to gateways, forwards into the site)",
}


def unit_name(role: Role) -> str:
    return f"zerogate-{role}.service"


def default_state_dir(role: Role) -> Path:
    return Path(f"/var/lib/zerogate/{role}")


def env_file_path(role: Role) -> Path:
    return Path(f"/etc/zerogate/{role}.env")


def check_path(what: str, path: Path) -> Path:
    """An absolute path made only of characters that need no quoting in a unit file."""
    text = str(path)
    if not _SAFE_PATH.fullmatch(text) or "/../" in f"{text}/" or "//" in text:
        raise ValueError(
            f"{what} {text!r}: use an absolute path of letters, digits and . _ + - / "
            "(no spaces, '..', '%' or '$')"
        )
    return path


@dataclass(frozen=True)
class UnitSpec:
    """What a unit needs to know; every path is as seen on the target host."""

    role: Role
    zerogate: Path  # the zerogate program
    state_dir: Path  # controller: its data dir
    env_file: Path
    interface: str = ""  # gateway, connector; empty: the role's default (DEFAULT_INTERFACES)
    listen_port: int | None = None  # controller: HTTPS port; connector: WireGuard UDP port

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r}: expected one of {', '.join(ROLES)}")
        check_path("zerogate program", self.zerogate)
        check_path("state directory", self.state_dir)
        check_path("environment file", self.env_file)
        if self.state_dir == Path("/"):
            raise ValueError(
                "state directory '/': choose a directory of its own, e.g. /var/lib/zerogate/gateway"
            )
        if not self.interface:  # one name per role: wireguard-go's control socket is per host
            object.__setattr__(self, "interface", DEFAULT_INTERFACES.get(self.role, "zg-gw"))
        if not _IFNAME.fullmatch(self.interface):
            raise ValueError(f"interface {self.interface!r}: use 1-15 letters, digits, '-', '_' or '.'")
        if self.listen_port is not None and not 0 <= self.listen_port <= 65535:
            raise ValueError(f"port {self.listen_port}: expected 0-65535")


def capabilities(spec: UnitSpec) -> tuple[str, ...]:
    """The capabilities a role keeps (bounding set; ambient too for the unprivileged controller)."""
    low_port = spec.listen_port is not None and 0 < spec.listen_port < PRIVILEGED_PORT_LIMIT
    caps: list[str] = []
    if spec.role == "gateway":
        caps = ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    elif spec.role == "connector":
        caps = ["CAP_NET_ADMIN"]
    if low_port:
        caps.append("CAP_NET_BIND_SERVICE")
    return tuple(caps)


def exec_start(spec: UnitSpec) -> list[str]:
    """The daemon's command line."""
    if spec.role == "controller":
        return [str(spec.zerogate), "controller", "run", "--data-dir", str(spec.state_dir)]
    argv = [
        str(spec.zerogate),
        spec.role,
        "run",
        "--state-dir",
        str(spec.state_dir),
        "--interface",
        spec.interface,
    ]
    if spec.role == "connector" and spec.listen_port is not None:
        argv += ["--listen-port", str(spec.listen_port)]
    return argv


def render_unit(spec: UnitSpec) -> str:
    """The unit file's text."""
    network = spec.role != "controller"
    caps = " ".join(capabilities(spec))
    lines = [
        f"# {unit_name(spec.role)} - written by 'zerogate install'; re-run it rather than editing.",
        "# Local changes belong in a drop-in: systemctl edit " + unit_name(spec.role),
        "[Unit]",
        f"Description={_DESCRIPTIONS[spec.role]}",
        "Wants=network-online.target",
        # firewalld/nftables first, so our own table and firewalld's openings are made after theirs.
        "After=network-online.target" + (" nftables.service firewalld.service" if network else ""),
        "StartLimitIntervalSec=300",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={' '.join(exec_start(spec))}",
        f"EnvironmentFile=-{spec.env_file}",
        "Restart=on-failure",
        "RestartSec=5s",
        "TimeoutStopSec=30s",
        "UMask=0077",
    ]
    if spec.role == "controller":
        lines += [f"User={SERVICE_USER}", f"Group={SERVICE_USER}"]
    lines += [
        "",
        "# Sandbox",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={spec.state_dir}",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ]
    if network:
        lines += [
            "# wireguard-go needs the TUN device and /run/wireguard for its control sockets.",
            "DevicePolicy=closed",
            "DeviceAllow=/dev/net/tun rw",
            "RuntimeDirectory=wireguard",
            "RuntimeDirectoryMode=0755",
            "RuntimeDirectoryPreserve=yes",
            "# Writes net.ipv4.ip_forward and per-interface net sysctls; CAP_NET_ADMIN alone limits it",
            "# to network ones.",
            "ProtectKernelTunables=no",
        ]
    else:
        lines += ["PrivateDevices=yes", "ProtectKernelTunables=yes"]
    families = "AF_UNIX AF_INET AF_INET6" + (" AF_NETLINK" if network else "")
    lines += [
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "RestrictNamespaces=yes",
        f"RestrictAddressFamilies={families}",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        f"CapabilityBoundingSet={caps}",
        f"AmbientCapabilities={caps}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def render_env_file(role: Role, environ: Mapping[str, str]) -> str:
    """The ``EnvironmentFile=``: proxy variables from ``environ`` filled in, the rest as comments."""
    proxies = [f"{name}={environ[name]}" for name in _PROXY_VARS if environ.get(name)]
    lines = [
        f"# Environment of {unit_name(role)} (KEY=value per line). Kept by 'zerogate install' once",
        "# written; edit it, then: systemctl restart " + unit_name(role),
        "#",
        "# HTTPS to the controller goes through a proxy when these are set (the connection",
        "# stays end-to-end TLS, pinned to the controller's CA):",
    ]
    lines += proxies or [
        "# HTTPS_PROXY=http://proxy.example.internal:3128",
        "# NO_PROXY=localhost,127.0.0.1",
    ]
    if role == "controller":
        lines += [
            "#",
            "# Any key of controller.toml can be overridden as ZEROGATE_<KEY>, e.g.:",
            "# ZEROGATE_LOG_LEVEL=debug",
        ]
    else:
        lines += [
            "#",
            "# WireGuard: kernel module if the host has one, else wireguard-go (auto|kernel|userspace):",
            "# ZEROGATE_WG_IMPLEMENTATION=auto",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# checking
# ---------------------------------------------------------------------------

_KNOWN_SECTIONS = ("Unit", "Service", "Install")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat). Raises ValueError on a line that is neither."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1]
            if name in sections:
                raise ValueError(f"line {number}: section [{name}] appears twice")
            current = sections[name] = {}
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None or not key.strip():
            raise ValueError(f"line {number}: expected [Section] or Key=value, got {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def check_unit(text: str) -> list[str]:
    """Structural problems of a rendered unit (empty list: fine). Does not need systemd."""
    try:
        sections = parse_unit(text)
    except ValueError as exc:
        return [str(exc)]
    problems = [f"unexpected section [{s}]" for s in sections if s not in _KNOWN_SECTIONS]
    problems += [f"missing section [{s}]" for s in _KNOWN_SECTIONS if s not in sections]
    service = sections.get("Service", {})
    for key in ("ExecStart", "Restart", "NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet"):
        if len(service.get(key, [])) != 1:
            problems.append(f"[Service] needs exactly one {key}=")
    for key, values in service.items():
        if key in ("ExecStart", "EnvironmentFile", "ReadWritePaths") and not all(
            v.lstrip("-").startswith("/") for v in values
        ):
            problems.append(f"[Service] {key}= must be an absolute path")
    if "WantedBy" not in sections.get("Install", {}):
        problems.append("[Install] needs WantedBy= so that 'systemctl enable' works")
    return problems


def verify_unit(path: Path) -> list[str] | None:
    """What ``systemd-analyze verify`` says about the unit file (empty: clean; None: tool missing)."""
    try:
        r = run(
            ["systemd-analyze", "verify", "--man=no", str(path)],
            timeout=60,
            check=False,
            env={**os.environ, "SYSTEMD_LOG_TARGET": "console", "SYSTEMD_LOG_LEVEL": "notice"},
        )
    except CommandError as exc:
        if exc.returncode == 127:
            return None
        raise
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    if r.returncode != 0 and not lines:
        lines = [f"systemd-analyze verify exited with {r.returncode}"]
    return lines
