"""``zerogate connectivity-test --role segment``: can the segment server reach everything it needs?

A segment server dials out to the controller (HTTPS), asks DNS, reads the
directory (LDAP), manages its assets (SSH, later WinRM) and answers users on its
own HTTPS listener (just-in-time openings). One :class:`~zerogate.deploy.checks.Check`
per target, each with its latency:

- ``controller``: the enrolled path of :func:`zerogate.deploy.connectivity.check_enrolled`
  (state, DNS, TCP, pinned TLS, the device credential), so ``HTTPS_PROXY`` and
  ``NO_PROXY`` are honoured exactly as for a connector;
- ``dns``: a real query (UDP 53) for the controller's name to every resolver of
  ``/etc/resolv.conf``, since ``getaddrinfo`` alone hides which resolver fails;
- ``ldap`` (an anonymous LDAP bind must be answered), ``ldaps`` 636, ``gc``
  3268/3269 and ``kerberos`` 88 (TCP) on the directory host, when a directory is set;
  OpenLDAP has no global catalog and no Kerberos, so those rows say so;
- ``ssh``: the asset's SSH port on every asset of the cached inventory, where an
  SSH banner must arrive (TCP alone would pass for any listener);
- ``winrm``: TCP 5985 to the hosts given with ``--winrm`` (the inventory has no
  OS field yet, so Windows assets cannot be told apart);
- ``jit``: a TLS handshake with the server's own ``jit_listen``, which must present
  the certificate of ``jit_cert_file``.

Everything runs in a bounded thread pool and never raises for what the network
does; the caller decides the exit status with :func:`~zerogate.deploy.checks.any_failed`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from zerogate.agent.settings import parse_listen
from zerogate.deploy.checks import Check, hostport
from zerogate.deploy.connectivity import check_enrolled
from zerogate.deploy.probes import resolve, tcp_connect, to_ms
from zerogate.model.snapshot import SegmentAsset
from zerogate.segment.breakglass import INVENTORY, InventoryError, load_inventory

__all__ = [
    "CHECK_NAMES",
    "DEFAULT_TIMEOUT",
    "OPENLDAP_ABSENT",
    "WINRM_PORT",
    "DnsAnswer",
    "SegmentTargets",
    "dns_query",
    "parse_winrm",
    "read_resolvers",
    "run_segment_checks",
]

# What --skip accepts, with what each covers (the CLI's --help lists them).
CHECK_NAMES: dict[str, str] = {
    "controller": "HTTPS to the controller (through HTTPS_PROXY unless NO_PROXY matches)",
    "dns": "UDP 53 to every resolver of /etc/resolv.conf",
    "ldap": "LDAP (389, or the port of directory_url)",
    "ldaps": "LDAPS 636",
    "gc": "global catalog 3268 and 3269 (Active Directory only)",
    "kerberos": "Kerberos 88/TCP (Active Directory only)",
    "ssh": "SSH to every asset of the cached inventory",
    "winrm": "WinRM 5985 to the --winrm hosts",
    "jit": "this server's own HTTPS listener (jit_listen)",
}
OPENLDAP_ABSENT = ("gc", "kerberos")  # fail against OpenLDAP by design
DEFAULT_TIMEOUT = 5.0
WINRM_PORT = 5985
MAX_RESOLVERS = 3  # glibc uses at most three nameserver lines
_OPENLDAP_NOTE = "expected when the directory is OpenLDAP (it has no {what}): --skip {name} there"
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.?)*|\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Fa-f:.]{2,45}")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


@dataclass(frozen=True)
class SegmentTargets:
    """What to test, from the segment settings, the state directory and the options."""

    state_dir: Path
    directory_url: str = ""
    jit_listen: str = ""
    jit_cert_file: str = ""
    winrm: tuple[tuple[str, int], ...] = ()
    resolv_conf: Path = Path("/etc/resolv.conf")


def parse_winrm(text: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (``[v6]:PORT``) of a ``--winrm`` option; ValueError if malformed."""
    if len(text) > 260 or not text.isprintable():
        raise ValueError("a --winrm host is a name or an address, optionally with :PORT")
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+|[0-9A-Fa-f:]+)(?::([0-9]{1,5}))?", text)
    host = m.group(1).strip("[]") if m else ""
    port = int(m.group(2)) if m and m.group(2) else WINRM_PORT
    if m and ":" in m.group(1) and not m.group(1).startswith("["):
        host, port = m.group(1), WINRM_PORT  # a bare IPv6 address, no port
    if not host or not _HOST.fullmatch(host) or not 0 < port < 65536:
        raise ValueError("a --winrm host is a name or an address, optionally with :PORT")
    return host, port


