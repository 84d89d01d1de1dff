"""The segment server's operations on a Windows asset over WinRM (``pypsrp``):
:class:`WinRmHostOps` is the :class:`~zerogate.segment.reconcile.HostOps` of a
Windows host, doing with rendered PowerShell (:mod:`.render`) what
:class:`~zerogate.segment.daemon.SshHostOps` does with ``nft`` over SSH.

Authentication is Kerberos or NTLM (or Negotiate choosing between them), never
Basic; the channel is always encrypted:

- ``https`` (TCP 5986): TLS, with the listener's certificate pinned by its
  SHA-256 fingerprint. This replaces the SSH host key: :meth:`WinRmHostOps.scan_host_key`
  reads the certificate the listener offers (pinned form ``x509-sha256 <base64>``,
  fingerprint ``SHA256:...``) and every session refuses any other certificate
  (:class:`~zerogate.segment.ssh.HostKeyChanged`), CA and host name not consulted;
- ``http`` (TCP 5985): WinRM message encryption (``encryption="always"``), with
  Kerberos only: Kerberos authenticates the host, NTLM would not (refused).

Enforcement is commit-confirmed like on Linux: one session runs the export, arms the
rollback task and applies (one script); the services the check probes are
connected to from here; a FRESH session (a new connection and authentication: the
management channel still works) then confirms, disarming the task. If the fresh
session cannot be had, nothing is confirmed and the host restores itself at the
deadline (``RollbackLeftToTarget``); a service that stopped answering is rolled
back at once over the fresh session (``CheckFailedRolledBack``).

Errors map onto the segment module's: transport failures are ``TargetUnreachable``
(``RollbackLeftToTarget`` once a rollback may be armed), a different certificate
is ``HostKeyChanged``, a failed authentication or script is a ``SegmentHostError``
or ``BackendError``; scripts that print no valid result raise
:class:`~zerogate.segment.windows.parse.WindowsOutputError`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import requests
from pypsrp.client import Client
from pypsrp.exceptions import AuthenticationError, WinRMError, WinRMTransportError

from zerogate.deploy.firewall.errors import (
    BackendError,
    CheckFailedRolledBack,
    RollbackLeftToTarget,
    TargetUnreachable,
)
from zerogate.model.segment import Address
from zerogate.model.snapshot import SegmentAsset
from zerogate.segment.checks import probed_ports, tcp_connects
from zerogate.segment.hosts import Collection, Enforcement, ScannedKey, SegmentHostError
from zerogate.segment.preflight import Preflight
from zerogate.segment.ssh import HostKeyChanged, HostKeyUnknown
from zerogate.segment.windows import parse, render

Auth = Literal["kerberos", "ntlm", "negotiate"]
Transport = Literal["https", "http"]
PIN_PREFIX = "x509-sha256 "
PIN_RE = re.compile(r"x509-sha256 [A-Za-z0-9+/]{43}=")
KERBEROS_ONLY = "kerberos-host"  # the pin of an HTTP asset: Kerberos proves who the host is
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@\\-]{0,255}")
_ERROR_MAX = 200


@dataclass(frozen=True)
class WinRmAccess:
    """How the server logs in to Windows assets. ``password`` is never printed."""

    username: str
    password: str = field(repr=False)
    auth: Auth = "kerberos"
    transport: Transport = "https"
    confirm_after: int = 120  # seconds until the armed rollback restores the exported policy
    connection_timeout: int = 10
    operation_timeout: int = 60
    layout: render.WindowsLayout = field(default_factory=render.WindowsLayout)

    def __post_init__(self) -> None:
        if not _USER_RE.fullmatch(self.username):
            raise ValueError("the WinRM user must be a user name (user, DOMAIN\\user or user@REALM)")
        if self.auth not in ("kerberos", "ntlm", "negotiate"):
            raise ValueError("WinRM authentication must be kerberos, ntlm or negotiate (never basic)")
        if self.transport not in ("https", "http"):
            raise ValueError("the WinRM transport must be https or http")
        if self.transport == "http" and self.auth != "kerberos":
            raise ValueError("WinRM over HTTP needs Kerberos: NTLM does not authenticate the host; use https")
        if not render.CONFIRM_MIN <= self.confirm_after <= render.CONFIRM_MAX:
            raise ValueError(f"confirm_after must be {render.CONFIRM_MIN}-{render.CONFIRM_MAX} s")

    @property
    def port(self) -> int:
        return 5986 if self.transport == "https" else 5985


class Session(Protocol):
    """What the backend needs of a WinRM connection (``pypsrp.client.Client`` has it)."""

    def execute_ps(self, script: str) -> tuple[str, Any, bool]: ...
    def close(self) -> None: ...


SessionFactory = Callable[[SegmentAsset, WinRmAccess], Session]


# --------------------------------------------------------------------------- the pinned certificate


def pin_of(der: bytes) -> ScannedKey:
    """The pinned form and the fingerprint of a DER certificate."""
    digest = hashlib.sha256(der).digest()
    return ScannedKey(PIN_PREFIX + base64.b64encode(digest).decode(), "SHA256:" + base64.b64encode(digest)
                      .decode().rstrip("="))  # fmt: skip


def _pin_hex(pin: str) -> str:
    if not PIN_RE.fullmatch(pin):
        raise HostKeyUnknown("the asset's pinned key is not a WinRM certificate pin (x509-sha256 ...)")
    return base64.b64decode(pin[len(PIN_PREFIX) :]).hex()


class PinnedAdapter(requests.adapters.HTTPAdapter):
    """An HTTPS adapter that accepts exactly one certificate (urllib3's ``assert_fingerprint``):
    no CA and no host name are consulted, so a self-signed listener certificate works."""

    def __init__(self, fingerprint_hex: str, **kwargs: Any) -> None:
        self.fingerprint_hex = fingerprint_hex
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self.fingerprint_hex
        super().init_poolmanager(*args, **kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        # whatever verify the caller or the environment (REQUESTS_CA_BUNDLE) asks for: the CA
        # store is not consulted, the fingerprint is the whole check (urllib3 checks it regardless)
        kwargs["verify"] = False
        return super().send(request, *args, **kwargs)


def pin_session(session: requests.Session, pin: str) -> None:
    """Make ``session`` refuse every HTTPS certificate but the pinned one."""
    old = session.adapters.get("https://")
    retries = old.max_retries if isinstance(old, requests.adapters.HTTPAdapter) else 0
    session.mount("https://", PinnedAdapter(_pin_hex(pin), max_retries=retries))
    session.verify = False  # see PinnedAdapter.send


def _server(asset: SegmentAsset) -> str:
    return f"[{asset.address}]" if asset.address.version == 6 else str(asset.address)


def pypsrp_session(asset: SegmentAsset, access: WinRmAccess) -> Session:
    """A new ``pypsrp`` client (its own TCP connection and authentication) for ``asset``."""
    client = Client(
        _server(asset),
        port=access.port,
        username=access.username,
        password=access.password,
        ssl=access.transport == "https",
        auth=access.auth,
        encryption="always" if access.transport == "http" else "auto",  # https: TLS is the encryption
        connection_timeout=access.connection_timeout,
        operation_timeout=access.operation_timeout,
        read_timeout=access.operation_timeout + 10,
        negotiate_hostname_override=asset.name,  # the Kerberos SPN is HTTP/<name>; we connect by address
        reconnection_retries=0,
        no_proxy=True,
    )
    if access.transport == "https":
        if asset.host_key is None:
            raise HostKeyUnknown(f"asset {asset.name}: no certificate pinned; scan it and trust it first")
        transport = client.wsman.transport
        # pypsrp builds its requests session lazily; build it now and pin it (pypsrp 0.9's
        # _build_session: tests/segment/test_windows_winrm_mock.py fails if that changes)
        session = transport._build_session()
        pin_session(session, asset.host_key)
        transport.session = session
    return client


def scan_certificate(address: Address, port: int = 5986, timeout: float = 5.0) -> ScannedKey:
    """The certificate the WinRM HTTPS listener offers (no verification: it is what the admin
    is asked to trust, by comparing the fingerprint with the one on the host)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    family = socket.AF_INET6 if isinstance(address, ipaddress.IPv6Address) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as raw:
            raw.settimeout(timeout)
            raw.connect((str(address), port))
            with context.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise TargetUnreachable(f"no TLS certificate from {address}:{port} ({type(exc).__name__}); check "
                                "the address and that the WinRM HTTPS listener runs") from None  # fmt: skip
    if not der:
        raise SegmentHostError(f"{address}:{port} offered no certificate")
    return pin_of(der)


# --------------------------------------------------------------------------- running scripts


def _clean(text: object) -> str:
    words = "".join(c if c.isprintable() else " " for c in str(text)).split()
    return " ".join(words)[:_ERROR_MAX]


def _first_error(streams: Any) -> str:
    errors = getattr(streams, "error", None) or []
    return _clean(errors[0]) if errors else "no error record"


def run_script(session: Session, script: str, asset: SegmentAsset, what: str) -> str:
    """``script`` over ``session``; its output, or the segment module's error for what went wrong."""
    name = asset.name
    try:
        out, streams, had_errors = session.execute_ps(script)
    except requests.exceptions.SSLError as exc:
        if "fingerprint" in str(exc).lower():
            raise HostKeyChanged(f"{name}: the WinRM listener offered another certificate than the pinned "
                                 "one; management stopped until a certificate is trusted again") from None  # fmt: skip
        raise TargetUnreachable(f"{name}: TLS to WinRM failed during {what}") from None
    except AuthenticationError:
        raise SegmentHostError(f"{name}: WinRM authentication failed during {what}; check the account, "
                               "its password or Kerberos ticket, and that it may use WinRM") from None  # fmt: skip
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, WinRMTransportError) as exc:
        raise TargetUnreachable(f"{name}: WinRM unreachable during {what} ({type(exc).__name__})") from None
    except WinRMError as exc:
        raise BackendError(f"{name}: WinRM failed during {what}: {_clean(exc)}") from None
    if had_errors:
        raise BackendError(f"{name}: {what} failed on the host: {_first_error(streams)}")
    return str(out)


