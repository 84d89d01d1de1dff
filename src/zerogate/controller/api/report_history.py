"""A device's report history (schema 0007), for graphs."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