def read_resolvers(path: Path) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf (glibc: the first three; none means 127.0.0.1)."""
    found: list[str] = []
    for line in path.read_text(errors="replace").splitlines()[:1000]:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(str(ipaddress.ip_address(fields[1])))
            except ValueError:
                continue  # glibc ignores what is not an address too
    return found[:MAX_RESOLVERS] or ["127.0.0.1"]


# -- DNS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsAnswer:
    rcode: int | None = None  # None: no answer
    answers: int = 0
    latency_ms: float | None = None
    error: str = ""

    @property
    def rcode_name(self) -> str:
        return "none" if self.rcode is None else _RCODES.get(self.rcode, f"RCODE {self.rcode}")


def _query_packet(name: str, qtype: int, ident: int) -> bytes:
    labels = [] if name in ("", ".") else name.rstrip(".").split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("not a DNS name")
    qname = b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def dns_query(server: str, name: str, timeout: float, qtype: int = 1, port: int = 53) -> DnsAnswer:
    """One real UDP query (type A unless ``qtype``) to ``server``; an answer or why there is none."""
    ident = secrets.randbelow(0x10000)
    try:
        packet = _query_packet(name, qtype, ident)
    except ValueError as exc:
        return DnsAnswer(error=str(exc))
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    start = time.monotonic()
    deadline = start + timeout
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((server, port))
            s.send(packet)
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                data = s.recv(4096)
                if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == ident and data[2] & 0x80:
                    flags, _, answers = struct.unpack("!HHH", data[2:8])
                    return DnsAnswer(flags & 0x0F, answers, to_ms(time.monotonic() - start))
    except TimeoutError:
        pass
    except OSError as exc:  # refused (ICMP port unreachable), no route
        return DnsAnswer(error=exc.strerror or str(exc))
    return DnsAnswer(error=f"no answer within {timeout:g} s")


def _dns_row(server: str, name: str | None, timeout: float) -> Check:
    endpoint = hostport(server, 53)
    title = f"DNS resolver {server}"
    fix = f"check that {server} answers DNS from this host (UDP 53) or correct /etc/resolv.conf"
    if name is None:  # the controller is an IP address: is the resolver there at all?
        got = dns_query(server, ".", timeout, qtype=2)
        if got.rcode in (0, 3):
            detail = "answers (asked for the root zone: the controller's name is an IP address or unknown)"
            return Check(f"dns:{server}", title, "pass", detail, endpoint=endpoint, latency_ms=got.latency_ms)
        why = got.error or f"answered {got.rcode_name}"
        return Check(f"dns:{server}", title, "fail", why, fix=fix, endpoint=endpoint)
    got = dns_query(server, name, timeout)
    if got.rcode == 0 and got.answers:
        detail = f"{name}: {got.answers} address record(s)"
        return Check(f"dns:{server}", title, "pass", detail, endpoint=endpoint, latency_ms=got.latency_ms)
    if got.rcode == 0:
        detail = f"{name}: the name exists but has no IPv4 address (A record)"
        return Check(f"dns:{server}", title, "warn", detail, endpoint=endpoint, latency_ms=got.latency_ms)
    if got.rcode is not None:
        detail = f"{name}: answered {got.rcode_name}"
        fix = f"make {name} resolvable by {server} (or use a resolver that knows it)"
        return Check(f"dns:{server}", title, "fail", detail, fix=fix, endpoint=endpoint)
    return Check(f"dns:{server}", title, "fail", got.error, fix=fix, endpoint=endpoint)


# -- TCP-level probes ---------------------------------------------------------------------


def _tcp_row(
    check_id: str,
    title: str,
    host: str,
    port: int,
    timeout: float,
    fix: str,
    speak: Callable[[socket.socket], str | None] | None = None,
) -> Check:
    """Resolve, connect and (with ``speak``) hold a short exchange; ``speak`` returns None
    when the peer answered as expected, else what went wrong."""
    endpoint = hostport(host, port)
    res = resolve(host, port, timeout)
    if not res.ok:
        return Check(
            check_id, title, "fail", f"cannot resolve {host}: {res.error}", fix=fix, endpoint=endpoint
        )
    outcome = tcp_connect(res.addresses, port, timeout)
    if not outcome.ok:
        return Check(check_id, title, "fail", outcome.error, fix=fix, endpoint=endpoint)
    if speak is None:
        return Check(check_id, title, "pass", "TCP connection accepted", endpoint=endpoint,
                     latency_ms=outcome.latency_ms)  # fmt: skip
    start = time.monotonic()
    try:
        with socket.create_connection((outcome.address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            problem = speak(s)
    except OSError as exc:
        problem = exc.strerror or "the connection failed"
    if problem is not None:
        return Check(check_id, title, "fail", problem, fix=fix, endpoint=endpoint)
    return Check(check_id, title, "pass", "answered", endpoint=endpoint,
                 latency_ms=to_ms(time.monotonic() - start))  # fmt: skip


def _recv_some(s: socket.socket, limit: int, until: Callable[[bytes], bool]) -> bytes:
    data = b""
    while len(data) < limit and not until(data):
        try:
            chunk = s.recv(limit - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


_LDAP_ANON_BIND = bytes.fromhex("300c020101600702010304008000")  # messageID 1, v3, "", simple ""
_LDAP_UNBIND = bytes.fromhex("30050201024200")


def _speak_ldap(s: socket.socket) -> str | None:
    """An anonymous bind must get a BindResponse (success or not): proof an LDAP server answers."""
    s.sendall(_LDAP_ANON_BIND)
    data = _recv_some(s, 512, lambda d: len(d) >= 8)
    if len(data) < 2 or data[0] != 0x30:
        return "the port is open but no LDAP answer came to an anonymous bind"
    i = 2 + (data[1] & 0x7F if data[1] & 0x80 else 0)  # skip the length (short or long form)
    if data[i : i + 3] != b"\x02\x01\x01" or data[i + 3 : i + 4] != b"\x61":
        return "the port is open but the answer is not an LDAP bind response"
    s.sendall(_LDAP_UNBIND)
    return None


def _speak_ssh(s: socket.socket) -> str | None:
    """The server speaks first: its identification line must start with ``SSH-``."""
    data = _recv_some(s, 255, lambda d: b"\n" in d)
    if not data:
        return "the port is open but no SSH banner came"
    return None if data.startswith(b"SSH-") else "the port is open but what answers is not an SSH server"


def _directory_rows(url: str, timeout: float, skip: set[str]) -> list[Callable[[], list[Check]]]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        url_port = parts.port
    except ValueError:
        url_port = None
    fix = f"open the port from this server to the directory {host}"
    ldap_port = (url_port if parts.scheme == "ldap" else None) or 389
    ldaps_port = (url_port if parts.scheme == "ldaps" else None) or 636
    rows: list[tuple[str, str, int, str, Callable[[socket.socket], str | None] | None]] = [
        ("ldap", "LDAP to the directory", ldap_port, fix, _speak_ldap),
        ("ldaps", "LDAPS to the directory", ldaps_port, fix, None),
        ("gc", "global catalog to the directory", 3268, _OPENLDAP_NOTE.format(what="global catalog", name="gc"),
         None),
        ("gc", "global catalog (TLS) to the directory", 3269,
         _OPENLDAP_NOTE.format(what="global catalog", name="gc"), None),
        ("kerberos", "Kerberos (TCP) to the directory", 88,
         _OPENLDAP_NOTE.format(what="Kerberos", name="kerberos"), None),
    ]  # fmt: skip
    tasks: list[Callable[[], list[Check]]] = []
    for name, title, port, row_fix, speak in rows:
        if name in skip:
            continue
        tasks.append(
            lambda n=name, t=title, p=port, f=row_fix, sp=speak: [  # type: ignore[misc]
                _tcp_row(f"{n}:{p}", t, host, p, timeout, f, sp)
            ]
        )
    return tasks


# -- the JIT listener ----------------------------------------------------------------------


def _jit_row(listen: str, cert_file: str, timeout: float) -> Check:
    """TLS handshake with our own listener; it must present jit_cert_file's certificate."""
    host, port = parse_listen(listen) or ("127.0.0.1", 443)  # the settings checked it
    if ipaddress.ip_address(host).is_unspecified:  # listening everywhere: ask on loopback
        host = "::1" if ":" in host else "127.0.0.1"
    endpoint = hostport(host, port)
    title = "this server's HTTPS listener (jit_listen)"
    fix = "start the segment server ('zerogate segment run') with jit_listen set, and check nothing else holds the port"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we compare the certificate with our own file instead
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
            presented = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return Check("jit", title, "fail", f"no TLS handshake: {why}", fix=fix, endpoint=endpoint)
    latency = to_ms(time.monotonic() - start)
    try:
        text = Path(cert_file).read_text()
        pem = text[: text.index("-----END CERTIFICATE-----") + 25]
        ours = ssl.PEM_cert_to_DER_cert(pem)
    except (OSError, ValueError) as exc:
        detail = f"TLS handshake done, but {cert_file} is unreadable ({type(exc).__name__}): cannot compare"
        return Check("jit", title, "warn", detail, endpoint=endpoint, latency_ms=latency)
    if presented != ours:
        detail = f"TLS answers, but with another certificate than {cert_file}"
        return Check("jit", title, "fail", detail, fix="another service holds the port, or the server "
                     "runs with an old certificate: restart it", endpoint=endpoint)  # fmt: skip
    detail = f"TLS handshake done; presents the certificate of {cert_file}"
    return Check("jit", title, "pass", detail, endpoint=endpoint, latency_ms=latency)


