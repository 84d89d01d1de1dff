"""The segment server's HTTPS listener for just-in-time openings (``jit_listen``).

A user asks for "my machine -> asset:port" with password and TOTP code, from the page
(``GET /`` / ``POST /``) or the CLI (``POST /v1/jit/requests``, JSON). The server
validates the request, forwards it to the controller with the *TCP peer address* as
the source (never a header such as X-Forwarded-For: the opening is for the machine
that is really connecting), and on approval adds the element on the host at once
(:meth:`~zerogate.segment.jit.JitKeeper.grant`) before it answers. Who may ask, the
credentials, throttling and audit are the controller's; the listener only remembers the
controller's "too many attempts" (429 with ``Retry-After``) for that user from that address
and refuses the same pair itself until then (:class:`ThrottleMemory`), so a guesser's
further tries do not even reach the controller.

It is the standard library's threading HTTP server under TLS 1.2+ in one thread of
the daemon's process: a handful of requests a day needs no framework, and nothing
here may outlive the daemon (:meth:`JitListener.stop`). Each connection runs in a
thread of its own with a socket timeout, the TLS handshake included, so a slow
client holds only its own thread.

Untrusted input: bodies are bounded (:data:`MAX_BODY`), every field is full-matched,
the password and code are never logged, and no answer repeats what was sent. The
page is a plain form (no script) with a strict CSP, no framing, no caching and no
referrer; a ``POST`` whose ``Origin`` or ``Sec-Fetch-Site`` says another site is
refused.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import re
import socket
import ssl
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs

from pydantic import ValidationError

from zerogate.agent.settings import parse_listen
from zerogate.agent.state import DeviceIdentity
from zerogate.deploy.firewall.errors import FirewallApplyError
from zerogate.model.snapshot import JitOpening
from zerogate.model.text import INVISIBLE_CATEGORIES
from zerogate.model.web import is_cross_site
from zerogate.netops.controller_api import ApiError, ControllerError
from zerogate.segment.jit import JitKeeper

log = logging.getLogger(__name__)

MAX_BODY = 8192
CONTROLLER_PATH = "/v1/segment/jit-requests"
API_PATH = "/v1/jit/requests"
DURATIONS = {3600: "1 hour", 14400: "4 hours", 28800: "8 hours", 43200: "12 hours", 86400: "1 day"}
CONNECTION_TIMEOUT = 15.0
MAX_CONNECTIONS = 32  # served at once; more are closed at once (a request is a human's click)
THROTTLE_DEFAULT = 60.0  # seconds remembered when the controller's 429 names no Retry-After
THROTTLE_MAX = 3600.0  # the most a 429 is remembered, whatever the controller said
THROTTLE_ENTRIES = 4096  # pairs remembered at most (the oldest go first)

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_TOTP = re.compile(r"[0-9]{6,8}")
_ASSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_PORT = re.compile(r"[1-9][0-9]{0,4}")

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Strict-Transport-Security": "max-age=31536000",
}
# What a refusal from the controller means, in our own words (never its text nor the input)
MESSAGES = {
    401: "sign-in failed: wrong user, password or code",
    403: "you may not open this port on this asset",
    404: "no such asset or port offered for just-in-time access",
    422: "the controller refused the request as invalid",
    429: "too many attempts; try again later",
}


class JitController(Protocol):
    """The controller call (``POST /v1/segment/jit-requests``): the 201 body, or
    :class:`~zerogate.netops.controller_api.ApiError` with the status."""

    def __call__(self, body: dict[str, Any]) -> Mapping[str, Any]: ...


def controller_call(identity: DeviceIdentity) -> JitController:
    """The daemon's controller call: the client's ``segment_jit_request`` when it has one,
    else the same POST by path."""

    def call(body: dict[str, Any]) -> Mapping[str, Any]:
        with identity.client(timeout=15) as api:
            method = getattr(api, "segment_jit_request", None)
            answer = method(body) if method is not None else api.post(CONTROLLER_PATH, body)
        if not isinstance(answer, Mapping):
            raise ControllerError("the controller's answer is not an object")
        return answer

    return call


class RequestError(Exception):
    """A request refused here or by the controller: HTTP ``status`` and a fixed message."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def _plain(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise RequestError(422, f"{what} is missing or too long")
    if any(unicodedata.category(c) in INVISIBLE_CATEGORIES for c in value):
        raise RequestError(422, f"{what} holds a control or invisible character")
    return value


