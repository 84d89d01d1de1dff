"""Which proxy carries HTTPS to the controller: the proxy environment variables, read once.

Pure (no I/O). ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``
are honoured as Python and httpx do: for each name the lower-case spelling
wins when both are set, and a disagreement between the two spellings is
recorded so preflight can point at it. ``NO_PROXY`` entries may be ``*``, a
domain suffix, an IP address or a CIDR network. UDP never goes through a
proxy, so only HTTPS to the controller asks :func:`proxy_for_https`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "PROXY_NAMES",
    "ProxyEnv",
    "bypasses_proxy",
    "is_ip_literal",
    "proxy_address",
    "proxy_for_https",
    "read_proxy_env",
    "redact_proxy",
]

PROXY_NAMES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


def is_ip_literal(host: str) -> bool:
    """True if ``host`` is an IPv4 or IPv6 address (without brackets), not a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ProxyEnv:
    """Effective proxy settings: for each name, the lower-case spelling wins if present."""

    values: dict[str, str]
    conflicts: tuple[str, ...] = ()

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    @property
    def any_proxy(self) -> bool:
        return any(self.get(n) for n in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"))


def read_proxy_env(env: Mapping[str, str]) -> ProxyEnv:
    values: dict[str, str] = {}
    conflicts: list[str] = []
    for name in PROXY_NAMES:
        lower, upper = env.get(name.lower()), env.get(name)
        if lower is not None and upper is not None and lower.strip() != upper.strip():
            conflicts.append(name)
        value = lower if lower is not None else upper
        if value and value.strip():
            values[name] = value.strip()
    return ProxyEnv(values, tuple(conflicts))


def bypasses_proxy(host: str, no_proxy: str) -> bool:
    """True if ``host`` matches a NO_PROXY entry (``*``, a domain suffix, an IP or a CIDR)."""
    host = host.strip("[]").lower().rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        entry = entry.strip("[]")
        if entry.count(":") == 1:  # host:port; the port does not matter here
            entry = entry.split(":", 1)[0]
        if "/" in entry and is_ip_literal(host):
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.lstrip("*").lstrip(".").rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def redact_proxy(proxy: str) -> str:
    """The proxy URL with any user name and password replaced by ``***``."""
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if not (parts.username or parts.password):
        return proxy
    netloc = f"***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)) if "://" in proxy else netloc


def proxy_for_https(host: str, proxies: ProxyEnv) -> str | None:
    """The proxy HTTPS to ``host`` goes through, or None for a direct connection."""
    proxy = proxies.get("HTTPS_PROXY") or proxies.get("ALL_PROXY")
    if not proxy or bypasses_proxy(host, proxies.get("NO_PROXY")):
        return None
    return proxy


def proxy_address(proxy: str) -> tuple[str, int] | None:
    """(host, port) a proxy URL points at, the port defaulting by scheme; None if unusable."""
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 1080 if parts.scheme.startswith("socks") else 80
    return parts.hostname, port or default