# -- the runner -------------------------------------------------------------------------------


def _controller_host(state_dir: Path) -> str | None:
    """The controller's host name from the enrollment (None: an IP address or no enrollment)."""
    try:
        url = str(json.loads((state_dir / "device.json").read_text())["controller_url"])
        host = urlsplit(url).hostname or ""
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host if host and len(host) <= 253 else None
    return None


def _ssh_tasks(state_dir: Path, timeout: float) -> list[Callable[[], list[Check]]]:
    path = state_dir / INVENTORY
    if not path.exists():
        detail = f"no cached inventory at {path}: the server has not received its assets yet"
        fix = "run 'zerogate segment run' until it has followed the controller once, then test again"
        return [lambda: [Check("ssh", "SSH to the assets", "warn", detail, fix=fix)]]
    try:
        assets = load_inventory(path)
    except InventoryError as exc:
        broken = Check("ssh", "SSH to the assets", "fail", str(exc), fix="check the state directory")
        return [lambda: [broken]]
    if not assets:
        return [lambda: [Check("ssh", "SSH to the assets", "skip", "the cached inventory lists no asset")]]

    def one(asset: SegmentAsset) -> list[Check]:
        fix = f"open TCP {asset.ssh_port} from this server to {asset.address} and check sshd runs there"
        return [_tcp_row(f"ssh:{asset.name}", f"SSH to asset {asset.name}", str(asset.address),
                         asset.ssh_port, timeout, fix, _speak_ssh)]  # fmt: skip

    return [lambda a=asset: one(a) for asset in assets]  # type: ignore[misc]