class WinRmHostOps:
    """:class:`~zerogate.segment.reconcile.HostOps` for Windows assets (see the module).

    ``session_factory`` opens a new session per call (pypsrp by default; tests give a
    fake), ``servers`` says which address(es) the asset sees the server come from."""

    def __init__(
        self,
        access: WinRmAccess,
        *,
        servers: Callable[[SegmentAsset], Sequence[Address]],
        session_factory: SessionFactory = pypsrp_session,
        scan: Callable[[Address, int], ScannedKey] = scan_certificate,
        check_timeout: float = 5.0,
        probe: Callable[[Address, int, float], bool] = tcp_connects,
    ) -> None:
        self.access = access
        self.servers = servers
        self.session_factory = session_factory
        self.scan = scan
        self.check_timeout = check_timeout
        self.probe = probe

    def _run(self, asset: SegmentAsset, script: str, what: str) -> str:
        session = self.session_factory(asset, self.access)
        try:
            return run_script(session, script, asset, what)
        finally:
            session.close()

    def scan_host_key(self, asset: SegmentAsset) -> ScannedKey:
        if self.access.transport == "http":
            return ScannedKey(KERBEROS_ONLY, f"Kerberos HTTP/{asset.name}")
        return self.scan(asset.address, self.access.port)

    def preflight(self, asset: SegmentAsset) -> Preflight:
        out = self._run(asset, render.preflight_script(self.access.layout), "preflight")
        return parse.parse_preflight(out, self.access.port)

    def start_learning(self, asset: SegmentAsset) -> None:
        """Nothing to load: Windows lists its connections without a learning table."""

    def stop_learning(self, asset: SegmentAsset) -> None:
        """Nothing to remove (see :meth:`start_learning`)."""

    def collect(self, asset: SegmentAsset, outbound: bool) -> Collection:
        out = self._run(asset, render.learning_script(), "collecting flows")
        got = parse.parse_learning(out, at=datetime.now(UTC), outbound=outbound, fallback=asset.address)
        return Collection(got.flows, got.listeners, got.addresses, got.skipped)

    def enforce(self, asset: SegmentAsset, preflight: Preflight) -> Enforcement:
        servers = list(self.servers(asset))
        script = render.enforce_script(
            asset,
            servers,
            winrm_ports=preflight.ssh_ports or (self.access.port,),
            confirm_after=self.access.confirm_after,
            layout=self.access.layout,
        )
        if script is None:
            self.unprotect(asset)
            return Enforcement(
                asset.asset_id, asset.rules_revision, "removed", f"mode {asset.mode}: no rules"
            )
        ports = probed_ports(asset, servers, preflight.listeners)
        answering = [p for p in ports if self.probe(asset.address, p, self.check_timeout)]
        revision = asset.rules_revision
        left = (f"{asset.name}: revision {revision} may be applied; the host restores its previous policy "
                f"within {self.access.confirm_after} s")  # fmt: skip
        try:
            rules = parse.parse_applied(self._run(asset, script, f"enforcing revision {revision}"), revision)
        except TargetUnreachable as exc:  # a rollback may be armed: the host restores itself
            raise RollbackLeftToTarget(f"{left} ({exc})") from None
        silent = [p for p in answering if not self.probe(asset.address, p, self.check_timeout)]
        try:
            fresh = self.session_factory(asset, self.access)  # the check: a new session must work
            try:
                if silent:
                    run_script(fresh, render.rollback_script(self.access.layout), asset, "rolling back")
                    raise CheckFailedRolledBack(
                        f"{asset.name}: TCP {', '.join(map(str, silent))} stopped answering under revision "
                        f"{revision}; the previous policy was restored"
                    )
                state = parse.parse_confirm(
                    run_script(
                        fresh, render.confirm_script(revision, self.access.layout), asset, "confirming"
                    ),
                    revision,
                )
            finally:
                fresh.close()
        except (TargetUnreachable, SegmentHostError, BackendError) as exc:
            if isinstance(exc, HostKeyChanged):
                raise
            raise RollbackLeftToTarget(f"{left}: no fresh WinRM session confirmed it ({exc})") from None
        if state == "ran":
            raise CheckFailedRolledBack(f"{asset.name}: the confirm came after the deadline; the host "
                                        "restored its previous policy (raise confirm_after)")  # fmt: skip
        if state != "confirmed":
            raise BackendError(f"{asset.name}: the rollback task of revision {revision} was {state}; "
                               "run unprotect and enforce again")  # fmt: skip
        checked = f"services answering: {', '.join(map(str, answering)) or 'none tested'}"
        return Enforcement(
            asset.asset_id, revision, "applied", f"{rules} rules; fresh WinRM session; {checked}"
        )

    def unprotect(self, asset: SegmentAsset) -> None:
        out = self._run(asset, render.unprotect_script(self.access.layout), "unprotecting")
        ok, _ = parse.parse_unprotected(out)
        if not ok:
            raise BackendError(f"{asset.name}: unprotect did not finish; run break-glass")

    def break_glass(self, asset: SegmentAsset) -> tuple[str, ...]:
        """Unprotect, best effort; the steps that failed (empty: all done)."""
        out = self._run(asset, render.break_glass_script(self.access.layout), "break-glass")
        return parse.parse_unprotected(out)[1]

    def retain(self, asset_ids: AbstractSet[int]) -> None:
        """Nothing runs in the background for Windows assets."""
