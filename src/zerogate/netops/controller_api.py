"""The one HTTPS client every component uses to talk to the controller.

TLS is pinned: a :class:`ControllerClient` trusts exactly one CA (the
controller's own), requires TLS 1.3 and checks the host name. First contact,
when a host knows only the CA *pin* from an install string, goes through
:func:`fetch_ca`, which downloads the CA certificate, checks it against the pin
and then proves that the server's certificate chains to it.

A TLS-intercepting proxy in the path therefore makes every call fail loudly
with :class:`TLSInterceptionSuspected` instead of silently handing the
controller's traffic to a middlebox. ``HTTP(S)_PROXY`` / ``NO_PROXY`` are
honoured: a plain CONNECT proxy is fine, TLS stays end to end.

Errors::

    ControllerError(Exception)
    ├── ControllerUnreachable       connect refused / timeout / DNS / proxy failure
    ├── TLSInterceptionSuspected    the peer's certificate does not chain to the pinned CA
    ├── ServerNameMismatch          genuine CA, but the certificate lacks the host name used
    └── ApiError                    HTTP status >= 400 (status, message, body, retry_after)

Connections are kept alive for KEEPALIVE_SECONDS (60 s): longer than the
devices' report interval, shorter than the controller's own keep-alive (75 s),
so the client never reuses a connection the server is about to close, and a
device reporting every few seconds keeps one TLS connection (and one CONNECT
tunnel through a proxy) instead of opening a new one per report.

Secrets: the bearer token is only ever put in the Authorization header; it is
never logged and never part of an exception message.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from zerogate.pki.ca import PKIError, ca_pin, parse_pin

__all__ = [
    "CA_PATH",
    "ApiError",
    "ControllerClient",
    "ControllerError",
    "ControllerUnreachable",
    "ServerNameMismatch",
    "TLSInterceptionSuspected",
    "fetch_ca",
    "make_ssl_context",
]

log = logging.getLogger(__name__)

CA_PATH = "/v1/ca"
SEGMENT_JIT_PATH = "/v1/segment/jit-requests"
_PEM_TYPES = ("application/x-pem-file", "text/plain", "application/x-x509-ca-cert")
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_IP_MISMATCH = 64  # X509_V_ERR_IP_ADDRESS_MISMATCH
_MAX_BODY_IN_MESSAGE = 200
KEEPALIVE_SECONDS = 60.0
_RETRY_AFTER = re.compile(r"[0-9]{1,6}")  # delta-seconds; an HTTP date is ignored


class ControllerError(Exception):
    """Talking to the controller failed."""


class ControllerUnreachable(ControllerError):
    """No connection to the controller (refused, timed out, DNS, proxy)."""

    def __init__(self, url: str, reason: str, *, busy: bool = False) -> None:
        self.url = url
        self.reason = reason
        self.busy = busy  # it answered but cut the TLS handshake: a sign of an overloaded server
        super().__init__(
            f"cannot reach the controller at {url}: {reason}. Check that the URL is right, "
            "the controller is running, and that DNS, firewalls and any HTTPS_PROXY/NO_PROXY "
            "settings let this host connect to it"
        )


class TLSInterceptionSuspected(ControllerError):
    """The TLS peer is not the controller the pin names."""

    def __init__(self, url: str, pin: str, seen_pin: str | None = None, detail: str | None = None) -> None:
        self.url = url
        self.pin = pin
        self.seen_pin = seen_pin
        self.detail = detail
        host = urlsplit(url).hostname or url
        seen = f" (saw {seen_pin})" if seen_pin else ""
        extra = f" [{detail}]" if detail else ""
        super().__init__(
            f"the controller at {url} presented a certificate chain that does not match the "
            f"pinned CA {pin}{seen}{extra}; a TLS-intercepting proxy or middlebox is probably "
            f"in the path; exempt {host} from TLS inspection"
        )


class ServerNameMismatch(ControllerError):
    """The certificate chains to the pinned CA but is not issued for this host name."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        host = urlsplit(url).hostname or url
        super().__init__(
            f"the controller at {url} has a certificate from the right CA, but not for the "
            f"name {host} ({detail}); connect with a name the controller's certificate lists, "
            "or re-issue the controller certificate to include it"
        )


class ApiError(ControllerError):
    """The controller answered with an HTTP error status."""

    def __init__(self, status: int, message: str, body: Any, retry_after: float | None = None) -> None:
        self.status = status
        self.message = message
        self.body = body
        self.retry_after = retry_after  # seconds from a Retry-After header, if it had a number
        super().__init__(status, message, body)

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------- helpers


