"""An asset's preflight: one SSH session runs :data:`PREFLIGHT_SCRIPT`, and
:func:`parse_preflight` turns its text into findings (the parser is pure).

What it checks, and why it matters for enforcement:

- ``nftables``: ``nft list tables`` works (the table is loaded with ``nft -f``);
- ``conntrack``: ``conntrack -L`` works (learning reads it);
- ``firewalld`` / ``ufw`` / ``docker`` / ``iptables_nft`` / ``iptables_legacy``: other
  firewall managers. A drop in any table or hook is final, so ours still filters
  whatever they accept, but their drops apply too, and a firewalld reload or a
  Docker restart rebuilds their own tables (never ours);
- ``sshd_ports``: the ports sshd really listens on (``ss``): the management
  allow-list is built from them, and the asset's SSH port must be one.

The script runs privileged commands through ``sudo -n`` for a non-root login
(the exact argv of :data:`zerogate.segment.ssh.PRIVILEGED`) and checks what needs
root otherwise (legacy iptables) only when it runs as root.
"""

from __future__ import annotations

from dataclasses import dataclass

from zerogate.deploy.firewall.scope import parse_nft_tables
from zerogate.model.segment import Listener
from zerogate.model.segment_report import PreflightItem
from zerogate.netops.ss import parse_listeners

# $1 1 = through sudo -n, $2 nft, $3 conntrack, $4 ss. Sections: "@name", output, "@rc N".
PREFLIGHT_SCRIPT = r"""
z=$1 nft=$2 ct=$3 ss=$4
priv() { if [ "$z" = 1 ]; then sudo -n "$@"; else "$@"; fi; }
echo @nft; priv "$nft" list tables 2>&1; echo "@rc $?"
echo @conntrack; priv "$ct" -L -o extended >/dev/null 2>&1; echo "@rc $?"
echo @ufw; grep -s '^ENABLED=' /etc/ufw/ufw.conf; echo "@rc $?"
echo @docker; [ -e /sys/class/net/docker0 ] || [ -S /run/docker.sock ]; echo "@rc $?"
echo @legacy
if [ "$(id -u)" = 0 ]; then cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null; echo "@rc 0"
else echo "@rc 126"; fi
echo @ss; priv "$ss" -H -tuln -p 2>&1; echo "@rc $?"
"""


@dataclass(frozen=True)
class Preflight:
    """The findings, sshd's real TCP ports and every listener (``ss``) of one asset."""

    items: tuple[PreflightItem, ...]
    ssh_ports: tuple[int, ...]
    listeners: tuple[Listener, ...]

    @property
    def ok(self) -> bool:
        """Whether enforcement can go ahead (nftables usable, SSH port among sshd's)."""
        return all(i.ok for i in self.items if i.name in ("nftables", "sshd_ports"))


def sections(text: str) -> dict[str, tuple[str, int]]:
    """``@name`` ... ``@rc N`` blocks as {name: (output, status)}; a block without its
    status line (the session was cut) has status -1."""
    out: dict[str, tuple[str, int]] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("@rc ") and name is not None:
            rc = line[4:].strip()
            out[name] = ("\n".join(lines), int(rc) if rc.isdigit() else -1)
            name, lines = None, []
        elif line.startswith("@") and line[1:].isidentifier():
            if name is not None:
                out[name] = ("\n".join(lines), -1)
            name, lines = line[1:], []
        elif name is not None:
            lines.append(line)
    if name is not None:
        out[name] = ("\n".join(lines), -1)
    return out


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _item(name: str, ok: bool, detail: str) -> PreflightItem:
    return PreflightItem(name=name, ok=ok, detail=detail[:500])


def parse_preflight(text: str, ssh_port: int) -> Preflight:
    """The preflight script's output for an asset whose SSH port is ``ssh_port``."""
    got = sections(text)
    items: list[PreflightItem] = []
    nft_out, nft_rc = got.get("nft", ("", -1))
    tables = sorted(str(t) for t in parse_nft_tables(nft_out)) if nft_rc == 0 else []
    items.append(
        _item("nftables", True, f"nft works; tables: {', '.join(tables) or 'none'}")
        if nft_rc == 0
        else _item("nftables", False, f"nft list tables failed: {_last(nft_out) or f'status {nft_rc}'}; "
                   "install the package 'nftables' (and allow it in sudoers for a non-root login)")
    )  # fmt: skip
    ct_rc = got.get("conntrack", ("", -1))[1]
    items.append(
        _item("conntrack", ct_rc == 0, "conntrack -L works" if ct_rc == 0 else
              f"conntrack -L failed (status {ct_rc}): install 'conntrack'; learning needs it")
    )  # fmt: skip
    if "inet firewalld" in tables:
        items.append(_item("firewalld", False, "firewalld's table is loaded: its drops apply too and a "
                           "reload rebuilds its table (never ours); approved traffic must pass both"))  # fmt: skip
    ufw_out, _ = got.get("ufw", ("", -1))
    if "ENABLED=yes" in ufw_out.replace(" ", ""):
        items.append(_item("ufw", False, "ufw is enabled: its rules filter input too; approved traffic "
                           "must pass both, or disable ufw"))  # fmt: skip
    if got.get("docker", ("", 1))[1] == 0:
        items.append(_item("docker", False, "Docker is present: published container ports go through "
                           "forward, not input; enforcement covers the host's own services only"))  # fmt: skip
    foreign = [t for t in tables if t in ("ip filter", "ip6 filter", "ip nat", "ip6 nat")]
    if foreign:
        items.append(_item("iptables_nft", False, f"iptables-nft tables ({', '.join(foreign)}): their "
                           "drops apply as well as ours"))  # fmt: skip
    legacy_out, legacy_rc = got.get("legacy", ("", -1))
    if legacy_rc == 0 and legacy_out.strip():
        names = ", ".join(sorted(set(legacy_out.split())))
        items.append(_item("iptables_legacy", False, f"legacy iptables tables loaded ({names}): their rules "
                           "filter input too"))  # fmt: skip
    elif legacy_rc != 0:
        items.append(_item("iptables_legacy", True, "not checked (needs root)"))
    ss_out, ss_rc = got.get("ss", ("", -1))
    listeners = parse_listeners(ss_out).listeners if ss_rc == 0 else ()
    ports = tuple(
        sorted({li.port for li in listeners if li.protocol == "tcp" and "sshd" in (li.process or "")})
    )
    if ss_rc != 0:
        items.append(_item("sshd_ports", False, f"ss failed: {_last(ss_out) or f'status {ss_rc}'}"))
    elif not ports:
        items.append(_item("sshd_ports", False, "no listening sshd found by ss -p (is ss run as root?)"))
    else:
        ok = ssh_port in ports
        text = f"sshd listens on TCP {', '.join(map(str, ports))}"
        items.append(
            _item("sshd_ports", ok, text if ok else f"{text}, not on the asset's SSH port {ssh_port}")
        )
    return Preflight(tuple(items), ports, tuple(listeners))
