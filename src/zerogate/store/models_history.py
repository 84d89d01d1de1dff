"""Tables for the device report history (schema 0007)."""

from __future__ import annotations
