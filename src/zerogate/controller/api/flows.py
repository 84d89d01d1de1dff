"""Flow records: what the gateways forwarded or refused, posted in batches and listed."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
