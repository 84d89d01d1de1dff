"""verify_anchored, the pure check behind audit verification: records written
before anchoring started are chain-checked only, and nothing an attacker
without the key does to the anchored part passes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from zerogate.model.audit import (
    GENESIS_HASH,
    AuditEntry,
    Checkpoint,
    entry_hash,
    record_mac,
    verify_anchored,
)

KEY = b"k" * 32
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def chain(n: int, anchored_from: int, key: bytes = KEY) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev = GENESIS_HASH
    for i in range(1, n + 1):
        e = AuditEntry(
            i, T0 + timedelta(seconds=i), "admin:a", "", "create-group", "group", str(i), "success", {}, prev
        )
        digest = entry_hash(e)
        entries.append(replace(e, hash=digest, mac=record_mac(key, digest) if i >= anchored_from else None))
        prev = digest
    return entries


def checkpoint(e: AuditEntry, key: bytes = KEY) -> Checkpoint:
    return Checkpoint(e.id, e.hash, record_mac(key, e.hash), "2025-01-01T00:00:00+00:00")


def test_records_before_anchoring_are_reported_not_anchored_not_broken() -> None:
    entries = chain(10, anchored_from=6)
    report = verify_anchored(
        entries, 10, entries[-1].hash, KEY, [checkpoint(entries[7]), checkpoint(entries[9])]
    )
    assert report.problems == []
    assert (report.anchored_from, report.not_anchored, report.newest_checkpoint) == (6, 5, 10)


def test_a_log_never_anchored_still_gets_its_chain_checked() -> None:
    entries = chain(4, anchored_from=99)
    entries[1] = replace(entries[1], details={"changed": True})
    report = verify_anchored(entries, 4, entries[-1].hash, KEY, [])
    assert report.anchored_from is None and report.not_anchored == 4
    assert [(p.record_id, p.problem) for p in report.problems] == [
        (2, "record was changed after it was written")
    ]


def test_stripping_macs_to_look_unanchored_is_caught_by_the_checkpoints() -> None:
    entries = [replace(e, mac=None) for e in chain(6, anchored_from=1)]
    report = verify_anchored(entries, 6, entries[-1].hash, KEY, [checkpoint(entries[2])])
    # Records before the first checkpoint are pinned by its hash through the chain links.
    assert report.anchored_from == 3
    assert {p.record_id for p in report.problems} == {3, 4, 5, 6}
    assert all("has no MAC" in p.problem for p in report.problems)


def test_a_checkpoint_made_without_the_key_is_refused() -> None:
    entries = chain(3, anchored_from=1)
    forged = checkpoint(entries[2], key=b"x" * 32)
    report = verify_anchored(entries, 3, entries[-1].hash, KEY, [forged])
    assert [(p.record_id, p.problem) for p in report.problems] == [
        (3, "anchor checkpoint has a wrong MAC: the anchor file was edited")
    ]
