"""``/v1/ca`` and ``/v1/health``: what anyone may ask before enrolling or signing in."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from zerogate import __version__
from zerogate.controller.auth import State

# Tagged "devices" as well, as they were when the device API was one router.
router = APIRouter(prefix="/v1", tags=["devices"])


class PemResponse(PlainTextResponse):
    media_type = "application/x-pem-file"  # also what the OpenAPI document says


@router.get("/ca", response_class=PemResponse, tags=["meta"])
async def ca_certificate(state: State) -> PemResponse:
    """The deployment CA (public). Devices check it against the pin they were given."""
    return PemResponse(state.ca_pem.decode())


@router.get("/health", tags=["meta"])
async def health(state: State) -> dict[str, Any]:
    await state.db.ping()
    cache = state.policies
    return {
        "status": "ok",
        "revision": state.watch.current,
        "version": __version__,
        "policy_cache": {"hits": cache.hits, "misses": cache.misses, "revision": cache.revision},
    }
