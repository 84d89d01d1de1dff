"""The audit log's hash chain, as pure functions.

Each record's hash covers its own fields and the previous record's hash, so
changing a record breaks its own hash and deleting one breaks the link of the
next. The controller also keeps the newest (id, hash) as the chain head, so a
record cut off the end is noticed too.

All of that lives in one database, so someone who can write to it can also
re-hash the chain after an edit, rewind the head after cutting the tail, or
append a well-formed record. The chain is therefore anchored outside the
database: every record carries a MAC keyed with a secret that is not in the
database, and the controller appends checkpoints (id, hash, MAC) to a file of
its own after every write. :func:`verify_anchored` checks both.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
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
    mac: str | None = None  # None: written before the log was anchored (or the MAC was removed)


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


# ---------------------------------------------------------------- anchoring


def record_mac(key: bytes, record_hash: str) -> str:
    """HMAC-SHA256 of a record's hash. The hash covers every field and the link
    to the previous record, so this authenticates the record and its place."""
    return hmac.new(key, b"zerogate audit record\x00" + record_hash.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """What a controller saw right after a write: the newest record's id, hash and MAC."""

    id: int
    hash: str
    mac: str
    at: str


@dataclass(frozen=True)
class AnchoredReport:
    problems: list[ChainProblem]
    anchored_from: int | None  # first record that must carry a MAC; None: nothing anchored yet
    not_anchored: int  # records older than anchored_from: chain-checked only
    newest_checkpoint: int  # 0: no checkpoint


def verify_anchored(
    entries: Sequence[AuditEntry],
    head_id: int,
    head_hash: str,
    key: bytes,
    checkpoints: Sequence[Checkpoint],
) -> AnchoredReport:
    """The chain check plus the anchor: every record from the first anchored one
    on has a valid MAC, every checkpoint is in the log unchanged, and the log
    reaches the newest checkpoint.

    A MAC cannot be made without the key, so re-hashing after an edit and
    appending a forged record show up as bad or missing MACs; cutting the tail
    and rewinding the head shows up against the newest checkpoint. Records
    written before anchoring started (an upgraded deployment) carry no MAC and
    are reported as not anchored, not as broken. Stripping the MACs to pass for
    such records does not help: the checkpoints name anchored records.
    """
    problems = verify_chain(entries, head_id, head_hash)
    first_mac = min((e.id for e in entries if e.mac is not None), default=None)
    first_checkpoint = min((c.id for c in checkpoints), default=None)
    starts = [i for i in (first_mac, first_checkpoint) if i is not None]
    anchored_from = min(starts) if starts else None
    not_anchored = 0
    for e in entries:
        if anchored_from is None or e.id < anchored_from:
            not_anchored += 1
        elif e.mac is None:
            problems.append(
                ChainProblem(
                    e.id,
                    f"record has no MAC although the log is anchored from record {anchored_from}"
                    " (forged, or its MAC was removed)",
                )
            )
        elif not hmac.compare_digest(e.mac, record_mac(key, e.hash)):
            problems.append(
                ChainProblem(e.id, "record's MAC is wrong: it was forged or re-hashed without the audit key")
            )
    by_id = {e.id: e for e in entries}
    last_id = entries[-1].id if entries else 0
    newest = 0
    for c in sorted({c.id: c for c in checkpoints}.values(), key=lambda c: c.id):
        newest = c.id
        if not hmac.compare_digest(c.mac, record_mac(key, c.hash)):
            problems.append(
                ChainProblem(c.id, "anchor checkpoint has a wrong MAC: the anchor file was edited")
            )
            continue
        record = by_id.get(c.id)
        if record is None:
            if c.id <= last_id:
                problems.append(ChainProblem(c.id, "record named by an anchor checkpoint is missing"))
        elif record.hash != c.hash:
            problems.append(
                ChainProblem(c.id, f"record differs from the anchor checkpoint of {c.at} (rewritten)")
            )
    if newest > max(last_id, head_id):  # a head beyond the log is reported by verify_chain
        problems.append(
            ChainProblem(
                last_id + 1,
                f"records {last_id + 1}..{newest} were cut off the end (an anchor checkpoint saw record {newest})",
            )
        )
    problems.sort(key=lambda p: p.record_id)
    return AnchoredReport(problems, anchored_from, not_anchored, newest)
