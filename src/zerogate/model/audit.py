"""The audit log's hash chain, as pure functions.

Each record's hash covers its own fields and the previous record's hash, so
changing a record breaks its own hash and deleting one breaks the link of the
next. The controller also keeps the newest (id, hash) as the chain head, so a
record cut off the end is noticed too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    source: str
    action: str
    object_type: str
    object_id: str
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str = ""


def utc_naive(at: datetime) -> datetime:
    """The same instant as naive UTC: SQLite hands back naive times, PostgreSQL
    aware ones, and the hash must not depend on which database stored it."""
    return at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)


def entry_hash(entry: AuditEntry) -> str:
    """SHA-256 over a canonical JSON encoding of every field but the hash."""
    body = {
        "id": entry.id,
        "at": utc_naive(entry.at).isoformat(timespec="microseconds"),
        "actor": entry.actor,
        "source": entry.source,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "outcome": entry.outcome,
        "details": entry.details,
        "prev_hash": entry.prev_hash,
    }
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    record_id: int
    problem: str


def verify_chain(entries: Iterable[AuditEntry], head_id: int, head_hash: str) -> list[ChainProblem]:
    """Every break in the chain, oldest first; an empty list means intact."""
    problems: list[ChainProblem] = []
    expected_prev = GENESIS_HASH
    expected_id = 1
    last_id, last_hash = 0, GENESIS_HASH
    for entry in entries:
        if entry.id != expected_id:
            problems.append(ChainProblem(entry.id, f"records {expected_id}..{entry.id - 1} are missing"))
        if entry.prev_hash != expected_prev:
            problems.append(
                ChainProblem(entry.id, "link to the previous record is broken (deleted or changed)")
            )
        if entry_hash(entry) != entry.hash:
            problems.append(ChainProblem(entry.id, "record was changed after it was written"))
        expected_prev = entry.hash
        expected_id = entry.id + 1
        last_id, last_hash = entry.id, entry.hash
    if (last_id, last_hash) != (head_id, head_hash):
        if last_id < head_id:
            problems.append(
                ChainProblem(last_id + 1, f"records {last_id + 1}..{head_id} were cut off the end")
            )
        else:
            problems.append(ChainProblem(last_id, "the newest record does not match the chain head"))
    return problems