def _skipped(name: str) -> Check:
    return Check(name, CHECK_NAMES[name], "skip", f"skipped with --skip {name}")


def run_segment_checks(
    targets: SegmentTargets,
    env: Mapping[str, str],
    *,
    skip: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    parallel: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[Check]:
    """Every check of the segment role, at most ``parallel`` at once; rows in a stable order."""
    skipped = set(skip)
    unknown = skipped - set(CHECK_NAMES)
    if unknown:
        raise ValueError(f"unknown --skip name(s); known: {', '.join(CHECK_NAMES)}")
    tasks: list[Callable[[], list[Check]]] = []
    first: list[Check] = [_skipped(n) for n in CHECK_NAMES if n in skipped]
    if "controller" not in skipped:

        def controller() -> list[Check]:
            checks = check_enrolled("segment", targets.state_dir, env).checks
            # check_enrolled's fixes name --install-string, which a segment server has no use for
            enroll = "enroll first ('zerogate segment enroll ...') or pass --state-dir / --config"
            return [
                replace(
                    c,
                    id=f"controller:{c.id}",
                    fix=enroll if c.id == "state" and "enroll first" in c.fix else c.fix,
                )
                for c in checks
            ]

        tasks.append(controller)
    if "dns" not in skipped:
        try:
            resolvers = read_resolvers(targets.resolv_conf)
        except OSError as exc:
            why = f"cannot read {targets.resolv_conf}: {exc.strerror}"
            first.append(Check("dns", "DNS resolvers", "fail", why, fix="restore /etc/resolv.conf"))
            resolvers = []
        name = _controller_host(targets.state_dir)
        tasks += [lambda r=r: [_dns_row(r, name, timeout)] for r in resolvers]  # type: ignore[misc]
    if not targets.directory_url:
        first.append(Check("directory", "the directory", "skip", "no directory configured (directory_url)"))
    else:
        tasks += _directory_rows(targets.directory_url, timeout, skipped)
    if "ssh" not in skipped:
        tasks += _ssh_tasks(targets.state_dir, timeout)
    if "winrm" not in skipped:
        if not targets.winrm:
            why = "no --winrm host given (the inventory does not say which assets run Windows yet)"
            first.append(Check("winrm", "WinRM to Windows assets", "skip", why))
        for host, port in targets.winrm:
            fix = f"open TCP {port} from this server to {host} and enable WinRM there"
            tasks.append(lambda h=host, p=port, f=fix: [  # type: ignore[misc]
                _tcp_row(f"winrm:{h}", f"WinRM to {h}", h, p, timeout, f)])  # fmt: skip
    if "jit" not in skipped:
        if targets.jit_listen:
            tasks.append(lambda: [_jit_row(targets.jit_listen, targets.jit_cert_file, timeout)])
        else:
            first.append(Check("jit", CHECK_NAMES["jit"], "skip", "no jit_listen set: no listener to test"))
    results: list[list[Check]] = [[] for _ in tasks]
    done = 0
    if tasks:
        with ThreadPoolExecutor(
            max_workers=max(1, min(parallel, len(tasks))), thread_name_prefix="zg-ct"
        ) as pool:
            futures = {pool.submit(task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                done += 1
                if progress is not None:
                    progress(done, len(tasks))
    return [check for row in results for check in row] + first
