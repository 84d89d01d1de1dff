"""The JSON the Windows scripts print, read strictly and within bounds (pure).

A script's output is untrusted text from the asset: at most :data:`MAX_OUTPUT`
characters, the last line that is a JSON object, of the version the scripts
write. Fields of the wrong type make the whole output refused; single entries
that do not make a valid value (a malformed address, a port out of range, a
process name with control characters) are skipped and counted, as the Linux
parsers do with lines they cannot read.

:func:`parse_learning` produces the same :class:`~zerogate.model.segment.Flow`
values as the Linux learner: established TCP connections become
:class:`~zerogate.model.segment.Connection` values oriented by the listeners
(a connection to a local listening port is inbound, any other is the host's
own outbound connection) and go through
:func:`zerogate.policy.segment.derive_flows`. Windows lists no UDP
conversations, only UDP endpoints: UDP shows up as listeners, not as flows.

Errors: :class:`WindowsOutputError` (a ``SegmentHostError``); its message never
quotes the host's output.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from zerogate.model.segment import Address, Connection, Flow, Listener, SegmentValueError
from zerogate.model.segment_report import PreflightItem
from zerogate.policy.segment import derive_flows, merge
from zerogate.segment.hosts import SegmentHostError
from zerogate.segment.preflight import Preflight
from zerogate.segment.windows.render import MAX_CONNECTIONS, MAX_LISTENERS, OUTPUT_VERSION

MAX_OUTPUT = 16 * 1024 * 1024  # characters: 64k connections of ~120 characters each, and room
MAX_ADDRESSES = 1024
_PROCESS_MAX = 64


class WindowsOutputError(SegmentHostError):
    """A script's output is not what the script prints; the message says which part."""


def last_object(text: str, what: str) -> dict[str, Any]:
    """The last line of ``text`` that is a JSON object of our version."""
    if not isinstance(text, str) or len(text) > MAX_OUTPUT:
        raise WindowsOutputError(f"{what}: the output is missing or larger than {MAX_OUTPUT} characters")
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            raise WindowsOutputError(f"{what}: the output's last object is not valid JSON") from None
        if not isinstance(value, dict) or value.get("v") != OUTPUT_VERSION:
            raise WindowsOutputError(f"{what}: the output is not version {OUTPUT_VERSION} of our script")
        return value
    raise WindowsOutputError(f"{what}: the script printed no result")


def _list(obj: dict[str, Any], key: str, limit: int, what: str) -> list[Any]:
    value = obj.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise WindowsOutputError(f"{what}: {key} is not a list of at most {limit} entries")
    return value


