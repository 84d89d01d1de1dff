"""The admin portal: server-rendered pages on the controller's own TLS listener."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
