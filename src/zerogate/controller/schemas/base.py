"""The base of every request body: strict parsing.

Request models are strict (:class:`Strict`): JSON ``0`` is not ``false`` and
``true`` is not ``1``, so a typo cannot quietly mean something else. Unknown
fields are refused.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A request body: unknown fields refused, no type coercion (``0`` is not ``false``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
