"""The OpenAPI document, made to match what the API really answers.

FastAPI documents its own 422 shape (a list of errors) and nothing about the
refusals handlers raise. Every error here is ``{"detail": "<text>"}`` (see
errors.py), so the document gets one ``Problem`` schema, and each operation
lists the error statuses it can return, derived from what the route is:

- every operation: 400 (unreadable request) and 413 (body over the limit);
- every operation: 422 too (a query parameter it does not take, see limits.py);
- signed-in operations (a bearer token is resolved): 401 and 403, and the
  ``bearer`` security requirement;
- operations that check a secret in their body (sign-in, activation,
  bootstrap, enrollment and its preflight): 401, 403 and 429 (throttled);
- with path parameters, a body (which names other objects) or a device
  caller (whose object may be gone): 404;
- every change (not GET): 409.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from zerogate.controller import auth

# Operations that take a secret in the body instead of a bearer token.
SECRET_CHECKING = frozenset(
    {
        "/v1/auth/bootstrap",
        "/v1/auth/activate",
        "/v1/auth/totp/confirm",
        "/v1/auth/login",
        "/v1/enroll",
        "/v1/enroll/preflight",
        "/v1/segment/jit-requests",
    }
)
# Successful answers a handler gives besides its declared status.
EXTRA_SUCCESS: dict[tuple[str, str], dict[str, str]] = {
    ("get", "/v1/snapshot"): {"204": "Nothing newer than `after` arrived within `wait` seconds."},
}
WHY = {
    400: "The request could not be read (malformed headers or body).",
    401: "No valid credential: sign in, or use a valid token or key.",
    403: "The credential is valid but not allowed to do this.",
    404: "No such object (or one the request names does not exist).",
    409: "Conflicts with the current state (name or key in use, still referenced).",
    413: "The request body is larger than this endpoint accepts.",
    422: "A parameter or body field is not valid; `detail` names each and why.",
    429: "Too many failed attempts; wait `Retry-After` seconds.",
}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "Every error: what went wrong and what to do, as one sentence or a list joined by '; '.",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def error_statuses(route: RouteContext, method: str) -> set[int]:
    """The error statuses ``method`` on ``route`` (an API route as included in the app) can answer."""
    dependant: Dependant = route.dependant
    calls = set(_calls(dependant))
    signed_in = auth.principal in calls
    checks_secret = route.path_format in SECRET_CHECKING
    has_body = route.body_field is not None
    statuses = {400, 413, 422}
    if signed_in or checks_secret:
        statuses |= {401, 403}
    if checks_secret:
        statuses.add(429)
    if dependant.path_params or has_body or auth.require_device in calls:
        statuses.add(404)
    if method != "GET":
        statuses.add(409)
    return statuses


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The document served at /openapi.json (built once)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for fastapi_own in ("HTTPValidationError", "ValidationError"):
        schemas.pop(fastapi_own, None)
    schemas["Problem"] = PROBLEM_SCHEMA
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A session or API token (zgt_...) or a device credential (zgd_...).",
        }
    }
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    # Routes as the app serves them (with their router's prefix), as get_openapi reads them.
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        path = route.path_format or ""
        for method in sorted(route.methods or ()):
            operation = doc["paths"][path][method.lower()]
            responses = operation.setdefault("responses", {})
            for status in sorted(error_statuses(route, method)):
                responses[str(status)] = {"description": WHY[status], "content": problem}
                if status == 429:
                    responses["429"]["headers"] = {
                        "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
                    }
            for status_text, why in EXTRA_SUCCESS.get((method.lower(), path), {}).items():
                responses[status_text] = {"description": why}
            calls = set(_calls(route.dependant))
            if auth.principal in calls:
                # Routes that resolve the caller without requiring one (whoami)
                # also answer anonymous requests: the credential is optional.
                required = calls & {auth.require_admin, auth.require_account, auth.require_device}
                operation["security"] = [{"bearer": []}] if required else [{"bearer": []}, {}]
    app.openapi_schema = doc
    return doc