def _matched(value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise RequestError(422, f"{what} is not valid")
    return value


def validate(fields: Mapping[str, object]) -> dict[str, Any]:
    """The request's fields, checked; :class:`RequestError` (422) naming the field, never its value."""
    port = fields.get("port")
    port_text = str(port) if isinstance(port, int) and not isinstance(port, bool) else port
    port_number = int(_matched(port_text, _PORT, "port"))
    duration = fields.get("duration")
    duration_text = (
        str(duration) if isinstance(duration, int) and not isinstance(duration, bool) else duration
    )
    if not isinstance(duration_text, str) or not duration_text.isascii() or not duration_text.isdigit():
        raise RequestError(422, "duration is not valid")
    if int(duration_text) not in DURATIONS or port_number > 65535:
        raise RequestError(422, f"{'port' if port_number > 65535 else 'duration'} is not valid")
    protocol = fields.get("protocol", "tcp")
    if protocol not in ("tcp", "udp"):
        raise RequestError(422, "protocol is not valid")
    return {
        "username": _matched(fields.get("username"), _USERNAME, "username"),
        "password": _plain(fields.get("password"), "password", 1024),
        "totp": _matched(fields.get("totp"), _TOTP, "code"),
        "asset": _matched(fields.get("asset"), _ASSET, "asset"),
        "protocol": protocol,
        "port": port_number,
        "duration": int(duration_text),
    }


def peer_source(host: str) -> str:
    """The peer address as the opening's source (an IPv4-mapped IPv6 address as IPv4)."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class ThrottleMemory:
    """The controller's 429 verdicts per (source, user) until they run out; thread-safe and
    bounded (:data:`THROTTLE_ENTRIES`), so a flood of pairs costs memory only up to that."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.until: dict[tuple[str, str], float] = {}

    def wait(self, source: str, username: str) -> float:
        """Seconds this pair must still wait (0: ask the controller)."""
        with self.lock:
            until = self.until.get((source, username))
            left = 0.0 if until is None else until - self.clock()
            if until is not None and left <= 0:
                del self.until[(source, username)]
            return max(0.0, left)

    def throttled(self, source: str, username: str, retry_after: float | None) -> None:
        seconds = min(THROTTLE_MAX, THROTTLE_DEFAULT if retry_after is None else max(1.0, retry_after))
        with self.lock:
            now = self.clock()
            if len(self.until) >= THROTTLE_ENTRIES:
                self.until = {k: t for k, t in self.until.items() if t > now}
                while len(self.until) >= THROTTLE_ENTRIES:
                    del self.until[next(iter(self.until))]
            self.until.pop((source, username), None)  # re-inserted last: the newest
            self.until[(source, username)] = now + seconds


class JitService:
    """What a request does, apart from HTTP: ask the controller, open on the host."""

    def __init__(self, keeper: JitKeeper, controller: JitController, memory: ThrottleMemory | None = None):
        self.keeper, self.controller = keeper, controller
        self.memory = memory or ThrottleMemory()

    def request(self, fields: Mapping[str, object], peer: str) -> dict[str, Any]:
        checked = validate(fields)
        source = peer_source(peer)
        wait = self.memory.wait(source, checked["username"])
        if wait > 0:
            log.info(
                "jit request by %s for %s refused here (throttled)", checked["username"], checked["asset"]
            )
            raise RequestError(429, MESSAGES[429], wait)
        body = {**checked, "source": source}
        try:
            answer = dict(self.controller(body))
        except ApiError as exc:
            if exc.status == 429:
                self.memory.throttled(source, checked["username"], exc.retry_after)
            status = exc.status if exc.status in MESSAGES else 502
            log.info(
                "jit request by %s for %s refused (%s)", checked["username"], checked["asset"], exc.status
            )
            message = MESSAGES.get(exc.status, "the controller refused the request")
            raise RequestError(status, message, exc.retry_after) from None
        except ControllerError:
            log.warning("jit request by %s: controller not reachable", checked["username"])
            raise RequestError(502, "the controller cannot be reached; try again later") from None
        try:
            opening = JitOpening.model_validate({k: answer.get(k) for k in JitOpening.model_fields})
        except ValidationError:
            raise RequestError(502, "the controller's answer was not understood") from None
        asset = self.keeper.find(checked["asset"])
        if (
            asset is None
            or str(opening.source) != source
            or (opening.protocol, opening.port) != (checked["protocol"], checked["port"])
        ):
            raise RequestError(503, "approved, but this server does not manage that asset (yet)")
        try:
            self.keeper.grant(asset, opening)
        except FirewallApplyError as exc:
            log.warning("jit opening %s on %s not added: %s", opening.opening_id, asset.name, exc)
            raise RequestError(
                502, "approved, but the host cannot be changed now; it opens when reachable"
            ) from None
        log.info(
            "jit opening %s: %s from %s to %s %s/%s until %s",
            opening.opening_id, checked["username"], source, asset.name, opening.protocol, opening.port,
            opening.expires_at.isoformat(),
        )  # fmt: skip
        return {
            "asset": asset.name,
            "port": opening.port,
            "protocol": opening.protocol,
            "source": source,
            "expires_at": opening.expires_at.isoformat(),
        }


def _when(iso: str) -> str:
    """An expiry for people: ``2026-12-06 05:28:01 UTC`` (the JSON answer keeps ISO 8601)."""
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso


def page(message: str = "", opened: Mapping[str, Any] | None = None) -> str:
    """The form (and the outcome of the last request): plain HTML, no script, no style."""
    durations = "".join(f'<option value="{s}">{t}</option>' for s, t in DURATIONS.items())
    note = f"<p><strong>{html.escape(message)}</strong></p>" if message else ""
    if opened is not None:
        note = (
            f"<p><strong>Opened: {html.escape(str(opened['source']))} to {html.escape(str(opened['asset']))} "
            f"{html.escape(str(opened['protocol']))}/{int(opened['port'])} until "
            f"{html.escape(_when(str(opened['expires_at'])))}</strong></p>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>zerogate: just-in-time access</title>'
        "</head><body><h1>Just-in-time access</h1>" + note + '<form method="post" action="/">'
        '<p><label>User <input name="username" autocomplete="username" required></label></p>'
        '<p><label>Password <input name="password" type="password" autocomplete="current-password" required>'
        "</label></p>"
        '<p><label>Code <input name="totp" inputmode="numeric" autocomplete="one-time-code" required></label></p>'
        '<p><label>Asset <input name="asset" required></label></p>'
        '<p><label>Port <input name="port" inputmode="numeric" required></label></p>'
        '<p><label>Protocol <select name="protocol"><option>tcp</option><option>udp</option></select></label></p>'
        f'<p><label>Duration <select name="duration">{durations}</select></label></p>'
        "<p><button>Open</button></p></form></body></html>\n"
    )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CONNECTION_TIMEOUT
    server_version = "zerogate-jit"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        assert isinstance(self.request, ssl.SSLSocket)
        self.request.do_handshake()  # here, in this connection's thread, under its timeout

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("jit listener: a request was refused before it was read")  # args hold raw input

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's errors (bad request line, headers) without the text it would echo."""
        self.close_connection = True
        self._send(code, "text/plain; charset=utf-8", f"request refused ({int(code)})\n")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("jit listener: %s %s -> %s", self.command, self.path.split("?", 1)[0][:64], code)

    def _send(self, status: int, content_type: str, text: str, retry_after: float | None = None) -> None:
        data = text.encode()
        self.send_response(status)
        for name, value in HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            self.send_header("Retry-After", str(max(1, int(retry_after + 0.999))))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, body: Mapping[str, Any], retry_after: float | None = None) -> None:
        self._send(status, "application/json", json.dumps(body), retry_after)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/":
            self._send(404, "text/plain; charset=utf-8", "not found\n")
            return
        self._send(200, "text/html; charset=utf-8", page())

    def do_POST(self) -> None:
        path = self.path
        is_api = path == API_PATH
        try:
            if path not in ("/", API_PATH):
                raise RequestError(404, "not found")
            self._same_site()
            raw = self._body()
            if is_api:
                if self.headers.get("Content-Type", "").split(";", 1)[0].strip() != "application/json":
                    raise RequestError(415, "send application/json")
                try:
                    fields = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    raise RequestError(400, "the body is not JSON") from None
                if not isinstance(fields, dict):
                    raise RequestError(422, "the body must be a JSON object")
            else:
                try:
                    form = parse_qs(
                        raw.decode(), keep_blank_values=True, max_num_fields=16, strict_parsing=True
                    )
                except (ValueError, UnicodeDecodeError):
                    raise RequestError(400, "the form could not be read") from None
                fields = {k: v[0] for k, v in form.items() if len(v) == 1}
            opened = self.server.service.request(fields, self.client_address[0])
        except RequestError as exc:
            if is_api:
                self._json(exc.status, {"detail": exc.message}, exc.retry_after)
            else:
                self._send(exc.status, "text/html; charset=utf-8", page(exc.message), exc.retry_after)
            return
        if is_api:
            self._json(201, opened)
        else:
            self._send(201, "text/html; charset=utf-8", page(opened=opened))

    def _same_site(self) -> None:
        """Refuse a cross-site POST (:func:`zerogate.model.web.is_cross_site`)."""
        if is_cross_site(self.headers.get):
            raise RequestError(403, "cross-site request refused")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") is not None:
            raise RequestError(411, "send a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None or not length.isascii() or not length.isdigit():
            raise RequestError(411, "send a Content-Length")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise RequestError(413, f"the body is larger than {MAX_BODY} bytes")
        return self.rfile.read(int(length))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, service: JitService, ipv6: bool):
        self.address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.context, self.service = context, service
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, peer = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), peer

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: refuse rather than queue threads without bound
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed handshake or a dropped connection: one debug line, no traceback."""
        log.debug("jit listener: a connection failed", exc_info=True)


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class JitListener:
    """The listener in a thread of its own; :meth:`stop` ends it (and open connections' threads
    are daemon threads that end with the process)."""

    def __init__(self, service: JitService, listen: str, cert_file: str, key_file: str) -> None:
        parsed = parse_listen(listen)
        if parsed is None:
            raise ValueError("jit_listen must be ADDRESS:PORT or [IPv6]:PORT")
        host, port = parsed
        ipv6 = ":" in host
        self.server = _Server((host, port), server_context(cert_file, key_file), service, ipv6)
        self.thread = threading.Thread(target=self.server.serve_forever, name="jit-listener", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> JitListener:
        self.thread.start()
        log.info("just-in-time listener on https://%s:%s/", *self.server.server_address[:2])
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_listener(keeper: JitKeeper, identity: DeviceIdentity, listen: tuple[str, str, str]) -> JitListener:
    """The daemon's listener: ``listen`` is (``jit_listen``, cert file, key file) from the settings."""
    address, cert_file, key_file = listen
    return JitListener(JitService(keeper, controller_call(identity)), address, cert_file, key_file).start()
