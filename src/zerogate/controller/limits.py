"""Request body size limit: refused with 413 before a byte too many is held.

A pure ASGI middleware, outside everything else: a declared
``Content-Length`` over the limit is refused before the body is read; a
body without one (chunked) is counted as it streams and refused at the
first byte past the limit. Either way the controller holds at most one limit
of a request, whatever the sender has, and the 413 closes the connection so
the rest is not read either.

The limit is ``max_body_bytes`` (default 1 MiB: the largest regular request,
a policy naming 10,000 applications, is ~700 kB). Two requests are allowed
more, because their schema allows more, and only to a caller whose bearer
credential is valid and of the kind the endpoint serves (checked here, since
FastAPI reads a body before it resolves who is calling; so nobody without a
valid credential gets past ``max_body_bytes`` anywhere):

- a group's member list (create or update), up to 100,000 usernames of up to
  64 characters: 8 MiB, for an admin;
- a device's data-plane report, up to 10,000 peers, or a segment server's
  report (larger learning batches come in several): 4 MiB, for a device.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zerogate.controller.state import Unprocessable

MIB = 1024 * 1024
GROUP_MEMBERS_BYTES = 8 * MIB
REPORT_BYTES = 4 * MIB
_GROUP_PATH = re.compile(r"/v1/groups(?:/[^/]+)?")
_DIGITS = re.compile(r"[0-9]{1,19}")


class _TooLarge(HTTPException):
    """The body passed the limit while the app was reading it.

    An HTTPException, so FastAPI passes it on from its body reading (other
    errors there become a 400) and the app's handler answers it in the API's
    error shape; if it escapes anyway, :class:`BodyLimit` answers it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit), headers={"connection": "close"})


# The request's caller kind (admin, user, device, anonymous), or None when its
# credential is not valid.
CallerKind = Callable[[Scope], Awaitable[str | None]]


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int, caller_kind: CallerKind) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.caller_kind = caller_kind

    async def limit_for(self, scope: Scope) -> int:
        method, path = scope.get("method", ""), scope.get("path", "")
        if method in ("POST", "PATCH") and _GROUP_PATH.fullmatch(path):
            larger, kind = GROUP_MEMBERS_BYTES, "admin"
        elif method == "POST" and path in ("/v1/report", "/v1/segment/report"):
            larger, kind = REPORT_BYTES, "device"
        else:
            return self.max_body_bytes
        has_credential = any(k == b"authorization" for k, _ in scope.get("headers") or [])
        if not has_credential or await self.caller_kind(scope) != kind:
            return self.max_body_bytes
        return max(self.max_body_bytes, larger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = await self.limit_for(scope)
        declared = [v for k, v in scope.get("headers") or [] if k == b"content-length"]
        if declared:
            text = declared[0].decode("latin-1").strip()
            if len(declared) > 1 or not _DIGITS.fullmatch(text):
                await _refuse(send, 400, "Content-Length must be one decimal number of bytes")
                return
            if int(text) > limit:
                await _refuse(send, 413, _too_large(limit))
                return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:  # too late for a status; the server closes the stream
                raise
            await _refuse(send, 413, _too_large(limit))


def _too_large(limit: int) -> str:
    return (
        f"the request body is larger than this endpoint accepts ({limit} bytes); "
        "send less, or raise max_body_bytes in controller.toml"
    )


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not wanted: the server closes instead of reading it.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def known_query_only(request: Request) -> None:
    """Refuse (422) a query parameter the operation does not take: strict at the boundary,
    so a misspelt filter is an error, not a silently wider answer. The message names what
    the operation takes, never what was sent."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route)
    if any(name not in known for name in request.query_params):
        takes = ", ".join(sorted(known)) or "none"
        raise Unprocessable(f"the query has a parameter this operation does not take (it takes: {takes})")


def _query_names(route: APIRoute) -> frozenset[str]:
    # Walked per request: a handful of dependencies, and routes (Starlette defines
    # __eq__ on them) cannot key a cache.
    def walk(d: Dependant) -> list[str]:
        return [p.alias for p in d.query_params] + [n for sub in d.dependencies for n in walk(sub)]

    return frozenset(walk(route.dependant))
