"""Tables for controllers (see the migration of the same name)."""

from __future__ import annotations
