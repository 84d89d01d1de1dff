"""The audit log: every change and access decision is recorded, the hash chain
verifies (API and CLI), the database refuses edits, and an attacker who gets
around that (drops the triggers) is caught: changed, deleted and cut-off
records are each reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbaccess import SqlError, run_sql
from zerogate.model.audit import AuditEntry, entry_hash
from zerogate.netops.controller_api import ApiError, make_ssl_context
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.totp import totp_code
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController, zerogate_argv

# Signed-in sessions keep a keep-alive connection open, which holds the
# controller's graceful shutdown for 5 s; close them before it is stopped.


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def drop_append_only_triggers(controller: LocalController) -> None:
    if controller.database:
        run_sql(controller, "DROP TRIGGER audit_log_append_only ON audit_log")
    else:
        run_sql(controller, "DROP TRIGGER audit_log_no_update")
        run_sql(controller, "DROP TRIGGER audit_log_no_delete")


def audit_since(admin: AccountSession, after_id: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = admin.client.get("/v1/audit", {"after_id": after_id, "limit": 1000})
    return records


def verify(admin: AccountSession) -> dict[str, Any]:
    result: dict[str, Any] = admin.client.get("/v1/audit/verify")
    return result


def problems(admin: AccountSession) -> list[tuple[int, str]]:
    return [(p["record_id"], p["problem"]) for p in verify(admin)["problems"]]


def cli_verify(
    controller: LocalController, admin: AccountSession, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``zerogate admin audit verify`` with a profile for ``admin`` (no interactive sign-in)."""
    profile = tmp_path / f"profile-{uuid.uuid4().hex[:6]}.json"
    profile.write_text(
        json.dumps(
            {
                "url": controller.url,
                "ca_pem": controller.ca_pem.decode(),
                "username": admin.username,
                "token": admin.token,
            }
        )
    )
    profile.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_") and "proxy" not in k.lower()}
    env |= {"ZEROGATE_PROFILE": str(profile), "COLUMNS": "200"}
    return subprocess.run(
        [*zerogate_argv(), "admin", "audit", "verify", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def raw_login(controller: LocalController, username: str, password: str, code: str) -> httpx.Response:
    with httpx.Client(
        base_url=controller.url, verify=make_ssl_context(controller.ca_pem), trust_env=False, timeout=30
    ) as h:
        return h.post("/v1/auth/login", json={"username": username, "password": password, "totp": code})


@pytest.fixture
def fresh_controller(
    controller: LocalController, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[LocalController]:
    """A deployment of its own (same engine as the module's), for tests that damage the log."""
    database = ""
    if controller.database:
        server = request.getfixturevalue("postgres_server")
        database = server.create_database(f"zgaudit_{uuid.uuid4().hex[:12]}")
    lc = LocalController(tmp_path / "deployment", database=database)
    try:
        lc.init().start()
        yield lc
    finally:
        lc.stop()


# ---------------------------------------------------------------------------
# what is recorded
# ---------------------------------------------------------------------------


def test_changes_sign_ins_enrollments_and_revocations_are_recorded(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    head = verify(admin)["head_id"]
    t0 = datetime.now(UTC) - timedelta(seconds=5)

    group = admin.client.post("/v1/connector-groups", {"name": unique("grp"), "subnets": ["10.77.0.0/24"]})
    with pytest.raises(ApiError):  # a refused change is a decision too
        admin.client.post("/v1/connector-groups", {"name": group["name"], "subnets": ["10.78.0.0/24"]})
    user = controller.create_user(admin, unique("ivy"), [])
    wrong = raw_login(controller, user.username, "not my password 1", totp_code(user.authenticator.secret, 0))
    assert wrong.status_code == 401
    key = admin.client.post(f"/v1/connector-groups/{group['name']}/provisioning-keys", {})
    with controller.client() as c:
        device = c.post(
            "/v1/enroll",
            {
                "key": key["key"],
                "name": unique("conn"),
                "csr": create_csr(generate_private_key(), "c").decode(),
                "wg_public_key": generate_keypair()[1],
            },
        )
    admin.client.post(f"/v1/devices/{device['device_id']}/revoke")
    user.client.post("/v1/auth/logout")

    records = audit_since(admin, head)
    t1 = datetime.now(UTC) + timedelta(seconds=5)
    assert [r["id"] for r in records] == list(range(head + 1, head + 1 + len(records)))
    for r in records:
        at = datetime.fromisoformat(r["at"])
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        assert t0 <= at <= t1, r
        assert r["actor"] and r["action"] and r["outcome"] in ("success", "denied"), r
        assert len(r["hash"]) == 64

    def find(action: str, outcome: str, **fields: str) -> dict[str, Any]:
        hits = [
            r
            for r in records
            if r["action"] == action and r["outcome"] == outcome and all(r[k] == v for k, v in fields.items())
        ]
        assert len(hits) == 1, (action, outcome, fields, records)
        return hits[0]

    admin_actor = f"admin:{admin.username}"
    find(
        "create-connector-group",
        "success",
        actor=admin_actor,
        object_type="connector-group",
        object_id=str(group["id"]),
    )
    refused = find("create-connector-group", "denied", actor=admin_actor)
    assert "conflict" in refused["details"]["error"] or "already exists" in refused["details"]["error"]
    created = find("create-user", "success", actor=admin_actor, object_type="user")
    assert created["details"]["username"] == user.username
    find("activate", "success", object_type="account", object_id=created["object_id"])
    find("totp-confirm", "success", object_type="account", object_id=created["object_id"])
    find(
        "login",
        "success",
        actor=f"user:{user.username}",
        object_type="account",
        object_id=created["object_id"],
    )
    failed = find("login", "denied", object_type="account", object_id=user.username)
    assert failed["source"] == "127.0.0.1" and failed["details"]["error"] == "wrong username or password"
    find("create-provisioning-key", "success", actor=admin_actor, object_id=str(key["id"]))
    find("enroll", "success", object_type="device", object_id=str(device["device_id"]))
    revoked = find(
        "revoke-device",
        "success",
        actor=admin_actor,
        object_type="device",
        object_id=str(device["device_id"]),
    )
    assert revoked["details"]["role"] == "connector"
    find("logout", "success", actor=f"user:{user.username}", object_type="token")

    # No secret is written into the log.
    text = json.dumps(records)
    for secret in (key["key"], device["credential"], user.token, user.password, admin.password):
        assert secret not in text


def test_chain_verifies_through_api_and_cli(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str], tmp_path: Path
) -> None:
    admin.client.post("/v1/groups", {"name": unique("grp")})
    result = verify(admin)
    assert result["ok"] is True and result["problems"] == []
    assert result["records"] == result["head_id"] >= 5

    r = cli_verify(controller, admin, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "intact" in r.stdout and str(result["head_id"]) in r.stdout
    r = cli_verify(controller, admin, tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True


def test_database_refuses_to_change_or_delete_audit_records(
    controller: LocalController, admin: AccountSession
) -> None:
    before = run_sql(controller, "SELECT id, actor, hash FROM audit_log WHERE id = 1")
    with pytest.raises(SqlError, match="append-only"):
        run_sql(controller, "UPDATE audit_log SET actor = 'someone else' WHERE id = 1")
    with pytest.raises(SqlError, match="append-only"):
        run_sql(controller, "DELETE FROM audit_log WHERE id = 1")
    with pytest.raises(SqlError, match="append-only"):
        run_sql(controller, "DELETE FROM audit_log")
    assert run_sql(controller, "SELECT id, actor, hash FROM audit_log WHERE id = 1") == before
    assert verify(admin)["ok"] is True


# ---------------------------------------------------------------------------
# tampering (on a deployment of its own)
# ---------------------------------------------------------------------------


def test_tampering_is_detected_and_located(fresh_controller: LocalController, tmp_path: Path) -> None:
    lc = fresh_controller
    admin = lc.bootstrap_admin()
    for i in range(10):
        admin.client.post("/v1/groups", {"name": f"team{i}"})
    original = {r["id"]: r for r in audit_since(admin, 0)}
    head = max(original)
    assert verify(admin)["ok"] is True and head >= 14
    assert cli_verify(lc, admin, tmp_path).returncode == 0

    # The attacker has database access; the triggers still stop a plain edit ...
    with pytest.raises(SqlError, match="append-only"):
        run_sql(lc, "UPDATE audit_log SET details = '{}' WHERE id = 3")
    # ... so they drop them first.
    drop_append_only_triggers(lc)
    expected: set[tuple[int, str]] = set()

    def check() -> None:
        found = problems(admin)
        assert {(rid, _kind(text)) for rid, text in found} == expected, found
        assert verify(admin)["ok"] is False

    # 1. Change what a record says.
    run_sql(lc, """UPDATE audit_log SET details = '{"name": "innocent"}' WHERE id = 6""")
    expected.add((6, "changed"))
    check()
    r = cli_verify(lc, admin, tmp_path)
    assert r.returncode == 1
    assert "BROKEN" in r.stdout and "record 6" in r.stdout and "changed" in r.stdout

    # 2. Change a record and recompute its own hash: the next record's link gives
    #    it away, and so do its MAC and the anchor checkpoint written after it.
    rec = original[8]
    forged = AuditEntry(
        id=rec["id"],
        at=datetime.fromisoformat(rec["at"]),
        actor=rec["actor"],
        source=rec["source"],
        action=rec["action"],
        object_type=rec["object_type"],
        object_id=rec["object_id"],
        outcome=rec["outcome"],
        details={"name": "nothing-to-see"},
        prev_hash=original[7]["hash"],
    )
    assert entry_hash(AuditEntry(**{**forged.__dict__, "details": rec["details"]})) == rec["hash"]
    run_sql(
        lc,
        f"""UPDATE audit_log SET details = '{{"name": "nothing-to-see"}}', hash = '{entry_hash(forged)}' WHERE id = 8""",
    )
    expected |= {(9, "link"), (8, "mac"), (8, "checkpoint")}
    check()

    # 3. Delete a record in the middle.
    run_sql(lc, "DELETE FROM audit_log WHERE id = 11")
    expected |= {(12, "missing"), (12, "link"), (11, "checkpoint gone")}
    check()

    # 4. Cut the newest records off the end.
    run_sql(lc, f"DELETE FROM audit_log WHERE id >= {head - 1}")
    expected.add((head - 1, "cut off"))
    check()
    assert any("were cut off the end" in text for _, text in problems(admin))

    r = cli_verify(lc, admin, tmp_path, "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["ok"] is False


def _kind(problem: str) -> str:
    """The kind of break a verify problem text describes."""
    for marker, kind in (
        ("changed after it was written", "changed"),
        ("link to the previous record is broken", "link"),
        ("are missing", "missing"),
        ("cut off the end", "cut off"),
        ("MAC is wrong", "mac"),
        ("has no MAC", "no mac"),
        ("differs from the anchor checkpoint", "checkpoint"),
        ("named by an anchor checkpoint is missing", "checkpoint gone"),
    ):
        if marker in problem:
            return kind
    return problem
