"""Tables for the gateway's flow records (schema 0008)."""

from __future__ import annotations