def make_ssl_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts only ``ca_pem``, TLS 1.3+, host names checked."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise ControllerError(f"the pinned CA certificate is not usable PEM: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _unverified_context() -> ssl.SSLContext:
    # Used only by fetch_ca: the pin, not the PKI, authenticates that response.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _normalize_base_url(base_url: str) -> str:
    parts = urlsplit(base_url.strip())
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise ControllerError(f"controller URL {base_url!r} must start with https:// and name a host")
    return base_url.strip().rstrip("/")


def _cert_verification_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _translate_transport_error(
    exc: httpx.TransportError, url: str, pin: str, seen_pin: str | None = None
) -> ControllerError:
    verification = _cert_verification_error(exc)
    if verification is not None:
        detail = verification.verify_message or str(verification)
        if verification.verify_code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
            return ServerNameMismatch(url, detail)
        return TLSInterceptionSuspected(url, pin, seen_pin, detail)
    tls = _ssl_error(exc)
    if tls is not None and tls.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST"):
        return ControllerUnreachable(
            url, "the server on this port does not speak TLS (wrong port, or plain HTTP)"
        )
    if isinstance(tls, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return ControllerUnreachable(url, "the connection was closed during the TLS handshake", busy=True)
    if tls is not None:
        # A handshake failure that is not a certificate problem (e.g. a middlebox
        # that cannot speak TLS 1.3) is still a sign that something sits in between.
        return TLSInterceptionSuspected(url, pin, seen_pin, f"TLS handshake failed: {tls}")
    if isinstance(exc, httpx.TimeoutException):
        return ControllerUnreachable(url, "timed out")
    if isinstance(exc, httpx.ProxyError):
        return ControllerUnreachable(url, f"the HTTP proxy refused or failed: {exc}")
    return ControllerUnreachable(url, str(exc) or type(exc).__name__)


def _flatten_detail(detail: Any) -> str | None:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = [_flatten_validation_item(item) for item in detail]
        return "; ".join(p for p in parts if p) or None
    if isinstance(detail, dict):
        for key in ("message", "msg", "detail"):
            if isinstance(detail.get(key), str):
                return str(detail[key])
        return json.dumps(detail, sort_keys=True)
    return None if detail is None else str(detail)


def _flatten_validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    msg = str(item.get("msg", "invalid"))
    loc = item.get("loc")
    if isinstance(loc, list | tuple) and loc:
        fields = [str(part) for part in loc]
        if len(fields) > 1 and fields[0] in ("body", "query", "path", "header", "cookie"):
            fields = fields[1:]
        return f"{'.'.join(fields)}: {msg}"
    return msg


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if _RETRY_AFTER.fullmatch(value) else None


def _api_error(response: httpx.Response) -> ApiError:
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    message: str | None = None
    if isinstance(body, dict) and "detail" in body:
        message = _flatten_detail(body["detail"])
    if not message:
        text = body if isinstance(body, str) else ""
        text = " ".join(text.split())[:_MAX_BODY_IN_MESSAGE]
        message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if text:
            message = f"{message}: {text}"
    return ApiError(response.status_code, message, body, _retry_after(response))


# --------------------------------------------------------------------------- client


class ControllerClient:
    """Pinned HTTPS JSON client for the controller API."""

    def __init__(
        self,
        base_url: str,
        ca_pem: bytes,
        *,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = _normalize_base_url(base_url)
        try:
            self.pin = ca_pin(ca_pem)
        except PKIError as exc:
            raise ControllerError(f"the pinned CA certificate is not usable: {exc}") from exc
        self._token = token
        self._http = httpx.Client(
            base_url=self.base_url,
            verify=make_ssl_context(ca_pem),
            timeout=httpx.Timeout(timeout),
            # httpx's defaults, except how long an idle connection is kept
            limits=httpx.Limits(
                max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_SECONDS
            ),
            trust_env=True,
            headers={"Accept": "application/json", "User-Agent": "zerogate"},
        )

    def set_token(self, token: str | None) -> None:
        """Use ``token`` (or none) as bearer credential for later requests."""
        self._token = token

    # -- JSON verbs

    def get(self, path: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        return self._decode(self.request("GET", path, params=params, timeout=timeout))

    def post(self, path: str, json: Any = None, *, timeout: float | None = None) -> Any:
        return self._decode(self.request("POST", path, json=json, timeout=timeout))

    def put(self, path: str, json: Any = None, *, timeout: float | None = None) -> Any:
        return self._decode(self.request("PUT", path, json=json, timeout=timeout))

    def patch(self, path: str, json: Any = None, *, timeout: float | None = None) -> Any:
        return self._decode(self.request("PATCH", path, json=json, timeout=timeout))

    def delete(self, path: str, *, timeout: float | None = None) -> Any:
        return self._decode(self.request("DELETE", path, timeout=timeout))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request; return the raw response for status < 400, else raise ApiError."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        url = self.base_url + path
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout)
        try:
            response = self._http.request(method, path, params=params, json=json, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            error = _translate_transport_error(exc, url, self.pin)
            log.debug("controller request failed", extra={"component": "controller_api"})
            raise error from exc
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    def _decode(self, response: httpx.Response) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            content_type = response.headers.get("content-type", "unknown")
            raise ControllerError(
                f"the controller at {self.base_url} answered {response.request.url.path} with "
                f"non-JSON content ({content_type}); check that the URL points at the "
                "zerogate controller and not at a proxy or web server"
            ) from exc

    # -- calls with a fixed shape

    def segment_jit_request(self, body: Mapping[str, object]) -> dict[str, Any]:
        """Forward a user's just-in-time request (segment servers only): returns
        ``{opening_id, asset, source, protocol, port, expires_at}``. A refusal
        raises :class:`ApiError`: 401 wrong credentials, 403 not allowed (the
        reason in ``message``), 429 throttled (``retry_after`` set)."""
        result = self.post(SEGMENT_JIT_PATH, dict(body))
        if not isinstance(result, dict):
            raise ControllerError(
                f"the controller answered {SEGMENT_JIT_PATH} with something other than an object"
            )
        return result

    # -- lifecycle

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- first contact


def _peer_issuer(response: httpx.Response) -> str | None:
    """The issuer of the certificate the server presented, for error messages."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    try:
        ssl_object = stream.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(True) if ssl_object is not None else None
        if not der:
            return None
        return str(x509.load_der_x509_certificate(der).issuer.rfc4514_string())
    except (AttributeError, TypeError, ValueError, ssl.SSLError):
        return None


def fetch_ca(base_url: str, pin: str, *, timeout: float = 10.0) -> bytes:
    """Download the controller's CA certificate and prove it is the pinned one.

    1. GET /v1/ca without certificate verification; the body must be a CA
       certificate whose pin equals ``pin``.
    2. Make one more request through a connection that trusts only that CA,
       which proves the server's own certificate chains to it.

    Raises ``InvalidPin`` (from :mod:`zerogate.pki.ca`) for a malformed pin and
    :class:`ControllerError` subclasses for everything else.
    """
    expected = parse_pin(pin)
    url = _normalize_base_url(base_url)
    try:
        with httpx.Client(
            base_url=url,
            verify=_unverified_context(),
            timeout=httpx.Timeout(timeout),
            trust_env=True,
            headers={"Accept": ", ".join(_PEM_TYPES), "User-Agent": "zerogate"},
        ) as http:
            response = http.get(CA_PATH)
            issuer = _peer_issuer(response)
    except httpx.TransportError as exc:
        raise _translate_transport_error(exc, url, expected) from exc
    if response.status_code >= 400:
        raise _api_error(response)
    ca_pem = _extract_ca_pem(url, response)
    try:
        seen = ca_pin(ca_pem)
    except PKIError as exc:  # pragma: no cover - _extract_ca_pem already parsed it
        raise ControllerError(f"{url}{CA_PATH} returned an unreadable certificate") from exc
    if seen != expected:
        raise TLSInterceptionSuspected(
            url, expected, seen, "the CA certificate served at /v1/ca has a different pin"
        )
    try:
        with ControllerClient(url, ca_pem, timeout=timeout) as client:
            client.request("GET", CA_PATH)
    except TLSInterceptionSuspected as exc:
        detail = exc.detail
        if issuer:
            detail = f"{detail}; the server's certificate was issued by {issuer}"
        raise TLSInterceptionSuspected(url, expected, None, detail) from exc
    return ca_pem


def _extract_ca_pem(url: str, response: httpx.Response) -> bytes:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    wrong = ControllerError(
        f"{url}{CA_PATH} did not return a CA certificate (content-type "
        f"{content_type or 'missing'}); check that the URL points at the zerogate controller"
    )
    if content_type not in _PEM_TYPES:
        raise wrong
    try:
        cert = x509.load_pem_x509_certificate(response.content)
    except ValueError as exc:
        raise wrong from exc
    return cert.public_bytes(Encoding.PEM)