def _int(obj: dict[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise WindowsOutputError(f"{what}: {key} is not a count")
    return value


def _str(obj: dict[str, Any], key: str, limit: int = 64) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) and len(value) <= limit and value.isprintable() else ""


def _address(value: object) -> Address | None:
    """An address as Windows prints it; an IPv6 zone (``%12``) is dropped."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _process(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value[:_PROCESS_MAX]


def _port(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535 else None


@dataclass(frozen=True)
class Listeners:
    listeners: tuple[Listener, ...]
    skipped: int


def parse_listeners(obj: dict[str, Any], what: str) -> Listeners:
    """``listen`` entries: ``p`` tcp/udp, ``a`` the bound address, ``port``, ``proc``."""
    found: list[Listener] = []
    skipped = 0
    for entry in _list(obj, "listen", 2 * MAX_LISTENERS, what):
        port = _port(entry.get("port")) if isinstance(entry, dict) else None
        address = _address(entry.get("a")) if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or port is None
            or address is None
            or entry.get("p") not in ("tcp", "udp")
        ):
            skipped += 1
            continue
        try:
            found.append(Listener(entry["p"], address, port, _process(entry.get("proc"))))
        except SegmentValueError:
            skipped += 1
    return Listeners(tuple(dict.fromkeys(found)), skipped)


# --------------------------------------------------------------------------- preflight


@dataclass(frozen=True)
class WindowsPreflight(Preflight):
    """The Windows findings. ``ssh_ports`` holds the WinRM listener ports (the report's
    management ports), ``listeners`` every TCP/UDP listener."""

    @property
    def ok(self) -> bool:
        """Whether enforcement can go ahead: the firewall service runs, WinRM on our port."""
        return all(i.ok for i in self.items if i.name in ("firewall_service", "winrm_ports"))


def _item(name: str, ok: bool, detail: str) -> PreflightItem:
    return PreflightItem(name=name, ok=ok, detail=detail[:500])


def parse_preflight(text: str, winrm_port: int) -> WindowsPreflight:
    """The preflight script's output for an asset managed over WinRM port ``winrm_port``."""
    what = "preflight"
    obj = last_object(text, what)
    items: list[PreflightItem] = []
    service = _str(obj, "service", 32)
    items.append(
        _item("firewall_service", True, "Windows Defender Firewall (MpsSvc) is running")
        if service == "Running"
        else _item("firewall_service", False, f"the firewall service MpsSvc is {service or 'unknown'}, not "
                   "Running: start it (Set-Service MpsSvc -StartupType Automatic; Start-Service MpsSvc)")
    )  # fmt: skip
    profiles = []
    for p in _list(obj, "profiles", 8, what):
        if isinstance(p, dict) and _str(p, "name", 16):
            profiles.append(f"{_str(p, 'name', 16)}: enabled {_str(p, 'enabled', 16) or '?'}, inbound "
                            f"{_str(p, 'inbound', 16) or '?'}")  # fmt: skip
    items.append(_item("profiles", bool(profiles), "; ".join(profiles) or "no firewall profile reported"))
    allow, block = _int(obj, "other_allow", what), _int(obj, "other_block", what)
    if allow:
        items.append(_item("other_allow_rules", False, f"{allow} enabled inbound allow rule(s) of Windows or "
                           "other products: they let traffic in that no approved rule names"))  # fmt: skip
    if block:
        items.append(_item("other_block_rules", False, f"{block} enabled inbound block rule(s) of other "
                           "products: a block wins over our allows, approved traffic must pass them too"))  # fmt: skip
    ports = set()
    for w in _list(obj, "winrm", 16, what):
        port = _port(w.get("port")) if isinstance(w, dict) else None
        if port is not None:
            ports.add(port)
    winrm = tuple(sorted(ports))
    if not winrm:
        items.append(_item("winrm_ports", False, "no WinRM listener found (winrm quickconfig, or "
                           "Enable-PSRemoting)"))  # fmt: skip
    else:
        text_ports = ", ".join(map(str, winrm))
        ok = winrm_port in winrm
        items.append(_item("winrm_ports", ok, f"WinRM listens on TCP {text_ports}" if ok else
                           f"WinRM listens on TCP {text_ports}, not on the asset's port {winrm_port}"))  # fmt: skip
    listeners = parse_listeners(obj, what).listeners
    return WindowsPreflight(tuple(items), winrm, listeners)


# --------------------------------------------------------------------------- learning


@dataclass(frozen=True)
class Learning:
    flows: tuple[Flow, ...]
    listeners: tuple[Listener, ...]
    addresses: tuple[Address, ...]
    skipped: int


def _connection(entry: object, listeners: tuple[Listener, ...]) -> Connection | None:
    if not isinstance(entry, dict):
        return None
    la, ra = _address(entry.get("la")), _address(entry.get("ra"))
    lp, rp = _port(entry.get("lp")), _port(entry.get("rp"))
    if la is None or ra is None or lp is None or rp is None or la.version != ra.version:
        return None
    if any(li.accepts("tcp", la, lp) for li in listeners):
        return Connection("tcp", ra, la, rp, lp, "ESTABLISHED", True)  # to us: inbound
    return Connection("tcp", la, ra, lp, rp, "ESTABLISHED", True)  # from us: outbound


def parse_learning(
    text: str, *, at: datetime, outbound: bool = False, fallback: Address | None = None
) -> Learning:
    """The learning snapshot's output as flows (one record per flow key), listeners and addresses."""
    what = "learning snapshot"
    obj = last_object(text, what)
    listen = parse_listeners(obj, what)
    addresses = tuple(dict.fromkeys(a for a in map(_address, _list(obj, "addr", MAX_ADDRESSES, what)) if a))
    if not addresses and fallback is not None:
        addresses = (fallback,)
    connections = []
    skipped = listen.skipped
    for entry in _list(obj, "est", MAX_CONNECTIONS, what):
        conn = _connection(entry, listen.listeners)
        if conn is None:
            skipped += 1
        else:
            connections.append(conn)
    flows = derive_flows(connections, listen.listeners, addresses, at=at, outbound=outbound)
    merged = merge((), flows, limit=max(1, len(flows)))
    return Learning(merged.flows, listen.listeners, addresses, skipped)


# --------------------------------------------------------------------------- results


def parse_applied(text: str, revision: int) -> int:
    """The enforce script's result: the number of rules in our group; refuses another revision."""
    obj = last_object(text, "enforcement")
    if obj.get("applied") != revision:
        raise WindowsOutputError(f"enforcement: the host did not report revision {revision} applied")
    return _int(obj, "rules", "enforcement")


def parse_confirm(text: str, revision: int) -> str:
    """``confirmed``, ``ran``, ``missing`` or ``other`` (see the confirm script)."""
    obj = last_object(text, "confirm")
    state = obj.get("confirm")
    if state not in ("confirmed", "ran", "missing", "other") or obj.get("revision") != revision:
        raise WindowsOutputError(f"confirm: no valid answer for revision {revision}")
    return str(state)


def parse_unprotected(text: str) -> tuple[bool, tuple[str, ...]]:
    """Whether the (un)protect or break-glass script finished cleanly, and the steps that failed."""
    obj = last_object(text, "unprotect")
    failed = tuple(
        s for s in _list(obj, "failed", 8, "unprotect") if s in ("task", "rules", "defaults", "export")
    )
    return obj.get("unprotected") is True, failed
