"""The audit log and its verification (``/v1/audit``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    source: str
    action: str
    object_type: str
    object_id: str
    outcome: str
    details: dict[str, Any]
    hash: str


class AuditVerifyOut(BaseModel):
    """The chain check plus the anchor outside the database (see store/anchor.py)."""

    ok: bool
    records: int
    head_id: int
    problems: list[dict[str, Any]]
    anchored_from: int | None = Field(
        None, description="First record that must carry a MAC; older ones are only chain-checked."
    )
    not_anchored: int = Field(0, description="Records written before the log was anchored.")
    checkpoints: int = Field(0, description="Checkpoints in this controller's anchor file.")
    newest_checkpoint: int = Field(0, description="Newest record id a checkpoint saw; the log must reach it.")
    warnings: list[str] = Field(default_factory=list)
