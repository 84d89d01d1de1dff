"""The audit log is anchored outside its database (issue 8, defect 13).

An attacker with database rights drops the append-only triggers and then
rewrites history so that the hash chain is consistent again: cuts the tail and
rewinds the head, edits a record and re-hashes every later one, or appends a
well-formed record. The chain alone passes all three; the per-record MACs
(keyed outside the database) and the checkpoints in DATA_DIR/audit-anchor.jsonl
must catch each, through the API and the local ``controller audit-verify``.
The triggers themselves are reported by ``run --check`` and restored by ``run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dbaccess import SqlError, run_sql
from zerogate.model.audit import AuditEntry, entry_hash
from zerogate.testbed.localrun import AccountSession, LocalController, zerogate_argv

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def drop_append_only_triggers(lc: LocalController) -> None:
    if lc.database:
        run_sql(lc, "DROP TRIGGER audit_log_append_only ON audit_log")
    else:
        run_sql(lc, "DROP TRIGGER audit_log_no_update")
        run_sql(lc, "DROP TRIGGER audit_log_no_delete")


def records(admin: AccountSession) -> dict[int, dict[str, Any]]:
    rows: list[dict[str, Any]] = admin.client.get("/v1/audit", {"after_id": 0, "limit": 1000})
    return {r["id"]: r for r in rows}


def verify(admin: AccountSession) -> dict[str, Any]:
    result: dict[str, Any] = admin.client.get("/v1/audit/verify")
    return result


def local_verify(lc: LocalController) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    r = subprocess.run(
        [*zerogate_argv(), "controller", "audit-verify", "--data-dir", str(lc.data_dir), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def entry(rec: dict[str, Any], **changes: Any) -> AuditEntry:
    """The record as the chain hashes it, with ``changes`` applied (what an attacker recomputes)."""
    fields = {k: rec[k] for k in ("id", "actor", "source", "action", "object_type", "object_id", "outcome")}
    fields |= {"at": datetime.fromisoformat(rec["at"]), "details": rec["details"], "prev_hash": ""}
    return AuditEntry(**(fields | changes))


def sql_time(lc: LocalController, at: datetime) -> str:
    naive = at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return f"'{naive}+00'" if lc.database else f"'{naive}'"


def set_head(lc: LocalController, head_id: int, head_hash: str) -> None:
    run_sql(
        lc,
        f"UPDATE deployment_state SET audit_head_id = {head_id}, audit_head_hash = '{head_hash}' WHERE id = 1",
    )


def checkpointed(lc: LocalController) -> set[int]:
    """Record ids the controller checkpointed (one after each write)."""
    lines = (lc.data_dir / "audit-anchor.jsonl").read_text().splitlines()
    return {json.loads(line)["id"] for line in lines}


def problem_texts(result: dict[str, Any]) -> list[tuple[int, str]]:
    return [(p["record_id"], p["problem"]) for p in result["problems"]]


@pytest.fixture
def deployment(
    controller: LocalController, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[LocalController, AccountSession]]:
    """A deployment of its own (same engine as the module's) with 10 changes in its log."""
    database = ""
    if controller.database:
        server = request.getfixturevalue("postgres_server")
        database = server.create_database(f"zganchor_{uuid.uuid4().hex[:12]}")
    lc = LocalController(tmp_path / "deployment", database=database)
    try:
        lc.init().start()
        admin = lc.bootstrap_admin()
        for i in range(10):
            admin.client.post("/v1/groups", {"name": f"team{i}"})
        result = verify(admin)
        assert result["ok"] is True and result["problems"] == []
        assert result["anchored_from"] == 1 and result["not_anchored"] == 0
        assert result["newest_checkpoint"] == result["head_id"] >= 14
        yield lc, admin
    finally:
        lc.stop()


# ---------------------------------------------------------------------------
# tampering that keeps the hash chain consistent
# ---------------------------------------------------------------------------


def test_cutting_the_tail_and_rewinding_the_head_is_detected(
    deployment: tuple[LocalController, AccountSession],
) -> None:
    lc, admin = deployment
    log = records(admin)
    head = max(log)
    keep = head - 3
    drop_append_only_triggers(lc)
    run_sql(lc, f"DELETE FROM audit_log WHERE id > {keep}")
    set_head(lc, keep, log[keep]["hash"])

    result = verify(admin)
    assert result["ok"] is False and result["records"] == keep
    found = problem_texts(result)
    assert (
        keep + 1,
        f"records {keep + 1}..{head} were cut off the end (an anchor checkpoint saw record {head})",
    ) in found
    # Nothing else is wrong with the chain itself: only the anchor tells.
    assert len(found) == 1, found

    code, local = local_verify(lc)
    assert code == 1 and local["ok"] is False
    assert any("cut off the end" in p["problem"] for p in local["problems"])


def test_editing_a_record_and_rehashing_the_chain_is_detected(
    deployment: tuple[LocalController, AccountSession],
) -> None:
    lc, admin = deployment
    log = records(admin)
    head = max(log)
    target = 8
    drop_append_only_triggers(lc)
    prev = log[target - 1]["hash"]
    for rid in range(target, head + 1):
        details = {"name": "nothing-to-see"} if rid == target else log[rid]["details"]
        digest = entry_hash(entry(log[rid], details=details, prev_hash=prev))
        run_sql(
            lc,
            f"UPDATE audit_log SET details = '{json.dumps(details)}', prev_hash = '{prev}', "
            f"hash = '{digest}' WHERE id = {rid}",
        )
        prev = digest
    set_head(lc, head, prev)

    result = verify(admin)
    assert result["ok"] is False
    found = problem_texts(result)
    # The chain is consistent again; every re-hashed record's MAC is not.
    assert not any("changed after" in text or "link to the previous" in text for _, text in found), found
    wrong_mac = {rid for rid, text in found if "MAC is wrong" in text}
    assert wrong_mac == set(range(target, head + 1))
    rewritten = {rid for rid, text in found if "differs from the anchor checkpoint" in text}
    assert rewritten == checkpointed(lc) & set(range(target, head + 1)) and head in rewritten

    code, local = local_verify(lc)
    assert code == 1 and {p["record_id"] for p in local["problems"]} == set(range(target, head + 1))


def test_appending_well_formed_forged_records_is_detected(
    deployment: tuple[LocalController, AccountSession],
) -> None:
    lc, admin = deployment
    log = records(admin)
    head = max(log)
    prev = log[head]["hash"]
    # No trigger stands in the way of INSERT; the attacker forges two records:
    # one without a MAC, one with a MAC copied from a genuine record.
    copied_mac = run_sql(lc, f"SELECT mac FROM audit_log WHERE id = {head}")[0][0]
    assert len(copied_mac) == 64
    for rid, mac in ((head + 1, "NULL"), (head + 2, f"'{copied_mac}'")):
        forged = AuditEntry(
            id=rid,
            at=datetime.now(UTC),
            actor="admin:admin",
            source="127.0.0.1",
            action="create-group",
            object_type="group",
            object_id="999",
            outcome="success",
            details={"name": "backdoor"},
            prev_hash=prev,
        )
        digest = entry_hash(forged)
        run_sql(
            lc,
            "INSERT INTO audit_log (id, at, actor, source, action, object_type, object_id, outcome, "
            f"details, prev_hash, hash, mac) VALUES ({rid}, {sql_time(lc, forged.at)}, 'admin:admin', "
            "'127.0.0.1', 'create-group', 'group', '999', 'success', '{\"name\": \"backdoor\"}', "
            f"'{prev}', '{digest}', {mac})",
        )
        prev = digest
    set_head(lc, head + 2, prev)

    result = verify(admin)
    assert result["ok"] is False and result["records"] == head + 2
    found = problem_texts(result)
    assert [rid for rid, _ in found] == [head + 1, head + 2], found
    assert "has no MAC although the log is anchored from record 1" in found[0][1]
    assert "MAC is wrong" in found[1][1]

    code, local = local_verify(lc)
    assert code == 1 and [p["record_id"] for p in local["problems"]] == [head + 1, head + 2]


# ---------------------------------------------------------------------------
# the append-only triggers
# ---------------------------------------------------------------------------


def check(lc: LocalController) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")} | {"COLUMNS": "400"}
    return subprocess.run(
        [*zerogate_argv(), "controller", "run", "--check", "--data-dir", str(lc.data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_removed_triggers_are_reported_by_check_and_restored_by_run(
    deployment: tuple[LocalController, AccountSession],
) -> None:
    lc, _ = deployment
    assert check(lc).returncode == 0
    drop_append_only_triggers(lc)
    if lc.database:
        # Row triggers do not fire on TRUNCATE: a trigger of its own refuses it,
        # and disabling that one is noticed as well.
        with pytest.raises(SqlError, match="append-only"):
            run_sql(lc, "TRUNCATE audit_log")
        run_sql(lc, "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_truncate")
    run_sql(lc, "UPDATE audit_log SET actor = 'nobody' WHERE id = 2")  # nothing stops it now

    r = check(lc)
    said = " ".join(r.stdout.split())
    assert r.returncode == 1, said
    missing = (
        ["audit_log_append_only is missing"]
        if lc.database
        else [
            "audit_log_no_update is missing",
            "audit_log_no_delete is missing",
        ]
    )
    for text in missing:
        assert f"FAIL audit log protection: trigger {text}; 'zerogate controller run' restores it" in said
    if lc.database:
        assert "trigger audit_log_no_truncate is disabled" in said

    lc.stop()
    lc.start()
    assert "audit log protection was removed" in lc.output()
    assert check(lc).returncode == 0
    with pytest.raises(SqlError, match="append-only"):
        run_sql(lc, "UPDATE audit_log SET actor = 'nobody' WHERE id = 3")
    with pytest.raises(SqlError, match="append-only"):
        run_sql(lc, "DELETE FROM audit_log WHERE id = 3")
    restored = run_sql(lc, "SELECT actor, details FROM audit_log WHERE action = 'restore-audit-triggers'")
    assert len(restored) == 1 and restored[0][0] == "controller"
    assert all(text.split()[0] in restored[0][1] for text in missing)
    # The edit made while the triggers were gone is still reported.
    code, local = local_verify(lc)
    assert code == 1 and [(p["record_id"], "changed" in p["problem"]) for p in local["problems"]] == [
        (2, True)
    ]
